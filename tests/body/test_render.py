"""Headless rendering of synthetic bodies (CPU, EGL/llvmpipe or OSMesa) and the synthetic-set script."""
from __future__ import annotations

import importlib
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clip3dreid_plugin.body import procedural, render
from clip3dreid_plugin.body.render import HeadlessGLError, MeshRenderer
from clip3dreid_plugin.body.smpl_io import load_body_model
from clip3dreid_plugin.body.meshset_plan import read_synthetic_meta
from clip3dreid_plugin.body.meshset import SyntheticSetError, render_synthetic_set
from fixtures.interrupt import count_writes

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
H, W = 256, 128
BACKGROUND = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("render_body_models")
    procedural.write_procedural_smpl(str(root), num_vertices=600)
    return str(root)


@pytest.fixture(scope="module")
def synthetic_set(model_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    meta = render_synthetic_set(model_root, str(out), num_female=4, num_male=4, poses_per_subject=2, height=H,
                                width=W, seed=0, show_progress=False)
    return str(out), meta


def _foreground(img: np.ndarray) -> np.ndarray:
    bg = np.round(np.array(BACKGROUND) * 255).astype(int)
    return np.any(np.abs(img.astype(int) - bg) > 2, axis=-1)


def _check_body_image(img: np.ndarray) -> None:
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    mask = _foreground(img)
    assert mask.mean() > 0.05, "no body in the image"
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean() / H, xs.mean() / W
    assert 0.3 < cy < 0.7 and 0.25 < cx < 0.75, (cy, cx)  # roughly centred
    box_h, box_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert box_h > box_w, (box_h, box_w)  # a standing person is taller than wide
    assert box_h > 0.75 * H or box_w > 0.75 * W  # the body fills the frame (a wide stride seen sideways: by width)


def test_synthetic_set_shows_bodies(synthetic_set):
    out, meta = synthetic_set
    assert len(meta["files"]) == 16 and bool(meta["complete"])
    for name in meta["files"]:
        _check_body_image(np.asarray(Image.open(osp.join(out, name)).convert("RGB")))


def test_synthetic_metadata_is_consistent(synthetic_set):
    out, meta = synthetic_set
    back = read_synthetic_meta(out)
    assert set(back) == set(meta)
    for k, v in meta.items():
        np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(v), err_msg=k)
    n = len(back["files"])
    assert back["betas"].shape == (n, 10) and back["labels"].shape == (n, 16)
    assert back["scores"].shape == (n, 16) and back["thresholds"].shape == (16,)
    assert set(np.unique(back["labels"])) <= {0, 1}
    assert sorted(set(back["gender"].tolist())) == ["female", "male"]
    assert back["pose_id"].max() < len(back["pose_pool"]) and back["pose_pool"].shape[1] == 69
    assert tuple(back["image_size"]) == (H, W)
    # one subject, one shape and one label vector, whatever the pose
    for s in np.unique(back["subject"]):
        rows = back["subject"] == s
        assert len(np.unique(back["betas"][rows], axis=0)) == 1 and len(np.unique(back["labels"][rows], axis=0)) == 1
    # labels follow the stored scores and thresholds
    np.testing.assert_array_equal(back["labels"], np.where(back["scores"] >= back["thresholds"], 0, 1))
    assert not [f for f in os.listdir(osp.join(out, "images")) if f.endswith(".tmp")]


def test_resume_renders_only_missing_images(model_root, tmp_path):
    kw = dict(num_female=1, num_male=1, poses_per_subject=2, height=H, width=W, seed=1, show_progress=False)
    first = render_synthetic_set(model_root, str(tmp_path), **kw)
    paths = [osp.join(tmp_path, f) for f in first["files"]]
    os.remove(paths[1])
    mtimes = {p: os.stat(p).st_mtime_ns for p in paths if osp.exists(p)}
    # a complete set whose image was deleted since: only that image is rendered again
    second = render_synthetic_set(model_root, str(tmp_path), **kw)
    assert osp.exists(paths[1]) and bool(second["complete"])
    assert all(os.stat(p).st_mtime_ns == t for p, t in mtimes.items())  # untouched
    np.testing.assert_array_equal(second["files"], first["files"])
    np.testing.assert_array_equal(second["labels"], first["labels"])
    with pytest.raises(SyntheticSetError, match="seed: 1 -> 2"):
        render_synthetic_set(model_root, str(tmp_path), **dict(kw, seed=2))


KW = dict(num_female=1, num_male=1, poses_per_subject=2, height=128, width=64, seed=1, show_progress=False)


def _count_saves(monkeypatch, fail_after=None):
    """Counts the mesh set's image writes; optionally raises once ``fail_after`` images are written."""
    from clip3dreid_plugin.body import meshset

    return count_writes(monkeypatch, meshset, "_save_image", fail_after)


def _same_set(out_a, meta_a, out_b, meta_b):
    assert set(meta_a) == set(meta_b)
    for k in meta_a:
        if k != "body_model_dir":
            np.testing.assert_array_equal(np.asarray(meta_a[k]), np.asarray(meta_b[k]), err_msg=k)
    for name in meta_a["files"]:
        a, b = (np.asarray(Image.open(osp.join(folder, name))) for folder in (out_a, out_b))
        assert np.array_equal(a, b), name


def test_interrupted_rendering_resumes_and_equals_an_uninterrupted_one(model_root, tmp_path, monkeypatch):
    import torch

    ref = render_synthetic_set(model_root, str(tmp_path / "ref"), **KW)
    out = str(tmp_path / "set")
    _count_saves(monkeypatch, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        render_synthetic_set(model_root, out, checkpoint_every=2, **KW)
    assert not osp.exists(osp.join(out, "meta.npz"))  # no metadata until the set is complete
    assert torch.load(osp.join(out, "meta.npz.partial"), weights_only=True)["done"] == 3
    monkeypatch.undo()
    calls = _count_saves(monkeypatch)
    resumed = render_synthetic_set(model_root, out, **KW)
    assert calls["n"] == 1 and bool(resumed["complete"])
    assert not osp.exists(osp.join(out, "meta.npz.partial"))
    _same_set(str(tmp_path / "ref"), ref, out, read_synthetic_meta(out))


def test_stale_set_is_rebuilt_saying_why(model_root, tmp_path, caplog):
    out = str(tmp_path / "set")
    render_synthetic_set(model_root, out, **dict(KW, seed=2))
    with pytest.raises(SyntheticSetError) as info:
        render_synthetic_set(model_root, out, **KW)
    assert osp.join(out, "meta.npz") in str(info.value) and "seed: 2 -> 1" in str(info.value)
    with caplog.at_level("WARNING", logger="clip3dreid_plugin.utils.artefact"):
        rebuilt = render_synthetic_set(model_root, out, on_stale="rebuild", **KW)
    lines = [r.getMessage() for r in caplog.records if "meta.npz" in r.getMessage()]
    assert len(lines) == 1 and "seed: 2 -> 1" in lines[0] and "rebuilding" in lines[0]
    ref = render_synthetic_set(model_root, str(tmp_path / "ref"), **KW)
    _same_set(str(tmp_path / "ref"), ref, out, rebuilt)
    with pytest.raises(SyntheticSetError, match="on_stale"):
        render_synthetic_set(model_root, out, on_stale="overwrite", **KW)


def test_old_fingerprint_set_keeps_loading_and_is_refused_or_rebuilt_saying_why(model_root, tmp_path, caplog):
    from clip3dreid_plugin.body.meshset_plan import write_synthetic_meta
    from clip3dreid_plugin.data.meshset import SyntheticMeshDataset

    ref = render_synthetic_set(model_root, str(tmp_path / "ref"), **KW)
    out = str(tmp_path / "old")
    import shutil

    shutil.copytree(str(tmp_path / "ref"), out)
    # meta.npz as the code before utils/artefact.py wrote it: a bare SHA-1 hex digest as its fingerprint
    write_synthetic_meta(osp.join(out, "meta.npz"), dict(ref, fingerprint=np.str_("3f" * 20)))
    assert len(SyntheticMeshDataset(out)) == 4  # training reads it as before
    with pytest.raises(SyntheticSetError, match="older plugin version") as info:
        render_synthetic_set(model_root, out, **KW)
    assert osp.join(out, "meta.npz") in str(info.value)
    with caplog.at_level("WARNING", logger="clip3dreid_plugin.utils.artefact"), \
            pytest.warns(DeprecationWarning, match="overwrite"):
        rebuilt = render_synthetic_set(model_root, out, overwrite=True, **KW)  # the old spelling still works
    assert any("older plugin version" in r.getMessage() and "meta.npz" in r.getMessage() for r in caplog.records)
    _same_set(str(tmp_path / "ref"), ref, out, rebuilt)


def test_render_script(model_root, tmp_path):
    mod = importlib.import_module("clip3dreid_plugin.tools.render_meshset")
    out = tmp_path / "set"
    rc = mod.main(["--body-model", model_root, "--num-female", "1", "--num-male", "1", "--poses-per-subject", "1",
                   "--out", str(out), "--height", "128", "--width", "64", "--ext", "jpg", "--no-progress"])
    assert rc == 0
    meta = read_synthetic_meta(str(out))
    assert len(meta["files"]) == 2 and all(f.endswith(".jpg") for f in meta["files"])
    assert Image.open(osp.join(out, meta["files"][0])).size == (64, 128)
    bad = tmp_path / "poses.npz"
    np.savez(bad, body_pose=np.zeros((2, 70)))
    assert mod.main(["--body-model", model_root, "--num-female", "1", "--num-male", "0", "--poses-per-subject", "1",
                     "--out", str(tmp_path / "other"), "--pose-file", str(bad), "--no-progress"]) == 2
    assert mod.main(["--body-model", str(tmp_path / "no_models"), "--num-female", "1", "--num-male", "0",
                     "--out", str(tmp_path / "x"), "--no-progress"]) == 2


def test_the_old_command_name_runs_the_same_main_and_says_it_is_deprecated(model_root, tmp_path, monkeypatch,
                                                                         caplog):
    import ast
    import logging
    import sys

    tree = ast.parse(open(osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), "setup.py")).read())
    commands = next(ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    and any(getattr(t, "id", "") == "COMMANDS" for t in n.targets))
    assert commands["clip3dreid-render-synthetic"] == commands["clip3dreid-render-meshset"] == "render_meshset"
    mod = importlib.import_module("clip3dreid_plugin.tools.render_meshset")
    argv = ["--body-model", model_root, "--num-female", "1", "--num-male", "0", "--poses-per-subject", "1",
            "--height", "64", "--width", "32", "--no-progress"]
    with caplog.at_level(logging.WARNING, logger="render_meshset"):
        monkeypatch.setattr(sys, "argv", ["/venv/bin/clip3dreid-render-synthetic"])
        assert mod.main(argv + ["--out", str(tmp_path / "old")]) == 0
        old = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
        caplog.clear()
        monkeypatch.setattr(sys, "argv", ["/venv/bin/clip3dreid-render-meshset"])
        assert mod.main(argv + ["--out", str(tmp_path / "new")]) == 0
        assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert old == ["clip3dreid-render-synthetic is deprecated and will be removed in the next release: use "
                   "clip3dreid-render-meshset"]
    a, b = read_synthetic_meta(str(tmp_path / "old")), read_synthetic_meta(str(tmp_path / "new"))
    assert list(a["files"]) == list(b["files"]) and np.array_equal(a["betas"], b["betas"])  # the same renderer


def test_renderer_frames_every_view(model_root):
    model = load_body_model(model_root, "male")
    import torch

    from clip3dreid_plugin.body.poses import builtin_pose_pool

    verts = model.posed_vertices(torch.zeros(1, 10), torch.as_tensor(builtin_pose_pool()[[0, 10]])).numpy()
    with MeshRenderer(H, W, background=BACKGROUND) as r:
        for v in verts:
            for yaw in (0.0, 90.0, 180.0, 270.0):
                _check_body_image(r.render(v, model.faces, yaw))
        small = _foreground(r.render(verts[0], model.faces, 0.0, distance_scale=1.5)).sum()
        assert small < _foreground(r.render(verts[0], model.faces, 0.0)).sum()  # further away = smaller


def test_no_headless_gl_gives_install_instructions(monkeypatch):
    monkeypatch.delenv(render.PLATFORM_ENV, raising=False)
    monkeypatch.setattr(render, "_egl_usable", lambda: False)
    monkeypatch.setattr(render, "_osmesa_usable", lambda: False)
    with pytest.raises(HeadlessGLError) as err:
        render.select_gl_platform()
    msg = str(err.value)
    assert "libegl1 libegl-mesa0 libgl1-mesa-dri" in msg and "libosmesa6" in msg and "PyOpenGL>=3.1.5" in msg
    assert render.PLATFORM_ENV not in os.environ


def test_broken_gl_platform_fails_with_a_clear_message():
    """A platform pyrender cannot use (set before anything imports OpenGL) raises HeadlessGLError."""
    code = ("import sys\n"
            "from clip3dreid_plugin.body.render import MeshRenderer, HeadlessGLError\n"
            "try:\n"
            "    MeshRenderer(32, 16)\n"
            "except HeadlessGLError as e:\n"
            "    print('HEADLESS_GL_ERROR', e)\n"
            "    sys.exit(3)\n")
    env = dict(os.environ, PYOPENGL_PLATFORM="no_such_platform",
               PYTHONPATH=os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH", "")] if p]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "HEADLESS_GL_ERROR" in proc.stdout and "no_such_platform" in proc.stdout
    assert "libegl1" in proc.stdout


def test_render_then_import_open_clip_in_one_process(model_root):
    """Mesa's llvmpipe and triton's bundled LLVM in one process: rendering first must not crash the import.

    Regression: the quickstart renders synthcc, then imports open_clip (which pulls in triton); that
    died with SIGSEGV inside triton's LLVM initialisers before the renderer preloaded triton.
    """
    code = ("import numpy as np, torch\n"
            "from clip3dreid_plugin.body.render import MeshRenderer\n"
            "from clip3dreid_plugin.body.smpl_io import load_body_model\n"
            f"model = load_body_model({model_root!r}, 'male')\n"
            "v = model.posed_vertices(torch.zeros(1, 10), torch.zeros(1, 69))[0].numpy()\n"
            "with MeshRenderer(64, 32) as r:\n"
            "    img = r.render(v, model.faces, 0.0)\n"
            "import open_clip\n"
            "print('FOREGROUND', int((np.abs(img.astype(int) - img[0, 0].astype(int)).sum(-1) > 6).sum()))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH", "")] if p]))
    env.pop(render.PLATFORM_ENV, None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    pixels = int(proc.stdout.split("FOREGROUND")[1])
    assert pixels > 0.05 * 64 * 32, proc.stdout  # a body was drawn, not an empty frame

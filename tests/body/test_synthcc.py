"""synthcc: the generated cloth-changing benchmark (generator, loader, script, evaluator protocols)."""
from __future__ import annotations

import importlib
import os
import os.path as osp
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from clip3dreid_plugin.body import procedural
from clip3dreid_plugin.body.synthcc import FILE_PATTERN, SynthCCError, build_synthcc, camera_background, \
    outfit_pool_size, read_synthcc_meta, synthcc_ground_truth, synthcc_labels_by_path
from clip3dreid_plugin.evaluation import evaluate_all
from fixtures.interrupt import count_writes
from datasets_ext import IMAGE_DATASETS
from datasets_ext.base import DatasetLayoutError
from datasets_ext.synthcc import SynthCC

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
ARGS = dict(num_ids=6, outfits_per_id=2, num_cameras=2, poses_per_view=1, height=64, width=32, seed=0)
N_IMAGES = 6 * 2 * 2 * 1


@pytest.fixture(scope="module")
def body_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthcc_body")
    procedural.write_procedural_smpl(str(root), num_vertices=400)
    return str(root)


@pytest.fixture(scope="module")
def built(body_dir, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthcc_data") / "my_c1_root_2")  # digits and "_c": parse basenames only
    meta = build_synthcc(root, body_dir, progress=False, **ARGS)
    return root, meta


def _split_files(root: str, split: str):
    return sorted(os.listdir(osp.join(root, "synthcc", split)))


def test_counts_split_and_outfit_sharing(built):
    root, meta = built
    assert meta["rendered"] == N_IMAGES and meta["complete"]
    train, query, gallery = (_split_files(root, s) for s in ("train", "query", "gallery"))
    # 3 train ids x 2 outfits x 2 cams; test ids: camera 1 of each outfit -> query, camera 2 -> gallery
    assert (len(train), len(query), len(gallery)) == (12, 6, 6)
    pids = {s: {int(f[:4]) for f in files} for s, files in (("train", train), ("query", query), ("gallery", gallery))}
    assert pids["train"].isdisjoint(pids["query"] | pids["gallery"])
    assert pids["query"] == pids["gallery"] and len(pids["train"]) == len(pids["query"]) == 3
    assert sorted(meta["train_ids"]) == sorted(pids["train"]) and sorted(meta["test_ids"]) == sorted(pids["query"])
    # the outfit pool is global and smaller than ids x outfits: outfits are worn by several identities
    assert len(meta["outfit_pool"]) == outfit_pool_size(6, 2) < 6 * 2
    wearers = Counter(o for ident in meta["identities"] for o in set(ident["outfits"]))
    assert max(wearers.values()) >= 2
    for ident in meta["identities"]:
        assert len(set(ident["outfits"])) == 2 and len(ident["betas"]) == 10 and len(ident["labels"]) == 16
        assert ident["gender"] in ("female", "male") and set(ident["labels"]) <= {0, 1}
    assert len(meta["images"]) == N_IMAGES and len(meta["cameras"]) == 2


def test_loader_matches_file_names(built):
    root, _ = built
    ds = SynthCC(root=root, verbose=False)
    assert IMAGE_DATASETS["synthcc"] is SynthCC and ds.eval_protocols == ("general", "sc", "cc")
    for split in ("query", "gallery"):
        keys = {}
        for path, pid, camid, dsetid, clothes in getattr(ds, split):
            m = FILE_PATTERN.fullmatch(osp.splitext(osp.basename(path))[0])
            assert (pid, camid, dsetid) == (int(m.group(1)), int(m.group(3)) - 1, 0)
            keys[(pid, int(m.group(2)))] = keys.get((pid, int(m.group(2))), clothes)
            assert keys[(pid, int(m.group(2)))] == clothes
    test_items = ds.query + ds.gallery
    key_of = {it[4]: None for it in test_items}
    for path, pid, _, _, clothes in test_items:
        m = FILE_PATTERN.fullmatch(osp.splitext(osp.basename(path))[0])
        key = (pid, int(m.group(2)))
        assert key_of[clothes] in (None, key)  # one clothes label per (pid, outfit), jointly over query + gallery
        key_of[clothes] = key
    # train: relabelled to 0..n-1, one-to-one with the raw (pid), (cam), (pid, outfit) of the file names
    raw = [FILE_PATTERN.fullmatch(osp.splitext(osp.basename(it[0]))[0]) for it in ds.train]
    for field, rawkey in ((1, lambda m: int(m.group(1))), (2, lambda m: int(m.group(3))),
                          (4, lambda m: (int(m.group(1)), int(m.group(2))))):
        pairs = {(rawkey(m), it[field]) for m, it in zip(raw, ds.train)}
        assert len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})
        assert {p[1] for p in pairs} == set(range(len(pairs)))
    assert ds.num_train_pids == 3 and ds.num_train_cams == 2 and ds.num_train_clothes == 6


def test_every_query_has_sc_and_cc_positives_and_evaluator_runs(built):
    root, _ = built
    ds = SynthCC(root=root, verbose=False)
    for _, pid, cam, _, clothes in ds.query:
        same = [g for g in ds.gallery if g[1] == pid and g[2] != cam]
        assert any(g[4] == clothes for g in same), "no same-clothes positive"
        assert any(g[4] != clothes for g in same), "no clothes-changing positive"
    q, g = ds.query, ds.gallery
    arr = lambda data, k: np.array([it[k] for it in data])  # noqa: E731
    dist = np.random.default_rng(0).random((len(q), len(g)))
    res = evaluate_all(dist, arr(q, 1), arr(g, 1), arr(q, 2), arr(g, 2), arr(q, 4), arr(g, 4),
                       modes=("general", "sc", "cc"), max_rank=5)
    assert set(res) == {"general", "sc", "cc"}
    for cmc, m_ap in res.values():
        assert 0.0 < m_ap <= 1.0 and cmc.shape == (5,)


def test_images_show_a_person(built):
    root, meta = built
    cams = meta["cameras"]
    for im in meta["images"][::3]:
        img = np.asarray(Image.open(osp.join(root, "synthcc", im["file"])).convert("RGB")).astype(float)
        assert img.shape == (64, 32, 3)
        cam = cams[im["camid"]]
        bg = np.clip(camera_background(cam, 64, 32) * np.asarray(cam["white_balance"]), 0, 1) * 255.0
        mask = np.abs(img - bg).max(-1) > 6
        assert mask.mean() > 0.05, im["file"]
        ys, xs = np.nonzero(mask)
        assert ys.max() - ys.min() > xs.max() - xs.min(), im["file"]  # a standing person is taller than wide


def test_rebuild_is_a_noop_resume_fills_gaps_and_seed_changes_the_set(built, body_dir, tmp_path):
    root, meta = built
    files = [osp.join(root, "synthcc", im["file"]) for im in meta["images"]]
    mtimes = [os.stat(f).st_mtime_ns for f in files]
    again = build_synthcc(root, body_dir, progress=False, **ARGS)
    assert again["rendered"] == 0 and again["fingerprint"] == meta["fingerprint"]
    assert [os.stat(f).st_mtime_ns for f in files] == mtimes
    # an interrupted build resumes: only the missing image is rendered, identical to the first one
    before = np.asarray(Image.open(files[5]))
    os.remove(files[5])
    resumed = build_synthcc(root, body_dir, progress=False, **ARGS)
    assert resumed["rendered"] == 1 and np.array_equal(np.asarray(Image.open(files[5])), before)
    other = build_synthcc(str(tmp_path / "other"), body_dir, progress=False, **dict(ARGS, seed=1))
    assert other["fingerprint"] != meta["fingerprint"]
    assert [i["betas"] for i in other["identities"]] != [i["betas"] for i in meta["identities"]]
    a = np.asarray(Image.open(files[0]))
    b = np.asarray(Image.open(osp.join(str(tmp_path / "other"), "synthcc", other["images"][0]["file"])))
    assert not np.array_equal(a, b)


def test_beta_sigma_scales_the_shapes_of_the_same_draw(built, body_dir, tmp_path):
    """beta_sigma widens the spread of body shapes and changes nothing else that is drawn: the same seed gives the
    same standard-normal draw, scaled (so the identities, outfits, cameras and split are those of the default)."""
    from clip3dreid_plugin.body.synthcc import BETA_SIGMA
    from clip3dreid_plugin.config import get_cfg

    assert get_cfg().synthcc.beta_sigma == BETA_SIGMA  # the config default is the generator's
    root, meta = built
    wide = build_synthcc(str(tmp_path / "wide"), body_dir, progress=False, beta_sigma=2.0, **ARGS)
    base = np.array([i["betas"] for i in meta["identities"]])
    assert np.allclose(np.array([i["betas"] for i in wide["identities"]]), base * 2.0 / BETA_SIGMA, atol=1e-4)
    assert wide["beta_sigma"] == 2.0 and meta["beta_sigma"] == BETA_SIGMA
    assert wide["fingerprint"] != meta["fingerprint"]
    assert [i["outfits"] for i in wide["identities"]] == [i["outfits"] for i in meta["identities"]]
    assert wide["train_ids"] == meta["train_ids"] and wide["cameras"] == meta["cameras"]
    with pytest.raises(SynthCCError, match="beta_sigma"):
        build_synthcc(str(tmp_path / "bad"), body_dir, progress=False, beta_sigma=0.0, **ARGS)


def test_ground_truth_labels_cover_the_train_split(built):
    root, meta = built
    paths, labels = synthcc_ground_truth(root)
    ds = SynthCC(root=root, verbose=False)
    assert sorted(it[0] for it in ds.train) == paths
    assert labels.dtype == torch.long and tuple(labels.shape) == (12, 16)
    by_pid = {i["pid"]: i["labels"] for i in meta["identities"]}
    for p, row in zip(paths, labels.tolist()):
        assert row == by_pid[int(osp.basename(p)[:4])]
    assert len(synthcc_labels_by_path(root, ("query", "gallery"))) == 12
    with pytest.raises(SynthCCError):
        synthcc_labels_by_path(root, ("test",))


def test_missing_folder_and_bad_arguments(tmp_path, body_dir):
    with pytest.raises(DatasetLayoutError, match="synthcc"):
        SynthCC(root=str(tmp_path), verbose=False)
    with pytest.raises(SynthCCError, match="meta.json"):
        read_synthcc_meta(str(tmp_path))
    with pytest.raises(SynthCCError):
        build_synthcc(str(tmp_path), body_dir, num_ids=4, outfits_per_id=1)


def test_script_builds_the_same_set(built, body_dir, tmp_path):
    mod = importlib.import_module("clip3dreid_plugin.tools.build_synthcc")
    out = str(tmp_path / "data")
    argv = ["--root", out, "--body-model", body_dir, "--num-ids", "6", "--outfits-per-id", "2", "--num-cameras", "2",
            "--poses-per-view", "1", "--height", "64", "--width", "32", "--seed", "0", "--no-progress"]
    assert mod.main(argv) == 0
    # same arguments and body model in another root: the same fingerprint and the same pixels
    assert read_synthcc_meta(out)["fingerprint"] == built[1]["fingerprint"]
    f = built[1]["images"][0]["file"]
    assert np.array_equal(np.asarray(Image.open(osp.join(out, "synthcc", f))),
                          np.asarray(Image.open(osp.join(built[0], "synthcc", f))))
    assert mod.main(["--root", out, "--body-model", str(tmp_path / "none"), "--no-progress"]) == 2


def _count_saves(monkeypatch, fail_after=None):
    """Counts synthcc's image writes; optionally raises once ``fail_after`` images are written."""
    from clip3dreid_plugin.body import synthcc

    return count_writes(monkeypatch, synthcc, "_save_png", fail_after)


def _same_set(root_a, meta_a, root_b, meta_b):
    drop = ("dataset_dir", "rendered", "body_model")
    assert {k: v for k, v in meta_a.items() if k not in drop} == {k: v for k, v in meta_b.items() if k not in drop}
    for im in meta_a["images"]:
        a = np.asarray(Image.open(osp.join(root_a, "synthcc", im["file"])))
        b = np.asarray(Image.open(osp.join(root_b, "synthcc", im["file"])))
        assert np.array_equal(a, b), im["file"]


def test_interrupted_build_resumes_and_equals_an_uninterrupted_one(built, body_dir, tmp_path, monkeypatch):
    import torch as _torch

    root = str(tmp_path / "data")
    _count_saves(monkeypatch, fail_after=9)
    with pytest.raises(KeyboardInterrupt):
        build_synthcc(root, body_dir, progress=False, **ARGS)
    meta_path = osp.join(root, "synthcc", "meta.json")
    assert not osp.exists(meta_path)  # no metadata: the loader does not mistake it for a set
    assert _torch.load(meta_path + ".partial", weights_only=True)["done"] == 9
    monkeypatch.undo()
    calls = _count_saves(monkeypatch)
    resumed = build_synthcc(root, body_dir, progress=False, **ARGS)
    assert calls["n"] == N_IMAGES - 9 and resumed["rendered"] == N_IMAGES - 9
    assert not osp.exists(meta_path + ".partial")
    _same_set(built[0], built[1], root, read_synthcc_meta(root))


def test_other_arguments_are_rebuilt_saying_why_or_refused(built, body_dir, tmp_path, caplog):
    from clip3dreid_plugin.body.synthcc import SynthCCStaleError

    root = str(tmp_path / "data")
    build_synthcc(root, body_dir, progress=False, **dict(ARGS, seed=3))
    meta_path = osp.join(root, "synthcc", "meta.json")
    with pytest.raises(SynthCCStaleError) as info:
        build_synthcc(root, body_dir, progress=False, on_stale="error", **ARGS)
    assert meta_path in str(info.value) and "seed: 3 -> 0" in str(info.value)
    assert read_synthcc_meta(root)["args"]["seed"] == 3  # refused: untouched
    with caplog.at_level("WARNING", logger="clip3dreid_plugin.utils.artefact"):
        rebuilt = build_synthcc(root, body_dir, progress=False, **ARGS)
    lines = [r.getMessage() for r in caplog.records if meta_path in r.getMessage()]
    assert len(lines) == 1 and "seed: 3 -> 0" in lines[0] and "rebuilding" in lines[0]
    assert rebuilt["rendered"] == N_IMAGES
    _same_set(built[0], built[1], root, read_synthcc_meta(root))
    with pytest.raises(SynthCCError, match="on_stale"):
        build_synthcc(root, body_dir, progress=False, on_stale="overwrite", **ARGS)


def test_a_set_of_the_old_fingerprint_keeps_loading_and_is_rebuilt_saying_why(built, body_dir, tmp_path, caplog):
    import hashlib
    import json
    import shutil

    from clip3dreid_plugin.body.synthcc import SynthCCStaleError

    root = str(tmp_path / "data")
    shutil.copytree(osp.join(built[0], "synthcc"), osp.join(root, "synthcc"))
    meta_path = osp.join(root, "synthcc", "meta.json")
    # meta.json as the code before utils/artefact.py wrote it: a bare SHA-1 of the metadata as its fingerprint
    with open(meta_path) as fh:
        old = json.load(fh)
    old["fingerprint"] = hashlib.sha1(json.dumps(dict(old, fingerprint=None), sort_keys=True).encode()).hexdigest()
    with open(meta_path, "w") as fh:
        json.dump(old, fh)
    ds = SynthCC(root=root, verbose=False)  # the loader reads it as before
    assert len(ds.train) == 12
    with pytest.raises(SynthCCStaleError, match="older plugin version") as info:
        build_synthcc(root, body_dir, progress=False, on_stale="error", **ARGS)
    assert meta_path in str(info.value)
    with caplog.at_level("WARNING", logger="clip3dreid_plugin.utils.artefact"):
        rebuilt = build_synthcc(root, body_dir, progress=False, **ARGS)
    assert any(meta_path in r.getMessage() and "older plugin version" in r.getMessage() for r in caplog.records)
    assert rebuilt["rendered"] == N_IMAGES and rebuilt["fingerprint"] == built[1]["fingerprint"]
    _same_set(built[0], built[1], root, read_synthcc_meta(root))

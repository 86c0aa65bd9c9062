"""Files from elsewhere are read as data: every loader of a user's file meets a file built to run code or to write
outside its folder, and must refuse it in one line naming the file, with nothing run and nothing written.

The hostile pickles below would create a marker file through ``os.system`` when unpickled by a plain unpickler; each
test first shows that (so the payload is live), then loads the same bytes through the plugin's public entry point.
"""
from __future__ import annotations

import io
import json
import os
import os.path as osp
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from clip3dreid_plugin import compat
from clip3dreid_plugin.body import procedural
from clip3dreid_plugin.body.smpl_io import BodyModelError, load_body_model, read_smpl_pickle
from clip3dreid_plugin.body.synthcc import SynthCCError, read_synthcc_meta
from clip3dreid_plugin.body.meshset_plan import SyntheticSetError, read_synthetic_meta, write_synthetic_meta
from clip3dreid_plugin.config import ConfigError
from clip3dreid_plugin.config.loader import load_config
from clip3dreid_plugin.teacher.cache import TeacherCache, TeacherCacheError
from clip3dreid_plugin.teacher.weights import TeacherLoadError
from clip3dreid_plugin.tools import download_datasets, eval_shape, train_net
from clip3dreid_plugin.utils.paths import stays_inside
from clip3dreid_plugin.utils.safe_pickle import read_torchscript_state_dict
from datasets_ext.base import DatasetLayoutError
from datasets_ext.manifest import read_manifest
from tests.fixtures.tiny_clip import register_tiny_clip, write_tiny_clip_weights

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, "configs", "toy", "resnet50_baseline_64x32.yaml")


class RunsCode:
    """Unpickles into ``os.system('touch MARKER')``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path):
    path = str(tmp_path / "MARKER_code_ran")
    yield path
    assert not osp.exists(path), "the hostile file ran code"


def _payload_is_live(blob: bytes, marker: str) -> None:
    """A plain unpickler runs the payload: the test is not vacuous. The marker is then removed again."""
    pickle.loads(blob)
    assert osp.exists(marker)
    os.remove(marker)


def _one_line(err: BaseException, *needles: str) -> str:
    msg = str(err)
    assert "\n" not in msg.strip(), msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def _hostile_smpl(tmp_path, marker: str, protocol: int = 2) -> str:
    data = procedural.build_procedural_model("neutral", num_vertices=600)
    data["v_template"] = RunsCode(marker)
    blob = pickle.dumps(data, protocol=protocol)
    _payload_is_live(blob, marker)
    path = tmp_path / "smpl" / "SMPL_NEUTRAL.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return str(path)


# ------------------------------------------------------------------------------------------ body models
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_hostile_smpl_pickle_is_refused_before_anything_runs(tmp_path, marker, protocol):
    path = _hostile_smpl(tmp_path, marker, protocol)
    with pytest.raises(BodyModelError) as err:
        load_body_model(str(tmp_path), "neutral")
    _one_line(err.value, path, "posix.system")


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load"),
                                          ("scipy.sparse", "load_npz"), ("torch", "load")])
def test_smpl_loader_refuses_every_name_off_the_allow_list(tmp_path, module, name):
    # GLOBAL 'module name', then STOP: refused at the name, before any call
    path = tmp_path / "x.pkl"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b".")
    with pytest.raises(BodyModelError) as err:
        read_smpl_pickle(str(path))
    _one_line(err.value, str(path), f"{module}.{name}")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_real_format_bodies_still_load_under_every_protocol(tmp_path, protocol):
    data = procedural.build_procedural_model("neutral", num_vertices=600)
    path = tmp_path / f"p{protocol}.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = read_smpl_pickle(str(path))
    assert sorted(loaded) == sorted(data)
    for key in ("v_template", "shapedirs", "posedirs", "weights", "kintree_table", "f"):
        np.testing.assert_array_equal(loaded[key], data[key])
    np.testing.assert_array_equal(loaded["J_regressor"].toarray(), data["J_regressor"].toarray())
    assert loaded["vertex_ids"] == data["vertex_ids"]


def test_numpy1_module_names_and_python2_sparse_names_load(tmp_path):
    # SMPL 1.x files were written by numpy 1 and SciPy 0.x: numpy.core.multiarray and scipy.sparse.csc
    data = procedural.build_procedural_model("neutral", num_vertices=600)
    blob = pickle.dumps(data, protocol=2)
    core = "numpy._core" if b"numpy._core" in blob else "numpy.core"
    old = blob.replace(f"{core}.multiarray".encode(), b"numpy.core.multiarray")
    old = old.replace(b"scipy.sparse._csc", b"scipy.sparse.csc")
    assert b"numpy.core.multiarray" in old and b"scipy.sparse.csc\n" in old
    path = tmp_path / "old.pkl"
    path.write_bytes(old)
    loaded = read_smpl_pickle(str(path))
    np.testing.assert_array_equal(loaded["shapedirs"], data["shapedirs"])
    np.testing.assert_array_equal(loaded["J_regressor"].toarray(), data["J_regressor"].toarray())


def test_hostile_body_model_through_the_cli_is_one_line_exit_2(tmp_path, marker, capsys):
    _hostile_smpl(tmp_path, marker)
    betas = str(tmp_path / "b.npz")
    np.savez(betas, betas=np.zeros((2, 10)))
    rc = eval_shape.main(["--body-model", str(tmp_path), "--pred-npz", betas, "--gt-npz", betas])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    _one_line(err[0], "posix.system", "SMPL_NEUTRAL.pkl")


# ------------------------------------------------------------------------------------------ checkpoints
def _hostile_checkpoint(tmp_path, marker: str) -> str:
    path = str(tmp_path / "hostile.pth.tar")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": RunsCode(marker)}, path)
    torch.load(path, weights_only=False)  # the payload is live: a plain load runs it
    assert osp.exists(marker)
    os.remove(marker)
    return path


def test_hostile_checkpoint_is_refused_by_load_checkpoint(tmp_path, marker):
    path = _hostile_checkpoint(tmp_path, marker)
    with pytest.raises(compat.CheckpointError) as err:
        compat.load_checkpoint(path)
    _one_line(err.value, path, "posix.system")


@pytest.mark.parametrize("how", ["load_weights", "resume"])
def test_hostile_checkpoint_through_train_cli(toy_market_root, tmp_path, marker, capsys, how):
    path = _hostile_checkpoint(tmp_path, marker)
    flags = ["--resume", path] if how == "resume" else []
    argv = ["--config-file", TOY, "--device", "cpu", "--output-dir", str(tmp_path / "o"), *flags,
            "model.name", "resnet18", "data.root", toy_market_root[0]]
    if how == "load_weights":
        argv += ["model.load_weights", path]
    rc = train_net.main(argv)
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(err) == 1 and path in err[0] and "posix.system" in err[0], err


# ------------------------------------------------------------------------------------------ teacher files
def test_hostile_teacher_cache_is_refused(tmp_path, marker):
    path = str(tmp_path / "cache.pt")
    torch.save({"format": 1, "paths": RunsCode(marker)}, path)
    with pytest.raises(TeacherCacheError) as err:
        TeacherCache.load(path)
    _one_line(err.value, path, "posix.system")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny_clip_hostile"))
    name = register_tiny_clip(folder)
    return name, write_tiny_clip_weights(osp.join(folder, "w.pt"), seed=0, name=name)


def _torchscript(tiny_clip, path: str) -> str:
    import open_clip

    model = open_clip.create_model(tiny_clip[0], pretrained=tiny_clip[1]).eval()
    traced = torch.jit.trace(model, (torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)), strict=False)
    torch.jit.save(traced, path)
    return path


def test_torchscript_weights_are_read_as_data_and_equal_jit_load(tiny_clip, tmp_path):
    path = _torchscript(tiny_clip, str(tmp_path / "openai_style.pt"))
    ours = read_torchscript_state_dict(path)
    ref = torch.jit.load(path, map_location="cpu").state_dict()
    assert sorted(ours) == sorted(ref)
    for k, v in ref.items():
        assert ours[k].dtype == v.dtype and torch.equal(ours[k], v), k


def test_hostile_torchscript_archive_is_refused(tiny_clip, tmp_path, marker):
    from clip3dreid_plugin.teacher.clip_teacher import CLIPTeacher

    real = _torchscript(tiny_clip, str(tmp_path / "real.pt"))
    path = str(tmp_path / "hostile_openai.pt")
    blob = pickle.dumps(RunsCode(marker), protocol=2)
    _payload_is_live(blob, marker)
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():  # the same archive (code/, constants.pkl) with its data.pkl replaced
            dst.writestr(info, blob if info.filename.endswith("/data.pkl") else src.read(info))
    with pytest.raises(TeacherLoadError) as err:
        CLIPTeacher(tiny_clip[0], path)
    _one_line(err.value, path, "posix.system")


def test_hostile_state_dict_weights_are_refused(tiny_clip, tmp_path, marker):
    from clip3dreid_plugin.teacher.clip_teacher import CLIPTeacher

    path = str(tmp_path / "hostile.pt")
    torch.save({"visual.proj": RunsCode(marker)}, path)
    with pytest.raises(TeacherLoadError) as err:
        CLIPTeacher(tiny_clip[0], path)
    _one_line(err.value, path)


# ------------------------------------------------------------------------------------------ metadata
def test_hostile_mesh_set_metadata_is_refused(tmp_path, marker):
    folder = tmp_path / "set"
    folder.mkdir()
    obj = np.empty(1, dtype=object)
    obj[0] = RunsCode(marker)
    np.savez(folder / "meta.npz", files=np.array(["images/0.png"]), hostile=obj)  # an object array is a pickle
    with pytest.raises(SyntheticSetError) as err:
        read_synthetic_meta(str(folder))
    _one_line(err.value, str(folder / "meta.npz"))


def test_mesh_set_metadata_listing_files_outside_is_refused(tmp_path):
    folder = str(tmp_path / "set")
    write_synthetic_meta(osp.join(folder, "meta.npz"), {"files": np.array(["images/0.png", "../../etc/passwd"])})
    with pytest.raises(SyntheticSetError) as err:
        read_synthetic_meta(folder)
    _one_line(err.value, "../../etc/passwd", osp.join(folder, "meta.npz"))


@pytest.mark.parametrize("entry", ["../outside.png", "/etc/passwd", "a/../../b.png"])
def test_synthcc_metadata_listing_files_outside_is_refused(tmp_path, entry):
    folder = tmp_path / "synthcc"
    folder.mkdir()
    meta = {"images": [{"file": "train/0001_c1.png", "pid": 1, "split": "train"},
                       {"file": entry, "pid": 1, "split": "train"}], "identities": []}
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SynthCCError) as err:
        read_synthcc_meta(str(tmp_path))
    _one_line(err.value, entry, str(folder / "meta.json"))


# ------------------------------------------------------------------------------------------ manifests, configs
def test_manifest_paths_are_never_run_and_nothing_is_written(tmp_path, marker):
    csv = tmp_path / "manifest.csv"
    csv.write_text("path,pid,camid,clothes_id,split\n"
                   f"$(touch {marker}).jpg,1,0,1,train\n"
                   f"`touch {marker}`; touch {marker},1,1,1,train\n")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(DatasetLayoutError) as err:
        read_manifest(str(csv))
    _one_line(err.value, str(csv), "touch")
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!!python/object/new:os.system",
                                 "!!python/name:os.system"])
def test_hostile_yaml_config_is_refused(tmp_path, marker, tag):
    path = tmp_path / "evil.yaml"
    path.write_text(f"model:\n  name: {tag} ['touch {marker}']\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    _one_line(err.value, str(path))


def test_hostile_yaml_base_is_refused(tmp_path, marker):
    (tmp_path / "base.yaml").write_text(f"x: !!python/object/apply:os.system ['touch {marker}']\n")
    path = tmp_path / "child.yaml"
    path.write_text("_BASE_: base.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    _one_line(err.value, str(tmp_path / "base.yaml"))


# ------------------------------------------------------------------------------------------ archives
def _zip(path: str, members) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _zip_symlink(path: str, name: str, target: str) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("CCVID/ok.txt", "ok")
        info = zipfile.ZipInfo(name)
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, target)
    return path


def _tar(path: str, members) -> str:
    with tarfile.open(path, "w") as tf:
        for m in members:
            info = tarfile.TarInfo(m["name"])
            data = m.get("data", b"")
            if "symlink" in m:
                info.type, info.linkname = tarfile.SYMTYPE, m["symlink"]
            elif "hardlink" in m:
                info.type, info.linkname = tarfile.LNKTYPE, m["hardlink"]
            elif m.get("fifo"):
                info.type = tarfile.FIFOTYPE
            else:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _listing(folder) -> list:
    return sorted(osp.relpath(osp.join(d, f), folder) for d, dirs, files in os.walk(folder) for f in dirs + files)


HOSTILE_ARCHIVES = {
    "zip_dotdot": lambda p: _zip(p, [("CCVID/ok.txt", "ok"), ("../escaped.txt", "x")]),
    "zip_absolute": lambda p: _zip(p, [("CCVID/ok.txt", "ok"), ("/tmp/clip3dreid_escaped_abs.txt", "x")]),
    "zip_symlink_out": lambda p: _zip_symlink(p, "CCVID/link", "../../escaped"),
    "tar_dotdot": lambda p: _tar(p, [{"name": "CCVID/ok.txt", "data": b"ok"}, {"name": "../escaped.txt",
                                                                               "data": b"x"}]),
    "tar_absolute": lambda p: _tar(p, [{"name": "/tmp/clip3dreid_escaped_abs.txt", "data": b"x"}]),
    "tar_symlink_out": lambda p: _tar(p, [{"name": "CCVID/link", "symlink": "/tmp"},
                                          {"name": "CCVID/link/clip3dreid_escaped_abs.txt", "data": b"x"}]),
    "tar_symlink_dot_then_up": lambda p: _tar(p, [{"name": "y", "symlink": "."},
                                                  {"name": "y/../escaped.txt", "data": b"x"}]),
    "tar_hardlink_out": lambda p: _tar(p, [{"name": "CCVID/h", "hardlink": "../escaped.txt"}]),
    "tar_fifo": lambda p: _tar(p, [{"name": "CCVID/fifo", "fifo": True}]),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_ARCHIVES))
def test_hostile_archive_writes_nothing(tmp_path, kind):
    dest = tmp_path / "root" / "dest"
    dest.mkdir(parents=True)
    archive = HOSTILE_ARCHIVES[kind](str(tmp_path / "root" / f"a.{kind.split('_')[0]}"))
    before = _listing(tmp_path)
    if osp.exists("/tmp/clip3dreid_escaped_abs.txt"):
        os.remove("/tmp/clip3dreid_escaped_abs.txt")
    with pytest.raises(download_datasets.UnsafeArchiveError) as err:
        download_datasets.extract(archive, str(dest))
    _one_line(err.value, archive, "nothing was extracted")
    assert _listing(tmp_path) == before  # neither outside nor inside the destination
    assert not osp.exists("/tmp/clip3dreid_escaped_abs.txt")


def test_safe_archive_with_inner_link_extracts(tmp_path):
    dest = tmp_path / "dest"
    archive = _tar(str(tmp_path / "a.tar"), [{"name": "CCVID/train.txt", "data": b"x"},
                                              {"name": "CCVID/latest", "symlink": "train.txt"}])
    assert download_datasets.extract(archive, str(dest))
    assert (dest / "CCVID" / "latest").read_bytes() == b"x"


def test_stays_inside_by_hand():
    for ok in ("a.png", "a/b/c.png", "a/./b", "..a/b", "a..b"):
        assert stays_inside(ok), ok
    for bad in ("", "/abs", "\\abs", "C:\\x", "c:x", "..", "../a", "a/../../b", "a\\..\\b", "a/.."):
        assert not stays_inside(bad), bad


def _fake_gdown(monkeypatch, tmp_path, payload: bytes) -> None:
    import gdown

    def fake(id=None, output=None, **k):
        path = osp.join(output, "CCVID.zip")
        with open(path, "wb") as fh:
            fh.write(payload)
        return path

    monkeypatch.setattr(gdown, "download", fake)


def test_download_prints_sha256_and_checks_it(tmp_path, monkeypatch, capsys):
    import hashlib

    payload = open(_zip(str(tmp_path / "src.zip"), [("CCVID/train.txt", "x")]), "rb").read()
    digest = hashlib.sha256(payload).hexdigest()
    _fake_gdown(monkeypatch, tmp_path, payload)
    root = tmp_path / "wrong"
    assert download_datasets.main(["--dataset", "ccvid", "--root", str(root), "--sha256", "0" * 64]) == 1
    assert f"{digest}  {root / 'CCVID.zip'}" in capsys.readouterr().out
    assert not (root / "CCVID").exists()  # a different archive is not extracted
    root = tmp_path / "right"
    assert download_datasets.main(["--dataset", "ccvid", "--root", str(root), "--sha256", digest.upper()]) == 0
    assert digest in capsys.readouterr().out and (root / "CCVID" / "train.txt").is_file()
    with pytest.raises(SystemExit) as exit_:
        download_datasets.main(["--dataset", "ccvid", "--root", str(tmp_path / "x"), "--sha256", "abc"])
    assert exit_.value.code == 2 and "64 hex digits" in capsys.readouterr().err


def test_download_of_a_hostile_archive_fails_and_writes_nothing_outside(tmp_path, monkeypatch):
    payload = open(HOSTILE_ARCHIVES["zip_dotdot"](str(tmp_path / "src.zip")), "rb").read()
    _fake_gdown(monkeypatch, tmp_path, payload)
    root = tmp_path / "root"
    assert download_datasets.main(["--dataset", "ccvid", "--root", str(root)]) == 1
    assert not (tmp_path / "escaped.txt").exists() and not (root / "CCVID").exists()


# ------------------------------------------------------------------------------------------ other data files
def test_hostile_imagenet_file_in_the_model_zoo_cache_is_refused(tmp_path, monkeypatch, marker):
    # torchreid would load this file with torch.hub's weights_only=False; the plugin reads it as data first
    import torchreid

    from clip3dreid_plugin.models.imagenet import PretrainedWeightsError, imagenet_resnet_url

    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    path = folder / osp.basename(imagenet_resnet_url("resnet50"))
    torch.save({"conv1.weight": RunsCode(marker)}, path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(PretrainedWeightsError) as err:
        torchreid.models.build_model("clip3dreid", num_classes=5, loss="softmax", pretrained=True)
    _one_line(err.value, str(path), "posix.system", "model.pretrained")


def test_hostile_pose_file_is_refused(tmp_path, marker):
    from clip3dreid_plugin.body.poses import PoseFileError, load_pose_file

    obj = np.empty(1, dtype=object)
    obj[0] = RunsCode(marker)
    path = str(tmp_path / "poses.npz")
    np.savez(path, body_pose=obj)
    with pytest.raises(PoseFileError) as err:
        load_pose_file(path)
    assert path in str(err.value) and "allow_pickle" in str(err.value)


def test_hostile_npz_of_eval_shape_is_refused(tmp_path, marker, capsys):
    obj = np.empty(1, dtype=object)
    obj[0] = RunsCode(marker)
    path = str(tmp_path / "pred.npz")
    np.savez(path, betas=obj)
    rc = eval_shape.main(["--body-model", str(tmp_path), "--pred-npz", path, "--gt-npz", path])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and path in err[0], err

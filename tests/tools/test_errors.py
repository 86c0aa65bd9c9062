"""One error base (clip3dreid_plugin.errors) and one wrapper for every command: a user error is one line on stderr and
exit status 2, anything else keeps its traceback; a failed write names the file and leaves nothing behind."""
from __future__ import annotations

import ast
import errno
import importlib
import inspect
import os
import os.path as osp
import pickle
import pkgutil
import subprocess
import sys

import pytest
import torch

import clip3dreid_plugin
import clip3dreid_plugin.tools
from clip3dreid_plugin import compat
from clip3dreid_plugin.errors import UserError, WriteError
from clip3dreid_plugin.tools import common
from clip3dreid_plugin.utils.io import atomic_write

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _commands() -> dict:
    """setup.py's ``COMMANDS`` (console script -> module of clip3dreid_plugin.tools), read without running setup()."""
    tree = ast.parse(open(osp.join(REPO, "setup.py"), encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMMANDS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no COMMANDS")


COMMANDS = _commands()


def _plugin_error_classes() -> list:
    """Every exception class defined in a module of clip3dreid_plugin (imported here, so new ones are found)."""
    found = {}
    for mod in pkgutil.walk_packages(clip3dreid_plugin.__path__, "clip3dreid_plugin."):
        module = importlib.import_module(mod.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == mod.name:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return sorted(found.items())


# ------------------------------------------------------------------------------------------------ the base
def test_every_error_class_of_the_plugin_is_a_user_error_and_keeps_its_builtin_base():
    from clip3dreid_plugin.body.poses import PoseFileError
    from clip3dreid_plugin.body.render import HeadlessGLError
    from clip3dreid_plugin.body.smpl_io import BodyModelError
    from clip3dreid_plugin.body.synthcc import SynthCCError
    from clip3dreid_plugin.body.meshset_plan import SyntheticSetError
    from clip3dreid_plugin.config import ConfigError
    from clip3dreid_plugin.models.imagenet import PretrainedWeightsError
    from clip3dreid_plugin.teacher.cache import TeacherCacheError, TeacherCacheMissError, TeacherCacheStaleError
    from clip3dreid_plugin.teacher.weights import TeacherLoadError

    classes = dict(_plugin_error_classes())
    assert len(classes) >= 18, sorted(classes)
    assert [name for name, cls in classes.items() if not issubclass(cls, UserError)] == []
    # the built-in base each had before, so that existing ``except`` clauses still catch them
    builtin = {ConfigError: ValueError, compat.CheckpointError: ValueError, PretrainedWeightsError: ValueError,
               TeacherLoadError: RuntimeError, TeacherCacheError: RuntimeError, TeacherCacheMissError: KeyError,
               TeacherCacheStaleError: ValueError, BodyModelError: RuntimeError, PoseFileError: ValueError,
               HeadlessGLError: RuntimeError, SyntheticSetError: RuntimeError, SynthCCError: RuntimeError,
               WriteError: OSError}
    assert [cls for cls, base in builtin.items() if not issubclass(cls, base)] == []
    with pytest.raises(KeyError):  # a cache miss is still caught as a KeyError, and prints unquoted
        raise TeacherCacheMissError("image 'a.jpg' is not in the teacher cache")
    assert str(TeacherCacheMissError("image 'a.jpg'")) == "image 'a.jpg'"


def test_dataset_errors_have_their_own_base_counted_as_user_errors():
    from datasets_ext.base import DatasetLayoutError
    from datasets_ext.errors import DatasetError
    from datasets_ext.image_io import ImageReadError

    assert issubclass(DatasetLayoutError, (DatasetError, RuntimeError)) and issubclass(ImageReadError, OSError)
    assert issubclass(ImageReadError, DatasetError)
    assert not issubclass(DatasetError, UserError)  # datasets_ext imports nothing of the plugin
    assert common.error_line(DatasetLayoutError("no folder 'train' under /d")) == "no folder 'train' under /d"
    assert common.error_line(ImageReadError("cannot read x.jpg")) == "cannot read x.jpg"


def test_error_line_is_for_user_errors_only():
    assert common.error_line(UserError("first\n  second")) == "first second"
    assert common.error_line(FileNotFoundError("checkpoint not found: 'x'")) == "checkpoint not found: 'x'"
    for other in (RuntimeError("a bug"), ValueError("a bug"), KeyError("k"), AssertionError(), OSError("disk")):
        assert common.error_line(other) is None, other


# ------------------------------------------------------------------------------------------ failed writes
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_checkpoint_write_without_space_is_one_line_naming_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    path = str(tmp_path / "model" / "model.pth.tar-1")
    compat.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)
    before = open(path, "rb").read()

    class FullDisk:
        """A file handle whose writes fail as on a full disk (after the temp file exists)."""

        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            _no_space()

        def __getattr__(self, name):
            return getattr(self.fh, name)

    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(WriteError) as err:
        compat.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    line = common.error_line(err.value)
    assert line == f"cannot write '{path}': {os.strerror(errno.ENOSPC)}", line
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError) and err.value.filename == path
    copy = pickle.loads(pickle.dumps(err.value))  # as a DataLoader worker or a spawned process would send it
    assert type(copy) is WriteError and str(copy) == str(err.value) and copy.errno == errno.ENOSPC
    assert os.listdir(tmp_path / "model") == ["model.pth.tar-1"]  # no partial file, no temp file
    assert open(path, "rb").read() == before
    assert compat.load_checkpoint(path)["epoch"] == 1


def test_a_write_into_a_folder_that_cannot_be_made_names_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    path = str(blocker / "sub" / "metrics.json")
    with pytest.raises(WriteError) as err:
        atomic_write(path, lambda fh: fh.write(b"{}"))
    assert str(err.value).startswith(f"cannot write '{path}': ") and err.value.strerror
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_an_oserror_of_the_writer_about_another_file_keeps_its_type(tmp_path):
    missing = str(tmp_path / "elsewhere" / "input.bin")

    def copy_from_missing(fh):
        with open(missing, "rb") as src:
            fh.write(src.read())

    with pytest.raises(FileNotFoundError) as err:
        atomic_write(str(tmp_path / "out.bin"), copy_from_missing)
    assert not isinstance(err.value, WriteError) and err.value.filename == missing
    assert os.listdir(tmp_path) == []


def test_a_failed_checkpoint_write_through_the_train_cli_is_one_line(toy_market_root, tmp_path, monkeypatch, capsys):
    from clip3dreid_plugin.tools import train_net

    real_replace = os.replace

    def full_disk_for_checkpoints(src, dst):
        if ".pth.tar" in osp.basename(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk_for_checkpoints)
    out = tmp_path / "run"
    rc = train_net.main(["--config-file", "toy/resnet50_baseline_64x32", "--device", "cpu", "--output-dir", str(out),
                         "data.root", toy_market_root[0], "model.name", "resnet18", "model.pretrained", "False",
                         "train.max_epoch", "1", "test.eval_freq", "-1"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1, err
    ckpt = osp.join(str(out), "model", "model.pth.tar-1")
    assert err[0] == f"error: cannot write '{ckpt}': {os.strerror(errno.ENOSPC)}", err
    left = os.listdir(osp.join(str(out), "model")) if osp.isdir(osp.join(str(out), "model")) else []
    assert left == [], left  # neither the checkpoint nor its temp file


# ------------------------------------------------------------------------------------------ the wrapper
def test_setup_lists_every_tool_with_a_main():
    modules = sorted(m.name for m in pkgutil.iter_modules(clip3dreid_plugin.tools.__path__) if m.name != "common")
    assert sorted(set(COMMANDS.values())) == modules


def _bad_argv(command: str, tmp) -> list:
    """An argv of ``command`` that its parser takes and its body refuses as a user error."""
    missing = str(tmp / "missing")
    return {
        "clip3dreid-train": ["--config-file", "toy/resnet50_baseline_64x32", "data.sources", "[ltccc]"],
        "clip3dreid-quickstart": ["--work-dir", str(tmp / "qs"), "--device", "gpu0"],
        "clip3dreid-label": ["--config-file", missing + ".yaml"],
        "clip3dreid-dataset-info": ["--dataset", "ltcc", "--root", missing],
        "clip3dreid-download": ["--dataset", "ltcc", "--root", str(tmp), "--sha256", "123"],  # refused by its parser
        "clip3dreid-blur-faces": ["--src", missing, "--dst", str(tmp / "dst")],
        "clip3dreid-build-synthcc": ["--root", str(tmp), "--body-model", missing, "--no-progress"],
        "clip3dreid-make-body-model": ["--out", str(tmp), "--num-vertices", "10"],
        "clip3dreid-render-meshset": ["--body-model", missing, "--out", str(tmp / "x"), "--no-progress"],
        "clip3dreid-render-synthetic": ["--body-model", missing, "--out", str(tmp / "x"), "--no-progress"],  # alias
        "clip3dreid-eval-shape": ["--body-model", str(tmp)],
        "clip3dreid-benchmark": ["--device", "gpu0"],
        "clip3dreid-complexity": ["--height", "0"],
        "clip3dreid-export-curves": ["--logdir", missing, "--output", str(tmp / "c.csv")],
        "clip3dreid-export-onnx": ["--config-file", missing + ".yaml", "--output", str(tmp / "m.onnx")],
        "clip3dreid-extract-features": ["--input", missing, "--output", str(tmp / "f.npy")],
        "clip3dreid-visualize-transport": ["--config-file", missing + ".yaml", "--image", missing,
                                           "--output", str(tmp / "t.png")],
        "clip3dreid-compare": [missing],
        "clip3dreid-study": [missing + ".yaml"],
    }[command]


def _exit_status(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # the parser's own refusal: one line and status 2 as well
        return stop.code


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_ends_a_bad_option_in_one_line_and_status_2(command, tmp_path, capsys):
    main = importlib.import_module(f"clip3dreid_plugin.tools.{COMMANDS[command]}").main
    for argv in (["--no-such-option"], _bad_argv(command, tmp_path)):
        status = _exit_status(main, argv)
        out, err = capsys.readouterr()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert status == 2, (argv, status, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, lines)
        assert "Traceback" not in out + err


def test_the_train_command_names_the_misspelt_dataset_in_one_line(tmp_path, capsys):
    from clip3dreid_plugin.tools import train_net

    assert train_net.main(_bad_argv("clip3dreid-train", tmp_path) + ["--device", "cpu"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: data.sources: unknown image dataset 'ltccc'"), err
    assert "did you mean 'ltcc'?" in err[0]


@pytest.mark.parametrize("error", [RuntimeError, ValueError, KeyError])
def test_an_error_that_is_not_the_users_propagates_from_main(error, tmp_path, monkeypatch):
    from clip3dreid_plugin.tools import eval_shape, make_body_model

    def broken(*args, **kwargs):
        raise error("a bug in the tool")

    monkeypatch.setattr(make_body_model, "write_procedural_smpl", broken)
    with pytest.raises(error, match="a bug in the tool"):
        make_body_model.main(["--out", str(tmp_path)])
    # eval_shape caught every ValueError and RuntimeError before: a bug in it looked like a user error.
    monkeypatch.setattr(eval_shape, "load_body_model", broken)
    import numpy as np

    betas = str(tmp_path / "b.npz")
    np.savez(betas, betas=np.zeros((2, 10)))
    with pytest.raises(error, match="a bug in the tool"):
        eval_shape.main(["--body-model", str(tmp_path), "--pred-npz", betas, "--gt-npz", betas])


def test_a_runtime_error_inside_a_console_script_prints_its_traceback(tmp_path):
    code = ("import sys\n"
            "from clip3dreid_plugin.tools import make_body_model as tool\n"
            "def broken(*a, **k):\n"
            "    raise RuntimeError('a bug in the tool')\n"
            "tool.write_procedural_smpl = broken\n"
            f"sys.exit(tool.main(['--out', {str(tmp_path)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "RuntimeError: a bug in the tool"
    assert "error: " not in proc.stderr

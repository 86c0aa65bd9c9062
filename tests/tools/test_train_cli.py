"""scripts/train.py: train, checkpoint, kill, resume, evaluate-only, and one-line errors."""
from __future__ import annotations

import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from clip3dreid_plugin import compat
from clip3dreid_plugin.tools import train_net

pytestmark = pytest.mark.slow  # trains models end to end or starts processes

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, "configs", "toy", "resnet50_baseline_64x32.yaml")
# The checkpointing tests write several checkpoints: ResNet-18 keeps each near 45 MB instead of 130 MB.
SMALL = ("model.name", "resnet18")


def _opts(root: str, out: str, *extra: str) -> list:
    # Options may stand anywhere on the line (CLIParser); the extras go before data.root.
    return ["--config-file", TOY, "--device", "cpu", "--output-dir", out, "--seed", "3", *extra, "data.root", root]


def _state(path: str) -> dict:
    return compat.load_checkpoint(path)


def test_kill_then_resume_matches_uninterrupted_run(toy_market_root, tmp_path):
    root, _ = toy_market_root
    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "killed")
    assert train_net.main(_opts(root, ref_dir, "train.max_epoch", "2", *SMALL)) == 0
    ref = _state(osp.join(ref_dir, "model", "model.pth.tar-2"))
    assert osp.isfile(osp.join(ref_dir, "config.yaml")) and osp.isfile(osp.join(ref_dir, "train.log"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(ref_dir))

    # A long run killed (SIGKILL) right after its first checkpoint lands.
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, osp.join(REPO, "scripts", "train.py"),
                             *_opts(root, run_dir, "train.max_epoch", "50", *SMALL)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    first = osp.join(run_dir, "model", "model.pth.tar-1")
    deadline = time.time() + 240
    while not osp.isfile(first) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert osp.isfile(first), proc.stderr.read().decode()[-2000:]
    assert not osp.isfile(osp.join(run_dir, "model", "model.pth.tar-50"))
    for f in os.listdir(osp.join(run_dir, "model")):  # the kill may have landed mid-write of tar-2
        if f != "model.pth.tar-1":
            os.remove(osp.join(run_dir, "model", f))

    assert train_net.main(_opts(root, run_dir, "--resume", "auto", "train.max_epoch", "2", *SMALL)) == 0
    resumed = _state(osp.join(run_dir, "model", "model.pth.tar-2"))
    assert resumed["epoch"] == 2
    # Same weights and optimizer state as the uninterrupted run: training continued from epoch 1.
    for k, v in ref["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k
    assert resumed["optimizer"]["state"][0]["step"] == ref["optimizer"]["state"][0]["step"]
    assert torch.equal(resumed["optimizer"]["state"][0]["exp_avg"], ref["optimizer"]["state"][0]["exp_avg"])


def test_eval_only_reproduces_final_metrics(toy_market_root, tmp_path):
    root, _ = toy_market_root
    out = str(tmp_path / "run")
    args = train_net.build_parser().parse_args(_opts(root, out, "train.max_epoch", "1", *SMALL))
    trained = train_net.run(train_net.setup_cfg(args))
    ckpt = osp.join(out, "model", "model.pth.tar-1")
    assert _state(ckpt)["metrics"] == trained
    args = train_net.build_parser().parse_args(
        _opts(root, str(tmp_path / "eval"), "--eval-only", "model.load_weights", ckpt, *SMALL))
    evaluated = train_net.run(train_net.setup_cfg(args))
    assert set(evaluated) == {"market1501"}
    for k, v in trained["market1501"].items():
        assert evaluated["market1501"][k] == pytest.approx(v, abs=1e-9), k
    assert not osp.isdir(osp.join(str(tmp_path / "eval"), "model"))  # evaluate-only writes no checkpoint


def test_keep_checkpoints_leaves_the_latest_and_the_best_and_resumes(toy_market_root, tmp_path):
    root, _ = toy_market_root
    out = str(tmp_path / "run")
    keep = ("runtime.keep_checkpoints", "2", "test.eval_freq", "1", *SMALL)
    assert train_net.main(_opts(root, out, "train.max_epoch", "5", *keep)) == 0
    folder = osp.join(out, "model")
    assert sorted(os.listdir(folder)) == ["model-best.pth.tar", "model.pth.tar-4", "model.pth.tar-5"]
    best = _state(osp.join(folder, "model-best.pth.tar"))
    # The best is whichever epoch scored highest, kept even when its own model.pth.tar-N was removed.
    assert 1 <= best["epoch"] <= 5 and best["best_metric"] == max(
        _state(osp.join(folder, f))["best_metric"] for f in ("model.pth.tar-4", "model.pth.tar-5"))

    assert train_net.main(_opts(root, out, "--resume", "auto", "train.max_epoch", "6", *keep)) == 0
    assert sorted(os.listdir(folder)) == ["model-best.pth.tar", "model.pth.tar-5", "model.pth.tar-6"]
    last = _state(osp.join(folder, "model.pth.tar-6"))
    # It went on from epoch 5: one more epoch of 4 steps on top of 5 x 4 (36 images, batches of 8, last dropped).
    assert last["epoch"] == 6 and last["optimizer"]["state"][0]["step"] == 24


def _one_line_error(capsys, argv, *needles):
    rc = train_net.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    err = [ln for ln in err if ln.startswith("error:")]
    assert rc == 2
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_missing_dataset_root(capsys, tmp_path):
    _one_line_error(capsys, _opts(str(tmp_path / "no_such_root"), str(tmp_path / "o")), "no_such_root")


def test_unknown_model_name(capsys, toy_market_root, tmp_path):
    _one_line_error(capsys, _opts(toy_market_root[0], str(tmp_path / "o"), "model.name", "resnet5O"),
                    "unknown model.name 'resnet5O'")


def test_unknown_config_key(capsys, toy_market_root, tmp_path):
    _one_line_error(capsys, _opts(toy_market_root[0], str(tmp_path / "o"), "train.max_epochs", "1"),
                    "train.max_epochs")


def test_unreadable_image(capsys, toy_market_root, tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(toy_market_root[0], root)
    train_dir = osp.join(root, "market1501", "bounding_box_train")
    victim = sorted(os.listdir(train_dir))[0]
    with open(osp.join(train_dir, victim), "wb") as f:
        f.write(b"truncated")
    _one_line_error(capsys, _opts(root, str(tmp_path / "o"), "train.max_epoch", "1", "train.batch_size", "36"),
                    victim)


def test_amp_with_a_torchreid_engine_is_refused(capsys, toy_market_root, tmp_path):
    # torchreid's engines run in float32; silently ignoring --amp would mislabel the baseline's precision.
    _one_line_error(capsys, _opts(toy_market_root[0], str(tmp_path / "o"), "--amp", "bf16", *SMALL),
                    "runtime.amp bf16 (--amp) applies to model.name clip3dreid, cal, clip_reid and shape_probe only")


def _raise_in_forward(monkeypatch, exc):
    import torchreid

    def forward(self, x):
        raise exc

    monkeypatch.setattr(torchreid.models.resnet.ResNet, "forward", forward)


def test_an_unexpected_error_in_the_model_keeps_its_traceback(monkeypatch, toy_market_root, tmp_path):
    # A bug in model code is not a user error: main() lets it propagate, so scripts/train.py prints the traceback.
    _raise_in_forward(monkeypatch, RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x7 and 8x9)"))
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        train_net.main(_opts(toy_market_root[0], str(tmp_path / "o"), "train.max_epoch", "1", *SMALL))


def test_cuda_out_of_memory_gets_one_line_of_advice(capsys, monkeypatch, toy_market_root, tmp_path):
    _raise_in_forward(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"))
    _one_line_error(capsys, _opts(toy_market_root[0], str(tmp_path / "o"), "train.max_epoch", "1", *SMALL),
                    "CUDA out of memory. Tried to allocate 2.00 GiB", "train.batch_size", "runtime.amp")


@pytest.mark.parametrize("content", [b"not a checkpoint at all", None])
def test_unreadable_checkpoint_names_the_file(capsys, toy_market_root, tmp_path, content):
    bad = tmp_path / "bad.pth.tar"
    if content is None:  # a real checkpoint cut short, as a full disk or a killed copy leaves it
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, bad)
        bad.write_bytes(bad.read_bytes()[:300])
    else:
        bad.write_bytes(content)
    for flag in (["model.load_weights", str(bad)], ["--resume", str(bad)]):
        argv = _opts(toy_market_root[0], str(tmp_path / "o"), *(flag if flag[0] == "--resume" else []),
                     *SMALL, *(flag if flag[0] != "--resume" else []))
        line = _one_line_error(capsys, argv, str(bad), "is not a readable checkpoint")
        assert "weights_only" not in line

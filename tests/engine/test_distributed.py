"""torchrun + gloo on CPU: 2-process training, exact gathered evaluation, kill/resume across world sizes."""
from __future__ import annotations

import json
import os
import os.path as osp
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Sequence

import pytest
import torch

from clip3dreid_plugin import compat
from clip3dreid_plugin.data.samplers import DistributedIdentitySampler, ShardSampler
from clip3dreid_plugin.tools import train_net
from fixtures.tiny_clip import tiny_clip

pytestmark = pytest.mark.slow  # trains models end to end or starts processes

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, "configs", "toy", "resnet50_baseline_64x32.yaml")


def _torchrun(nproc: int, root: str, out: str, *extra: str, port: int, tiny_clip_config: str = "",
              flags: Sequence[str] = ()) -> subprocess.Popen:
    """``torchrun`` of the train command on the toy set; with ``tiny_clip_config`` (the JSON of
    :mod:`fixtures.tiny_clip`) its processes register the tiny CLIP first."""
    path = os.pathsep.join([REPO, osp.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", TINY_CLIP_CONFIG=tiny_clip_config)
    script = ["-m", "fixtures.train_tiny_clip"] if tiny_clip_config else [osp.join(REPO, "scripts", "train.py")]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={port}", *script, "--config-file", TOY, "--device", "cpu", *flags,
           "--output-dir", out, "data.root", root, "sampler.train_sampler", "RandomIdentitySampler", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _descendants(pid: int) -> list:
    """Every process below ``pid`` (from /proc): torchrun starts its workers in sessions of their own."""
    children: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL for torchrun and all its workers at once, as a lost machine does; a worker left alive would go on
    writing (and pruning) the checkpoints the test resumes from."""
    pids = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + 30
    while any(_is_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)


def _is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(name, weights, config JSON)`` of the tiny test CLIP."""
    folder = tmp_path_factory.mktemp("tiny_clip_ddp")
    name, weights = tiny_clip(str(folder))
    return name, weights, str(folder / f"{name}.json")


def _student_args(tiny) -> list:
    """A small clip3dreid student taught online by the tiny CLIP, in bf16 autocast (fp16 does not run on CPU)."""
    name, weights, _ = tiny
    return ["model.name", "clip3dreid", "clip3dreid.backbone", "resnet18", "clip3dreid.local_dim", "64",
            "clip3dreid.agg_hidden_dim", "32", "clip3dreid.head_hidden_dim", "32", "clip3dreid.teacher_dim", "64",
            "teacher.name", name, "teacher.pretrained", weights, "teacher.mode", "online", "train.lr", "0.001",
            "runtime.amp", "bf16"]


@pytest.fixture(scope="module")
def wide_toy_root(tmp_path_factory):
    """The toy set with 40 test identities (40 queries, 200 gallery images): enough near ties that features from a
    model with other batch-norm statistics change the metrics (4 identities are too few to show it)."""
    from fixtures.toy_market import write_toy_market

    root = tmp_path_factory.mktemp("wide_toy")
    write_toy_market(str(root), num_test_ids=40)
    return str(root)


def test_two_process_training_matches_single_process_eval(wide_toy_root, tmp_path):
    """Metrics of a 2-process run equal a 1-process evaluation of its checkpoint: both ranks extract features with
    rank 0's batch-norm statistics (without the broadcast before evaluation, rank 1's shard differs and so do the
    metrics on this set)."""
    root = wide_toy_root
    out = str(tmp_path / "ddp")
    _finish(_torchrun(2, root, out, "train.max_epoch", "1", "model.name", "resnet18", port=29613))
    ckpt = osp.join(out, "model", "model.pth.tar-1")
    saved = compat.load_checkpoint(ckpt)
    ddp_metrics = saved["metrics"]["market1501"]
    assert not osp.isdir(osp.join(out, "rank1"))  # nothing but rank 0 writes
    args = train_net.build_parser().parse_args(
        ["--config-file", TOY, "--device", "cpu", "--output-dir", str(tmp_path / "single"), "--eval-only",
         "data.root", root, "model.name", "resnet18", "model.load_weights", ckpt])
    single = train_net.run(train_net.setup_cfg(args))["market1501"]
    assert set(single) == set(ddp_metrics)
    for k in single:
        assert single[k] == pytest.approx(ddp_metrics[k], abs=1e-6), k


def test_kill_distributed_run_and_resume_with_other_world_size(toy_market_root, tmp_path):
    root, _ = toy_market_root
    out = str(tmp_path / "ddp_kill")
    proc = _torchrun(2, root, out, "train.max_epoch", "50", port=29617)
    first = osp.join(out, "model", "model.pth.tar-1")
    deadline = time.time() + 300
    while not osp.isfile(first) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    _kill_tree(proc)
    assert osp.isfile(first)
    for f in os.listdir(osp.join(out, "model")):
        if f != "model.pth.tar-1":
            os.remove(osp.join(out, "model", f))
    # Resume the 2-process checkpoint in a single process (world size 2 -> 1).
    rc = train_net.main(["--config-file", TOY, "--device", "cpu", "--output-dir", out, "--resume", "auto",
                         "data.root", root, "train.max_epoch", "2"])
    assert rc == 0
    resumed = compat.load_checkpoint(osp.join(out, "model", "model.pth.tar-2"))
    first_ckpt = compat.load_checkpoint(first)
    assert resumed["epoch"] == 2
    assert resumed["optimizer"]["state"][0]["step"] > first_ckpt["optimizer"]["state"][0]["step"]


def test_fixbase_epoch_trains_under_ddp(toy_market_root, tmp_path):
    """train.fixbase_epoch 1 under torchrun: only the classifier trains in epoch 1 (torchreid finds it by name on the
    unwrapped model), every layer in epoch 2, and DDP accepts the frozen layers."""
    root, _ = toy_market_root
    out = str(tmp_path / "ddp_fixbase")
    _finish(_torchrun(2, root, out, "train.max_epoch", "2", "train.fixbase_epoch", "1", "model.name", "resnet18",
                      port=29619))
    first, second = (compat.load_checkpoint(osp.join(out, "model", f"model.pth.tar-{e}")) for e in (1, 2))
    n_params = len(first["optimizer"]["param_groups"][0]["params"])
    # Adam keeps state only for parameters that received a gradient: the classifier's weight and bias in epoch 1.
    assert len(first["optimizer"]["state"]) == 2 and len(second["optimizer"]["state"]) == n_params > 2
    assert not torch.equal(second["state_dict"]["conv1.weight"], first["state_dict"]["conv1.weight"])


def test_resume_restores_each_ranks_rng_and_the_scaler(toy_market_root, tiny, tmp_path):
    """A 2-process bf16 run resumed from its epoch-1 checkpoint ends with the weights of the uninterrupted run.

    What is compared: the epoch-2 weights of (a) one uninterrupted 2-epoch run and (b) a fresh 2-process job resumed
    from (a)'s epoch-1 checkpoint, which is what a job killed during epoch 2 leaves behind (checkpoints are written
    atomically; the kill itself is exercised by the test above). Rank 1 flips its own images at random, so (b) only
    matches if rank 1 gets back its own RNG state, not rank 0's nor a fresh seed. Bit-exact equality holds on CPU
    because both jobs run the same ops in one thread per process with gloo's fixed 2-rank reduction order.
    The CPU has no fp16 GradScaler (it is disabled): its (empty) state is checked to be stored, not exercised.
    """
    root, _ = toy_market_root
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    _finish(_torchrun(2, root, full, "train.max_epoch", "2", *_student_args(tiny), port=29631,
                      tiny_clip_config=tiny[2]))
    first = compat.load_checkpoint(osp.join(full, "model", "model.pth.tar-1"))
    per_rank = first["rng_per_rank"]
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])
    assert first["scaler"] == {}  # a disabled scaler's state, kept so fp16 runs on a GPU resume theirs
    os.makedirs(osp.join(resumed, "model"))
    shutil.copy(osp.join(full, "model", "model.pth.tar-1"), osp.join(resumed, "model", "model.pth.tar-1"))
    _finish(_torchrun(2, root, resumed, "train.max_epoch", "2", *_student_args(tiny), port=29633,
                      tiny_clip_config=tiny[2], flags=("--resume", "auto")))
    want = compat.load_checkpoint(osp.join(full, "model", "model.pth.tar-2"))["state_dict"]
    got = compat.load_checkpoint(osp.join(resumed, "model", "model.pth.tar-2"))["state_dict"]
    assert want.keys() == got.keys()
    differ = [k for k in want if not torch.equal(want[k], got[k])]
    assert not differ, differ[:5]
    assert not torch.equal(want["classifier.weight"], first["state_dict"]["classifier.weight"])  # epoch 2 trained


def test_clip_zeroshot_evaluates_under_torchrun_with_a_small_training_set(toy_market_root, tiny, tmp_path):
    """The teacher-only baseline under torchrun: no DDP around a model without trainable parameters, and an
    evaluation-only run accepts a training set smaller than one global batch (2 x 64 images here); both ranks'
    shards give the metrics of a single process."""
    root, _ = toy_market_root
    name, weights, config = tiny
    model = ["model.name", "clip_zeroshot", "teacher.name", name, "teacher.pretrained", weights,
             "train.batch_size", "64"]
    out = str(tmp_path / "zs_ddp")
    _finish(_torchrun(2, root, out, *model, port=29635, tiny_clip_config=config, flags=("--eval-only",)))
    with open(osp.join(out, "metrics.json"), encoding="utf-8") as f:
        ddp = json.load(f)["last"]["metrics"]["market1501"]
    args = train_net.build_parser().parse_args(
        ["--config-file", TOY, "--device", "cpu", "--output-dir", str(tmp_path / "zs_single"), "--eval-only",
         "data.root", root, "sampler.train_sampler", "RandomIdentitySampler", *model])
    single = train_net.run(train_net.setup_cfg(args))["market1501"]
    assert set(single) == set(ddp) and "general_mAP" in single
    for k in single:
        assert ddp[k] == pytest.approx(single[k], abs=1e-6), k


def test_distributed_identity_sampler_shards_balanced_batches():
    data = [(f"img{i}", i // 6, 0) for i in range(60)]  # 10 ids x 6 images
    world, bs, k = 2, 8, 4
    per_rank = []
    for r in range(world):
        s = DistributedIdentitySampler(data, bs, k, rank=r, world_size=world, seed=5)
        s.set_epoch(3)
        per_rank.append(list(s))
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    for b in range(len(per_rank[0]) // bs):
        batch0 = per_rank[0][b * bs:(b + 1) * bs]
        batch1 = per_rank[1][b * bs:(b + 1) * bs]
        assert not set(batch0) & set(batch1)  # no image twice in one global step
        for batch in (batch0, batch1):
            pids = [data[i][1] for i in batch]
            assert all(pids.count(p) == k for p in set(pids))  # P x K
    again = DistributedIdentitySampler(data, bs, k, rank=0, world_size=world, seed=5)
    again.set_epoch(3)
    assert list(again) == per_rank[0]  # reproducible per (seed, epoch)
    again.set_epoch(4)
    assert list(again) != per_rank[0]


def test_shard_sampler_partitions_in_order():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]


def test_torchrun_environment_is_read_by_one_module(monkeypatch):
    """``utils/torchrun.py`` reads ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; no other module of the plugin does."""
    from clip3dreid_plugin.utils import distributed, torchrun

    for name, value in (("RANK", "3"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "4")):
        monkeypatch.setenv(name, value)
    assert (torchrun.launched_rank(), torchrun.launched_local_rank(), torchrun.launched_world_size()) == (3, 1, 4)
    assert torchrun.is_launched() and distributed.launched_rank() == 3  # re-exported with the process-group helpers
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name)
    assert (torchrun.launched_rank(), torchrun.launched_local_rank(), torchrun.launched_world_size()) == (0, 0, 1)
    assert not torchrun.is_launched()
    readers = []
    for folder, _, files in os.walk(osp.join(REPO, "clip3dreid_plugin")):
        for f in files:
            path = osp.join(folder, f)
            if f.endswith(".py") and osp.relpath(path, REPO) != osp.join("clip3dreid_plugin", "utils", "torchrun.py"):
                with open(path, encoding="utf-8") as fh:
                    if re.search(r"environ(\.get\(|\[)[\"'](RANK|LOCAL_RANK|WORLD_SIZE)[\"']", fh.read()):
                        readers.append(osp.relpath(path, REPO))
    assert not readers, f"read torchrun's environment through clip3dreid_plugin.utils.torchrun: {readers}"

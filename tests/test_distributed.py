"""torchrun + gloo on CPU: 2-process training, exact gathered evaluation, kill/resume across world sizes."""
from __future__ import annotations

import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

from clip3dreid_plugin import compat
from clip3dreid_plugin.data.samplers import DistributedIdentitySampler, ShardSampler
from clip3dreid_plugin.tools import train_net

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY = osp.join(REPO, "configs", "toy", "resnet50_baseline_64x32.yaml")


def _torchrun(nproc: int, root: str, out: str, *extra: str, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={port}", osp.join(REPO, "scripts", "train.py"), "--config-file", TOY, "--device", "cpu",
           "--output-dir", out, "data.root", root, "sampler.train_sampler", "RandomIdentitySampler", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text


def test_two_process_training_matches_single_process_eval(toy_market_root, tmp_path):
    root, _ = toy_market_root
    out = str(tmp_path / "ddp")
    _finish(_torchrun(2, root, out, "train.max_epoch", "1", port=29613))
    ckpt = osp.join(out, "model", "model.pth.tar-1")
    saved = compat.load_checkpoint(ckpt)
    ddp_metrics = saved["metrics"]["market1501"]
    assert not osp.isdir(osp.join(out, "rank1"))  # nothing but rank 0 writes
    args = train_net.build_parser().parse_args(
        ["--config-file", TOY, "--device", "cpu", "--output-dir", str(tmp_path / "single"), "--eval-only",
         "data.root", root, "model.load_weights", ckpt])
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
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
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

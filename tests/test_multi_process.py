"""Multi-process correctness that needs no GPU: one model at evaluation (rank 0's BN statistics on every rank), a
synthetic stream per rank re-seeded every epoch, DDP only around a model that trains."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision.transforms as T

from clip3dreid_plugin.body.procedural import write_procedural_smpl
from clip3dreid_plugin.body.synthetic_set import render_synthetic_set
from clip3dreid_plugin.data.synthetic import SyntheticMeshDataset, SyntheticStream
from clip3dreid_plugin.utils.distributed import broadcast_buffers


def _broadcast_worker(rank: int, store: str, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
        model[1].running_mean.fill_(rank + 1.0)  # each rank's own statistics, as after the last DDP step
        model[1].running_var.fill_(10.0 * (rank + 1))
        n = broadcast_buffers(model)
        out.put((rank, n, model[1].running_mean.tolist(), model[1].running_var.tolist()))
    finally:
        dist.destroy_process_group()


def test_broadcast_buffers_gives_every_rank_rank0s_statistics(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_broadcast_worker, args=(r, str(tmp_path / "store"), out)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [g[1] for g in got] == [3, 3]  # running_mean, running_var, num_batches_tracked
    assert all(g[2] == [1.0, 1.0, 1.0] and g[3] == [10.0, 10.0, 10.0] for g in got), got
    assert broadcast_buffers(torch.nn.BatchNorm1d(2)) == 0  # a single process has nothing to do


def test_synthetic_stream_differs_per_rank_and_epoch_and_repeats_for_the_same(tmp_path):
    body = write_procedural_smpl(str(tmp_path / "body"), num_vertices=400)
    render_synthetic_set(body, str(tmp_path / "syn"), num_female=3, num_male=3, poses_per_subject=1, height=32,
                         width=16, show_progress=False)
    ds = SyntheticMeshDataset(str(tmp_path / "syn"), transform=T.ToTensor())

    def first_betas(rank: int, epoch: int) -> torch.Tensor:
        stream = SyntheticStream(ds, batch_size=3, seed=7, rank=rank)
        stream.set_epoch(epoch)
        return torch.cat([next(stream)["betas"] for _ in range(2)])

    assert torch.equal(first_betas(0, 0), first_betas(0, 0))
    assert not torch.equal(first_betas(0, 0), first_betas(1, 0))
    assert not torch.equal(first_betas(0, 0), first_betas(0, 1))
    # Each pass over the set is a permutation: two batches of 3 from 6 bodies hold every body once.
    assert sorted(first_betas(1, 3)[:, 0].tolist()) == sorted(ds.betas[:, 0].tolist())


def test_a_model_with_nothing_to_train_is_not_wrapped_in_ddp():
    from clip3dreid_plugin.engine.base import unwrap
    from clip3dreid_plugin.tools.train_net import wrap_for_training

    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    # No process group exists here: constructing DDP would fail, so returning the module proves it was not tried.
    assert wrap_for_training(frozen, distributed=True, trainable=False, device=torch.device("cpu")) is frozen
    compiled = wrap_for_training(frozen, distributed=False, trainable=False, device=torch.device("cpu"),
                                 compile_model=True)
    assert compiled is not frozen and unwrap(compiled) is frozen


def test_runtime_deterministic_asks_torch_for_deterministic_kernels():
    from clip3dreid_plugin.utils.runtime import set_seed

    try:
        set_seed(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    finally:
        set_seed(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark

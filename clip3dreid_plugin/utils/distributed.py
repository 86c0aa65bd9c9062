"""torch.distributed helpers: init from ``torchrun`` variables, rank queries, ordered all-gather, SyncBatchNorm."""
from __future__ import annotations

import datetime
import logging
from typing import Callable, Optional

import torch
import torch.distributed as dist

from clip3dreid_plugin.utils.torchrun import launched_local_rank, launched_rank, launched_world_size

logger = logging.getLogger(__name__)

#: How long the other ranks wait for rank 0's work in :func:`run_on_main` (the default group's NCCL timeout is 10
#: minutes, too short for re-ranking a large gallery).
MAIN_WORK_TIMEOUT = datetime.timedelta(hours=24)
_main_work_group: Optional[object] = None

__all__ = ["launched_rank", "launched_local_rank", "launched_world_size", "init_distributed", "is_distributed",
           "get_rank", "get_world_size", "all_gather_ordered", "all_gather_objects", "all_reduce_sum",
           "broadcast_buffers", "barrier", "cleanup", "convert_sync_batchnorm", "run_on_main"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_distributed(backend: str = "auto", device_type: str = "cpu") -> bool:
    """Initialises the default process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Args:
        backend: ``auto`` (nccl on CUDA, gloo on CPU), ``nccl`` or ``gloo``.
        device_type: ``cpu`` or ``cuda``; on CUDA each process binds to ``LOCAL_RANK``.

    Returns:
        True when running distributed.
    """
    world = launched_world_size()
    if world <= 1 or is_distributed():
        return is_distributed()
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(launched_local_rank())
    dist.init_process_group(backend=backend)
    logger.info("distributed: rank %d/%d, backend %s", get_rank(), get_world_size(), backend)
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    global _main_work_group
    if is_distributed():
        dist.destroy_process_group()  # every group, run_on_main's included
    _main_work_group = None


def all_gather_ordered(t: torch.Tensor, total: int) -> torch.Tensor:
    """Gathers the shards of ``rank::world`` interleaved sharding back into the original order.

    Args:
        t: this rank's rows ``[n_r, ...]`` = rows ``rank, rank + W, rank + 2W, ...`` of the full tensor.
        total: number of rows of the full tensor.

    Returns:
        The full tensor ``[total, ...]`` on every rank (``t`` itself when not distributed).
    """
    if not is_distributed():
        return t
    world = get_world_size()
    per = (total + world - 1) // world
    # gloo/nccl all_gather need equal shapes: pad every shard to ceil(total / world) rows.
    pad = torch.zeros((per,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    pad[: t.shape[0]] = t
    bufs = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(bufs, pad)
    out = torch.empty((total,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    for r, b in enumerate(bufs):
        n_r = len(range(r, total, world))
        out[r::world] = b[:n_r]
    return out


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> int:
    """Copies rank ``src``'s buffers (batch-norm running statistics) into every rank's ``module``.

    DDP broadcasts buffers only before a training forward, so after the last step each rank holds its own running
    statistics. Evaluation must use one model: call this before extracting features.

    Returns:
        The number of buffers broadcast (0 outside ``torch.distributed`` or with one process).
    """
    if not is_distributed() or get_world_size() == 1:
        return 0
    n = 0
    for buf in module.buffers():
        dist.broadcast(buf.data, src)
        n += 1
    return n


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the ranks, on ``t``'s device (``t`` itself outside ``torch.distributed``).

    NCCL reduces CUDA tensors only: a CPU tensor goes through the current GPU and comes back.
    """
    if not is_distributed() or get_world_size() == 1:
        return t
    comm = t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        comm = t.to(torch.device("cuda", torch.cuda.current_device()))
    else:
        comm = t.clone()
    dist.all_reduce(comm, op=dist.ReduceOp.SUM)
    return comm.to(t.device)


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` outside ``torch.distributed``)."""
    if not is_distributed() or get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)  # under NCCL it uses the current GPU, which the run has set
    return out


def convert_sync_batchnorm(module: torch.nn.Module, process_group=None) -> torch.nn.Module:
    """Every batch norm in ``module`` as a :class:`torch.nn.SyncBatchNorm` holding the very same tensors.

    torch's ``SyncBatchNorm.convert_sync_batchnorm`` assigns ``weight`` and ``bias`` as parameters: on a batch norm
    whose bias is a buffer (the student's BN-neck, kept out of training that way) it raises a ``TypeError``, and were
    it to succeed the bias would train again. Here each converted layer takes over the original's parameter and
    buffer tables as they are, so a buffer stays a buffer, ``requires_grad`` is unchanged and no value is copied.
    Modules kept outside the module tree (the CLIP teacher's network) are not visited.

    Args:
        module: a model, or a single batch norm (then a new layer is returned).
        process_group: the group whose ranks share batch statistics; None = the whole world.

    Returns:
        ``module`` with its batch norms replaced (or the new layer when ``module`` is one).
    """
    out = module
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, torch.nn.SyncBatchNorm):
        out = torch.nn.SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats, process_group)
        out._parameters.clear()
        out._parameters.update(module._parameters)
        out._buffers.clear()
        out._buffers.update(module._buffers)
        out._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out


def run_on_main(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``fn()`` computed by rank 0 alone and given to every rank (``fn()`` itself outside ``torch.distributed``).

    The other ranks wait in a gloo group of their own whose timeout is :data:`MAIN_WORK_TIMEOUT`, not the default
    group's, so minutes of work on rank 0 do not end the job. Every rank calls it at the same point (the group is
    created collectively on the first call). An exception on rank 0 is raised on every rank.

    Args:
        fn: returns a CPU tensor.
    """
    global _main_work_group
    if not is_distributed() or get_world_size() == 1:
        return fn()
    if _main_work_group is None:
        _main_work_group = dist.new_group(backend="gloo", timeout=MAIN_WORK_TIMEOUT)
    result, error = None, None
    if get_rank() == 0:
        try:
            result = fn().detach().cpu().contiguous()
        except Exception as err:  # re-raised below, after the other ranks have heard of it
            error = err
    meta = [None if result is None else (tuple(result.shape), result.dtype),
            None if error is None else f"{type(error).__name__}: {error}"]
    dist.broadcast_object_list(meta, src=0, group=_main_work_group)
    if error is not None:
        raise error
    if meta[1] is not None:
        raise RuntimeError(f"rank 0 failed in work it does for every rank: {meta[1]}")
    buf = result if result is not None else torch.empty(meta[0][0], dtype=meta[0][1])
    dist.broadcast(buf, src=0, group=_main_work_group)
    return buf

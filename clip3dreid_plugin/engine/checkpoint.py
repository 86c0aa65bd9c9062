"""Checkpoint room of the engine: what a checkpoint holds, writing it safely, and restoring a run from it.

Plain functions that take what they need (a model, its optimizer and scheduler, a folder); the loop
(:class:`~clip3dreid_plugin.engine.base.ClothesAwareEngineMixin`) calls them from torchreid's ``save_model`` and
``resume``. torchreid's own would store rank-1 as a numpy scalar that torch >= 2.6 cannot reload and crash on a
``None`` scheduler; these

* hold plain Python numbers, tolerate a ``None`` optimizer or scheduler, and are written atomically;
* hold every rank's RNG state (``rng_per_rank``, gathered: the one collective here) and the ``GradScaler`` state, so a
  killed run resumes from its last finished epoch with the batches, augmentations and dropout masks it would have
  drawn;
* keep the latest ``keep`` periodic files next to ``model-best.pth.tar``.
"""
from __future__ import annotations

import glob
import logging
import os
import os.path as osp
from typing import Any, Dict, List, Optional, Tuple

import torch

from clip3dreid_plugin import compat
from clip3dreid_plugin.engine.common import CHECKPOINT_RE, checkpoint_path
from clip3dreid_plugin.utils.distributed import all_gather_objects, get_rank, get_world_size
from clip3dreid_plugin.utils.rng import rng_state, set_rng_state

logger = logging.getLogger(__name__)

__all__ = ["latest_checkpoint", "prune_checkpoints", "gather_rng_states", "checkpoint_state", "write_checkpoint",
           "restore_checkpoint", "restore_rng"]


def latest_checkpoint(save_dir: str, name: str = "model") -> Optional[str]:
    """Path of the highest-epoch ``model.pth.tar-N`` under ``save_dir/name``, or None."""
    best, best_ep = None, -1
    for p in glob.glob(osp.join(save_dir, name, "model.pth.tar-*")):
        m = CHECKPOINT_RE.search(p)
        if m and int(m.group(1)) > best_ep:
            best, best_ep = p, int(m.group(1))
    return best


def prune_checkpoints(folder: str, keep: int, epoch: int) -> List[str]:
    """Deletes the ``model.pth.tar-N`` files of ``folder`` with ``N <= epoch`` but the ``keep`` latest of them.

    ``model-best.pth.tar`` is a file of its own and always stays; files of a later epoch (left by an earlier, longer
    run) are not this run's to delete. ``keep`` 0 keeps every file.

    Returns:
        The deleted paths.
    """
    if keep <= 0:
        return []
    found = []
    for p in glob.glob(osp.join(folder, "model.pth.tar-*")):
        m = CHECKPOINT_RE.search(p)
        if m and int(m.group(1)) <= epoch:
            found.append((int(m.group(1)), p))
    gone = [p for _, p in sorted(found)[:-keep]]
    for p in gone:
        os.remove(p)
    return gone


def gather_rng_states(own: Optional[dict] = None) -> Tuple[dict, list]:
    """This rank's RNG state (``own``, default: the current one) and every rank's, in rank order.

    Collective: every rank must call it. Each rank draws its own augmentations and dropout masks, so a faithful
    resume needs them all.
    """
    own = own or rng_state()
    return own, all_gather_objects(own)


def checkpoint_state(model: torch.nn.Module, optimizer=None, scheduler=None, *, epoch: int, rank1: float = 0.0,
                     metrics: Optional[dict] = None, best_metric: float = -float("inf"),
                     evaluations: Optional[dict] = None, rng: Optional[dict] = None,
                     rng_per_rank: Optional[list] = None, scaler=None, extras: Optional[dict] = None
                     ) -> Dict[str, Any]:
    """The dictionary one checkpoint file holds.

    Args:
        model: the plain module (see :func:`~clip3dreid_plugin.engine.common.unwrap`).
        optimizer, scheduler: their states are stored; None is stored as None.
        epoch: epochs done (the epoch a resumed run starts from).
        rank1, metrics: the score and metrics of the evaluation after this epoch, if any.
        best_metric, evaluations: the loop's best score and its last/best evaluation records.
        rng, rng_per_rank: rank 0's RNG state (what checkpoints without ``rng_per_rank`` hold) and every rank's
            (:func:`gather_rng_states`).
        scaler: the fp16 ``GradScaler`` (its state is stored even when disabled, e.g. on CPU).
        extras: entries an engine adds (``checkpoint_extras``).
    """
    return {
        "state_dict": model.state_dict(),
        "epoch": int(epoch),
        "rank1": float(rank1),
        "metrics": metrics or {},
        "best_metric": float(best_metric),
        "evaluations": evaluations if evaluations is not None else {},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng,
        "rng_per_rank": rng_per_rank,
        "scaler": scaler.state_dict() if scaler is not None else None,
        **(extras or {}),
    }


def write_checkpoint(state: Dict[str, Any], save_dir: str, name: str = "model", is_best: bool = False,
                     keep: int = 2) -> str:
    """Writes ``state`` to ``save_dir/<name>/model.pth.tar-<state['epoch']>`` (and ``model-best.pth.tar`` when
    ``is_best``), then prunes the periodic files to the latest ``keep`` (0 keeps all).

    Call it on the main process only. Returns the periodic file's path.
    """
    path = compat.save_checkpoint(state, checkpoint_path(save_dir, name, state["epoch"]))
    if is_best:
        compat.save_checkpoint(state, osp.join(save_dir, name, "model-best.pth.tar"))
    logger.info("saved %s%s", path, " (best)" if is_best else "")
    # Only once the new file is complete: a run killed now still resumes from it.
    for gone in prune_checkpoints(osp.join(save_dir, name), keep, state["epoch"]):
        logger.info("removed %s (runtime.keep_checkpoints %d)", gone, keep)
    return path


def restore_checkpoint(fpath: str, model: torch.nn.Module, optimizer=None, scheduler=None,
                       scaler=None) -> Dict[str, Any]:
    """Loads ``fpath`` into the plain ``model`` and, where both sides have one, ``optimizer``, ``scheduler`` and an
    enabled ``scaler``; gives this rank its RNG state back (:func:`restore_rng`).

    Returns:
        The checkpoint (``epoch``, ``best_metric``, ``evaluations``, ... for the loop).
    """
    ckpt = compat.load_checkpoint(fpath)
    model.load_state_dict(ckpt["state_dict"])
    if ckpt.get("optimizer") is not None and optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scheduler") is not None and scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    restore_rng(ckpt)
    # A disabled scaler (CPU, bf16) saves {} and ignores a load: only an enabled one with a state is restored.
    if scaler is not None and scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    logger.info("resumed from %s (epoch %d)", fpath, ckpt["epoch"])
    return ckpt


def restore_rng(ckpt: Dict[str, Any]) -> None:
    """Gives this rank the RNG state it had when ``ckpt`` was written (its own, not rank 0's)."""
    rank, world = get_rank(), get_world_size()
    per_rank = ckpt.get("rng_per_rank")
    if per_rank and rank < len(per_rank):
        if len(per_rank) != world:
            logger.warning("resuming a %d-process checkpoint with %d processes: the batches differ from an "
                           "uninterrupted run", len(per_rank), world)
        set_rng_state(per_rank[rank])
    elif ckpt.get("rng") is not None and not per_rank and world == 1:
        set_rng_state(ckpt["rng"])  # an older single-process checkpoint
    else:
        # rank 0's state on every rank would give every rank the same augmentations: keep this rank's seed.
        logger.warning("rank %d: no RNG state of its own in the checkpoint; it keeps its seeded state", rank)

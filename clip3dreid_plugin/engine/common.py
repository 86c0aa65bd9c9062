"""What the engine's rooms share, and nothing else: the module under its wrappers and the checkpoint file names.

The checkpoint room (:mod:`~clip3dreid_plugin.engine.checkpoint`), the evaluation room
(:mod:`~clip3dreid_plugin.engine.evaluator`) and the loop (:mod:`~clip3dreid_plugin.engine.base`) import this module;
it imports none of them.
"""
from __future__ import annotations

import os.path as osp
import re

import torch

__all__ = ["unwrap", "CHECKPOINT_RE", "checkpoint_path"]

#: A periodic checkpoint of the run, ``model.pth.tar-<epochs done>`` (``model-best.pth.tar`` is not one).
CHECKPOINT_RE = re.compile(r"model\.pth\.tar-(\d+)$")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def checkpoint_path(save_dir: str, name: str, epoch: int) -> str:
    """``save_dir/<name>/model.pth.tar-<epoch>``: the file :data:`CHECKPOINT_RE` recognises."""
    return osp.join(save_dir, name, f"model.pth.tar-{epoch}")

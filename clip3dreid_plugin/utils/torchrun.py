"""torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``), read in this one place.

It imports nothing but ``os``, so a command can ask who it is (which rank prints, which writes files) before torch
is imported; :mod:`clip3dreid_plugin.utils.distributed` re-exports these with the process-group helpers.
"""
from __future__ import annotations

import os

__all__ = ["launched_rank", "launched_local_rank", "launched_world_size", "is_launched"]


def _read(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def launched_rank() -> int:
    """This process's rank in torchrun's environment (``RANK``; 0 outside torchrun), before any process group
    forms: who writes a run's files from the start."""
    return _read("RANK", 0)


def launched_local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 outside torchrun): the GPU it takes."""
    return _read("LOCAL_RANK", 0)


def launched_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 outside torchrun)."""
    return _read("WORLD_SIZE", 1)


def is_launched() -> bool:
    """True in a torchrun job of more than one process."""
    return launched_world_size() > 1

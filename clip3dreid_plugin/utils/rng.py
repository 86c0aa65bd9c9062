"""Random-number streams and states: seeded independent generators, and the process state a resume restores."""
from __future__ import annotations

import random
from typing import List

import numpy as np
import torch

__all__ = ["spawn_rngs", "random_orthonormal", "rng_state", "set_rng_state"]


def spawn_rngs(seed: int, n: int) -> List[np.random.Generator]:
    """``n`` independent NumPy generators from one seed.

    Each consumer draws from its own stream, so drawing more from one (more cameras, more poses) leaves the
    others' values unchanged.
    """
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(n)]


def random_orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A seeded random matrix with orthonormal columns, drawn from a private generator (the global RNG is untouched).

    Args:
        rows: n; must be at least ``cols``.
        cols: k.
        seed: seed of the Gaussian matrix whose QR factor is returned.

    Returns:
        ``[rows, cols]`` float64 ``Q`` with ``Q^T Q = I``.
    """
    if rows < cols:
        raise ValueError(f"{cols} orthonormal columns need at least {cols} rows, got {rows}")
    g = torch.Generator().manual_seed(int(seed))
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))
    return q


def rng_state() -> dict:
    """This process's Python, NumPy, torch CPU and (once CUDA is in use) current-GPU RNG states, so a resumed run
    draws the same batches, augmentations and dropout masks."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restores a state written by :func:`rng_state`; its CUDA state goes to the current GPU (skipped without one)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])

"""Process set-up: logging to console + file, seeding, device selection."""
from __future__ import annotations

import logging
import os
import os.path as osp
import random
import sys
import warnings

import numpy as np
import torch

from clip3dreid_plugin.config.loader import ConfigError

__all__ = ["setup_logging", "set_seed", "resolve_device", "quiet_torchreid_warnings"]


def quiet_torchreid_warnings() -> None:
    """torchreid warns on every import that its Cython ranker is missing; the plugin has its own."""
    warnings.filterwarnings("ignore", message="Cython evaluation")


def setup_logging(save_dir: str = "", filename: str = "train.log", level: int = logging.INFO,
                  is_main: bool = True, stream=None) -> logging.Logger:
    """Configures the root logger for every command of the plugin: console always, ``save_dir/filename`` on the
    main process.

    Args:
        save_dir: folder of the log file; empty for the console only.
        filename: log file name inside ``save_dir``.
        level: logging level on the main process (other ranks log warnings only).
        is_main: rank 0 of a ``torchrun`` job (or a single process).
        stream: console stream; default stdout. Commands whose stdout carries data (a table, JSON) log to stderr.
    """
    root = logging.getLogger()
    root.setLevel(level if is_main else logging.WARNING)
    for h in list(root.handlers):
        if getattr(h, "_clip3dreid", False):
            root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(stream or sys.stdout)
    console.setFormatter(fmt)
    console._clip3dreid = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if save_dir and is_main:
        os.makedirs(save_dir, exist_ok=True)
        fh = logging.FileHandler(osp.join(save_dir, filename))
        fh.setFormatter(fmt)
        fh._clip3dreid = True  # type: ignore[attr-defined]
        root.addHandler(fh)
    return root


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seeds python, numpy and torch (all devices); ``deterministic`` also asks torch for deterministic kernels,
    otherwise cuDNN may benchmark its kernels (``runtime.deterministic``)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace for reproducible GEMMs; set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        # warn_only: an op without a deterministic kernel warns, naming itself, instead of stopping the run.
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        # A process may seed twice (tests, the quickstart's two runs): undo an earlier deterministic request.
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU raises a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but torch sees no CUDA device; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ConfigError(f"unknown device '{name}' (use auto, cpu or cuda)")
    return torch.device(name)

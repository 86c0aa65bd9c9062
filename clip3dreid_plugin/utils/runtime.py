"""Process set-up: logging to console + file, seeding, device selection."""
from __future__ import annotations

import logging
import os
import os.path as osp
import random
import re
import sys
import warnings
from typing import Optional

import numpy as np
import torch

from clip3dreid_plugin.errors import ConfigError

__all__ = ["DEVICE_HELP", "ensure_console_logging", "setup_logging", "set_seed", "resolve_device", "activate_device",
           "check_amp_support", "has_native_bf16", "set_matmul_tf32", "quiet_torchreid_warnings"]

#: The help of every command's ``--device``; :func:`resolve_device` is what validates the value.
DEVICE_HELP = "auto | cpu | cuda | cuda:N; auto picks cuda when available"


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


def ensure_console_logging() -> None:
    """The console logging of :func:`setup_logging` for a program that configured none, such as a plain Python
    script driving an engine, so that its evaluation tables print as torchreid's own engines print theirs. A root
    logger with any handler (a command of the plugin, ``logging.basicConfig``, pytest) is left as it is."""
    if not logging.getLogger().handlers:
        setup_logging()


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seeds python, numpy and torch (all devices); ``deterministic`` also asks torch for deterministic kernels,
    otherwise cuDNN may benchmark its kernels (``runtime.deterministic``).

    What ``deterministic`` guarantees: cuDNN picks deterministic algorithms and does not benchmark, cuBLAS gets a
    fixed workspace, and every op that has a deterministic implementation uses it. An op without one (on CUDA, e.g.
    the backward of ``AdaptiveAvgPool2d`` in the ResNet trunks) warns, naming itself, and stays nondeterministic: a
    CUDA run then repeats only up to those ops. torch's strict mode would stop the run there instead, which would
    rule the option out for every trunk the plugin trains. On the CPU, the tests repeat runs bit for bit with one
    thread per process (the resume tests compare weights exactly).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace for reproducible GEMMs; set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        # warn_only: an op without a deterministic kernel warns, naming itself, instead of stopping the run (above).
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        # A process may seed twice (tests, the quickstart's two runs): undo an earlier deterministic request.
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels


def resolve_device(name: str, local_rank: Optional[int] = None) -> torch.device:
    """The run's device from ``runtime.device`` / ``--device``, with an explicit index for CUDA.

    A bare ``cuda`` means the current device, which is also what torchreid's ``.cuda()`` calls use; resolving it to
    ``cuda:N`` once lets the engine, the teacher and the body models all name the same GPU.

    Args:
        name: ``auto`` (cuda when available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``.
        local_rank: this process's ``LOCAL_RANK`` under ``torchrun`` (each process takes ``cuda:LOCAL_RANK``);
            None for a single process.

    Returns:
        ``cpu`` or ``cuda:N``.

    Raises:
        ConfigError: an unknown name, CUDA asked for but absent, an index torch does not see, or an explicit index
            under ``torchrun``.
    """
    raw = str(name).strip().lower()
    if raw == "auto":
        raw = "cuda" if torch.cuda.is_available() else "cpu"
    if raw == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", raw)
    if m is None:
        raise ConfigError(f"--device / runtime.device '{name}' is not a device: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device / runtime.device '{name}': torch sees no CUDA device; use --device cpu")
    count = torch.cuda.device_count()
    if local_rank is not None:
        if m.group(1) is not None:
            raise ConfigError(f"--device / runtime.device '{name}' names one GPU, but torchrun gives each process "
                              "cuda:LOCAL_RANK; use --device cuda and CUDA_VISIBLE_DEVICES to choose the GPUs")
        index = local_rank
    else:
        index = torch.cuda.current_device() if m.group(1) is None else int(m.group(1))
    if index >= count:
        raise ConfigError(f"--device / runtime.device '{name}': cuda:{index} does not exist, torch sees {count} CUDA "
                          f"device(s) (cuda:0..cuda:{count - 1}; CUDA_VISIBLE_DEVICES renumbers them)")
    return torch.device("cuda", index)


def activate_device(device: torch.device) -> torch.device:
    """Makes a CUDA ``device`` the current one, so that code calling ``.cuda()`` or naming plain ``"cuda"``
    (torchreid's engines and losses, autocast, ``GradScaler``) uses it too; returns ``device``."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def set_matmul_tf32(enabled: bool, device: torch.device) -> None:
    """``runtime.tf32`` on a CUDA run: float32 matmuls in TF32 (a 10-bit mantissa, about 1e-3 relative error, several
    times faster on Ampere and later) or in strict float32, torch's default. cuDNN's convolutions use TF32 either
    way (torch's default, left alone). A CPU run is not touched.
    """
    if device.type != "cuda":
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9, where mixing it with allow_tf32 is an error
        matmul.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = bool(enabled)


def check_amp_support(amp: str, device: torch.device) -> None:
    """Refuses ``runtime.amp bf16`` on a GPU without native bfloat16 (compute capability below 8.0, before Ampere),
    which would fail or crawl later.

    ``torch.cuda.is_bf16_supported()`` is not the test: it counts emulation and says True on a V100 or a T4.

    Raises:
        ConfigError: bf16 asked for on such a GPU.
    """
    if amp == "bf16" and device.type == "cuda" and not has_native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise ConfigError(f"runtime.amp bf16 (--amp): {torch.cuda.get_device_name(device)} (compute capability "
                          f"{major}.{minor}, below 8.0) has no native bfloat16; use --amp fp16 or --amp none")


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: the CPU, or a GPU of compute capability 8.0 or above."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 0)

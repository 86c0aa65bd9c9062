"""``runtime.amp`` for the plugin's engines: autocast of the forward and, for fp16 on CUDA, a gradient scaler.

torchreid's own engines call the model and the optimizer themselves and train in float32 (they refuse the option,
see ``engine/build.py``); every engine of the plugin that runs its own step takes these two pieces.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from clip3dreid_plugin.config.loader import ConfigError

__all__ = ["AMP_MODES", "autocast", "grad_scaler"]

AMP_MODES = ("none", "bf16", "fp16")


def _check(amp: str) -> None:
    if amp not in AMP_MODES:
        raise ConfigError(f"runtime.amp (--amp) must be one of {list(AMP_MODES)}, got '{amp}'")


def autocast(amp: str, use_gpu: bool):
    """The context a step's forward runs in: ``torch.autocast`` in bfloat16 or float16, or nothing for ``none``."""
    _check(amp)
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type="cuda" if use_gpu else "cpu", dtype=dtype)


def grad_scaler(amp: str, use_gpu: bool) -> torch.amp.GradScaler:
    """The step's ``GradScaler``: enabled for fp16 on CUDA (float16 gradients underflow without it), otherwise a
    disabled one, whose ``scale``/``step``/``update`` are plain passes and whose (empty) state checkpoints hold."""
    _check(amp)
    return torch.amp.GradScaler("cuda", enabled=(amp == "fp16" and use_gpu))

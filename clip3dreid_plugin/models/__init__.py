"""Model factories the plugin adds to torchreid (name -> factory)."""
from __future__ import annotations

from typing import Callable, Dict

MODEL_FACTORIES: Dict[str, Callable] = {}

__all__ = ["MODEL_FACTORIES"]

"""Model factories the plugin adds to torchreid (name -> factory)."""
from __future__ import annotations

from typing import Callable, Dict

from clip3dreid_plugin.models.clip3dreid import clip3dreid

MODEL_FACTORIES: Dict[str, Callable] = {
    "clip3dreid": clip3dreid,
}

__all__ = ["MODEL_FACTORIES"]

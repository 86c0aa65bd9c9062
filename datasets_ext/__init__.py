"""Cloth-changing ReID datasets for torchreid (registered by ``clip3dreid_plugin.register()``)."""
from __future__ import annotations

from typing import Dict, Type

IMAGE_DATASETS: Dict[str, Type] = {}
VIDEO_DATASETS: Dict[str, Type] = {}

__all__ = ["IMAGE_DATASETS", "VIDEO_DATASETS"]

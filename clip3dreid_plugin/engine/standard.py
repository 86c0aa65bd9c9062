"""torchreid's softmax and triplet engines with clothes-aware evaluation and safe checkpoints."""
from __future__ import annotations

import torchreid

from clip3dreid_plugin.engine.base import ClothesAwareEngineMixin

__all__ = ["ClothesSoftmaxEngine", "ClothesTripletEngine", "ClothesVideoSoftmaxEngine"]


class ClothesSoftmaxEngine(ClothesAwareEngineMixin, torchreid.engine.ImageSoftmaxEngine):
    """``torchreid.engine.ImageSoftmaxEngine`` (the ResNet-50 baseline's engine) + plugin evaluation."""


class ClothesTripletEngine(ClothesAwareEngineMixin, torchreid.engine.ImageTripletEngine):
    """``torchreid.engine.ImageTripletEngine`` + plugin evaluation."""


class ClothesVideoSoftmaxEngine(ClothesAwareEngineMixin, torchreid.engine.VideoSoftmaxEngine):
    """``torchreid.engine.VideoSoftmaxEngine`` (frame-level softmax, tracklet-average test) + plugin evaluation."""

"""Model factories the plugin adds to torchreid (name -> factory); ``register()`` adds the study's too
(``clip3dreid_plugin.study.MODEL_FACTORIES``)."""
from __future__ import annotations

from typing import Callable, Dict

from clip3dreid_plugin.models.cal import cal
from clip3dreid_plugin.models.clip3dreid import clip3dreid
from clip3dreid_plugin.models.clip_baselines import clip_linear, clip_zeroshot
from clip3dreid_plugin.models.clip_reid import clip_reid

MODEL_FACTORIES: Dict[str, Callable] = {
    "clip3dreid": clip3dreid,
    "cal": cal,  # CAL (CVPR 2022): ResNet-50 + cosine clothes classifier, trained by CALEngine
    "clip_reid": clip_reid,  # CLIP-ReID (AAAI 2023): CLIP image encoder + identity prompts, by CLIPReIDEngine
    "clip_zeroshot": clip_zeroshot,  # frozen CLIP image feature (evaluation only)
    "clip_linear": clip_linear,  # frozen CLIP + trainable FC classifier
}

#: Models whose ``pretrained=True`` loads weights their checkpoints never hold (the frozen CLIP), so a checkpoint
#: does not replace them; every other model's checkpoint overwrites its ImageNet weights.
PRETRAINED_OUTSIDE_CHECKPOINT = frozenset({"clip_zeroshot", "clip_linear"})

__all__ = ["MODEL_FACTORIES", "PRETRAINED_OUTSIDE_CHECKPOINT"]

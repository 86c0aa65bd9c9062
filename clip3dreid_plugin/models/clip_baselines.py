"""Teacher-only baselines of the paper's comparison: "Teacher image encoder" and "Linear".

* ``clip_zeroshot``: the frozen CLIP image feature used directly for retrieval. It has no
  trainable parameter, so it is evaluation-only (``test.evaluate True``); calling it in train mode
  raises a clear error.
* ``clip_linear``: the frozen CLIP image encoder plus a trainable FC classifier (``d -> K``)
  trained with the softmax loss. Train mode returns logits (``(logits, feature)`` for the triplet
  loss); eval mode returns the teacher feature ``[B, d]``, i.e. the FC input.

Both take the student's batches (``cfg.data.norm_mean/std``, any size) and let the teacher apply
CLIP's preprocessing (see :class:`~clip3dreid_plugin.teacher.clip_teacher.CLIPTeacher`). The
teacher is not part of the module tree, so checkpoints hold only the FC layer.

Where the teacher comes from: ``cfg.teacher`` (name, weights, prompts, resize mode) and ``cfg.data.norm_*``. The
plugin's ``build_model`` passes ``cfg``; a plain ``torchreid.models.build_model`` call gets the defaults of
``add_clip3dreid_config`` (``ViT-L-14-quickgelu``, no weights: ``pretrained=True`` then fails with a message,
``pretrained=False`` builds a random CLIP with a loud warning).
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from clip3dreid_plugin.config.defaults import get_cfg
from clip3dreid_plugin.models.imagenet import PretrainedWeightsError
from clip3dreid_plugin.teacher.clip_teacher import CLIPTeacher
from clip3dreid_plugin.teacher.source import build_teacher

logger = logging.getLogger(__name__)

__all__ = ["CLIPZeroShot", "CLIPLinear", "clip_zeroshot", "clip_linear"]


def _teacher_from(cfg, pretrained: bool, model: str) -> CLIPTeacher:
    if cfg is None:
        cfg = get_cfg()
    if pretrained and not cfg.teacher.pretrained:
        # torchreid's rule for pretrained=True: the weights or a clear error, never a silently random network.
        raise PretrainedWeightsError(
            f"model.pretrained True: {model} needs CLIP weights for '{cfg.teacher.name}', but teacher.pretrained is "
            "empty; set teacher.pretrained to a local checkpoint (or an open_clip hub tag when online), or set "
            "model.pretrained False for a randomly initialised CLIP")
    # Built on the CPU like torchreid's models; the engine's .cuda()/.to() moves it (CLIPTeacher._apply).
    return build_teacher(cfg, device="cpu")


class CLIPZeroShot(nn.Module):
    """Frozen CLIP image encoder as a ReID feature extractor (evaluation only).

    Args:
        teacher: the frozen :class:`CLIPTeacher`.
    """

    def __init__(self, teacher: CLIPTeacher):
        super().__init__()
        self.teacher = teacher  # registered for .to()/.train() propagation; contributes no state
        self.feature_dim = teacher.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, H, W]`` (student-normalised) -> L2-normalised teacher feature ``[B, d]``.

        Raises:
            RuntimeError: in train mode; the model has nothing to train.
        """
        if self.training:
            raise RuntimeError("clip_zeroshot has no trainable parameters and is evaluation-only: "
                               "run it with test.evaluate True (or use clip_linear to train a classifier)")
        return self.teacher.encode_images(x)


class CLIPLinear(nn.Module):
    """Frozen CLIP image encoder + trainable linear classifier (the paper's "Linear" baseline).

    Args:
        teacher: the frozen :class:`CLIPTeacher`.
        num_classes: training identities K.
        loss: torchreid loss name: ``softmax`` -> logits, ``triplet`` -> ``(logits, feature)``.
    """

    def __init__(self, teacher: CLIPTeacher, num_classes: int, loss: str = "softmax"):
        super().__init__()
        if loss not in ("softmax", "triplet"):
            raise ValueError(f"clip_linear supports loss softmax or triplet, got '{loss}'")
        self.loss = loss
        self.teacher = teacher
        self.feature_dim = teacher.embed_dim
        self.classifier = nn.Linear(teacher.embed_dim, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor):
        """Eval: teacher feature ``[B, d]``; train: logits ``[B, K]`` (or ``(logits, feature)``)."""
        f = self.teacher.encode_images(x)  # no grad: the encoder is frozen
        if not self.training:
            return f
        logits = self.classifier(f)
        if self.loss == "triplet":
            return logits, f
        return logits


def clip_zeroshot(num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True,
                  cfg=None, **kwargs) -> CLIPZeroShot:
    """torchreid factory: zero-shot CLIP retrieval (evaluation only).

    The CLIP weights come from ``cfg.teacher.pretrained``. ``pretrained=True``
    requires them (a :class:`~clip3dreid_plugin.models.imagenet.PretrainedWeightsError` otherwise);
    ``pretrained=False`` allows an empty setting, i.e. a random CLIP (tests, benchmarks).
    """
    return CLIPZeroShot(_teacher_from(cfg, pretrained, "clip_zeroshot"))


def clip_linear(num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True,
                cfg=None, **kwargs) -> CLIPLinear:
    """torchreid factory: frozen CLIP + trainable FC classifier (see :class:`CLIPLinear`).

    ``pretrained`` works as for :func:`clip_zeroshot`: ``True`` requires CLIP weights in ``teacher.pretrained``.
    """
    return CLIPLinear(_teacher_from(cfg, pretrained, "clip_linear"), num_classes, loss=loss)

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

Where the teacher comes from: torchreid's factories get only ``(num_classes, loss, pretrained,
use_gpu)``. The plugin's ``build_model`` also passes ``cfg`` to factories that accept it; then
``cfg.teacher.*`` (name, pretrained, resize_mode) and ``cfg.data.norm_*`` are used. Without
``cfg`` (plain ``torchreid.models.build_model``) the module-level settings are used, which the
train script sets with :func:`configure_clip_baselines`; they default to the config defaults
(``ViT-L-14-quickgelu``, no weights: ``pretrained=True`` then fails with a message, ``pretrained=False`` builds
a random CLIP with a loud warning).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from clip3dreid_plugin.models.imagenet import PretrainedWeightsError
from clip3dreid_plugin.teacher.clip_teacher import DEFAULT_TEACHER, IMAGENET_MEAN, IMAGENET_STD, CLIPTeacher

logger = logging.getLogger(__name__)

__all__ = ["CLIPZeroShot", "CLIPLinear", "clip_zeroshot", "clip_linear", "configure_clip_baselines",
           "get_clip_baseline_settings"]

_DEFAULTS: Dict[str, Any] = {
    "model_name": DEFAULT_TEACHER,
    "pretrained": None,
    "resize_mode": "pad",
    "norm_mean": IMAGENET_MEAN,
    "norm_std": IMAGENET_STD,
}
_SETTINGS: Dict[str, Any] = dict(_DEFAULTS)


def configure_clip_baselines(model_name: str = DEFAULT_TEACHER, pretrained: Optional[str] = None,
                             resize_mode: str = "pad", norm_mean: Sequence[float] = IMAGENET_MEAN,
                             norm_std: Sequence[float] = IMAGENET_STD) -> None:
    """Sets the teacher used by ``clip_zeroshot``/``clip_linear`` when their factory gets no ``cfg``.

    Call it before ``torchreid.models.build_model`` (the train script does, from ``cfg.teacher``).

    Args:
        model_name: open_clip model name (``cfg.teacher.name``).
        pretrained: local weights file or tag (``cfg.teacher.pretrained``); empty = random init.
        resize_mode: ``pad`` | ``squash`` | ``crop`` (``cfg.teacher.resize_mode``).
        norm_mean: the student pipeline's normalisation mean (``cfg.data.norm_mean``).
        norm_std: the student pipeline's normalisation std (``cfg.data.norm_std``).
    """
    _SETTINGS.update(model_name=model_name, pretrained=pretrained or None, resize_mode=resize_mode,
                     norm_mean=tuple(norm_mean), norm_std=tuple(norm_std))


def get_clip_baseline_settings() -> Dict[str, Any]:
    """A copy of the current module-level settings."""
    return dict(_SETTINGS)


def _teacher_from(cfg, use_gpu: bool, pretrained: bool, model: str) -> CLIPTeacher:
    if cfg is not None:
        s = dict(model_name=cfg.teacher.name, pretrained=cfg.teacher.pretrained or None,
                 resize_mode=cfg.teacher.resize_mode, norm_mean=tuple(cfg.data.norm_mean),
                 norm_std=tuple(cfg.data.norm_std))
    else:
        s = _SETTINGS
    if pretrained and not s["pretrained"]:
        # torchreid's rule for pretrained=True: the weights or a clear error, never a silently random network.
        raise PretrainedWeightsError(
            f"model.pretrained True: {model} needs CLIP weights for '{s['model_name']}', but teacher.pretrained is "
            "empty; set teacher.pretrained to a local checkpoint (or an open_clip hub tag when online), or set "
            "model.pretrained False for a randomly initialised CLIP")
    # Built on the CPU like torchreid's models; the engine's .cuda()/.to() moves it (CLIPTeacher._apply).
    return CLIPTeacher(s["model_name"], s["pretrained"], device="cpu", resize_mode=s["resize_mode"],
                       student_mean=s["norm_mean"], student_std=s["norm_std"])


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

    The CLIP weights come from ``cfg.teacher.pretrained`` or :func:`configure_clip_baselines`. ``pretrained=True``
    requires them (a :class:`~clip3dreid_plugin.models.imagenet.PretrainedWeightsError` otherwise);
    ``pretrained=False`` allows an empty setting, i.e. a random CLIP (tests, benchmarks).
    """
    return CLIPZeroShot(_teacher_from(cfg, use_gpu, pretrained, "clip_zeroshot"))


def clip_linear(num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True,
                cfg=None, **kwargs) -> CLIPLinear:
    """torchreid factory: frozen CLIP + trainable FC classifier (see :class:`CLIPLinear`).

    ``pretrained`` works as for :func:`clip_zeroshot`: ``True`` requires CLIP weights in ``teacher.pretrained``.
    """
    return CLIPLinear(_teacher_from(cfg, use_gpu, pretrained, "clip_linear"), num_classes, loss=loss)

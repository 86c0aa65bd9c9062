"""The frozen CLIP teacher of CLIP3DReID (image encoder E_I, text encoder E_L; paper Sec. 3.1-3.2).

Checkpoint isolation
--------------------
The teacher never enters a checkpoint, an optimizer or a parameter count. The open_clip model is
kept in a plain attribute (``object.__setattr__``), outside ``nn.Module``'s registry, and every
tensor the teacher registers itself is a *non-persistent* buffer. So a student holding the teacher
as an attribute gets no teacher keys in ``state_dict()``, ``load_state_dict(strict=True)`` does not
expect any, and ``parameters()`` does not list CLIP's weights. ``_save_to_state_dict`` is also a
no-op as a second line of defence. ``.to()/.cuda()`` on the parent still move CLIP (``_apply`` is
forwarded to the hidden model), and ``.train()`` never leaves eval mode.

Preprocessing
-------------
``encode_images`` takes batches as the student sees them (ImageNet mean/std, e.g. 384x192),
un-normalises them, brings them to CLIP's square input and applies CLIP's mean/std. The default
``resize_mode='pad'`` scales the longer side to CLIP's size and pads the shorter side with black
(open_clip's ``resize_mode='longest'``): body proportions - what the descriptors are about - are
kept, and head and feet are not cropped away as CLIP's default resize-shortest + centre-crop would
do on a 2:1 pedestrian crop. ``'squash'`` (anisotropic resize) and ``'crop'`` (CLIP's default) are
available for ablations. ``encode_pil`` (used for the cache) runs open_clip's own preprocessing
built with the same resize mode, so cached and online features agree up to interpolation details.

Weights
-------
Resolved and loaded by :mod:`clip3dreid_plugin.teacher.weights` (local file, hub tag, or random).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.teacher.descriptors import DESCRIPTOR_PAIRS, build_prompts, resolve_template
from clip3dreid_plugin.utils.runtime import has_native_bf16
from clip3dreid_plugin.teacher.weights import (
    WEIGHTS_HINT,
    TeacherLoadError,
    cached_file_sha256,
    check_model_name,
    load_local_weights,
    looks_like_path,
    quiet_random_init_warning,
    resolve_pretrained,
    weights_hint,
    weights_label_for,
)

logger = logging.getLogger(__name__)

#: Seed of a teacher's random initialisation (the only weights of a teacher without ``teacher.pretrained``).
RANDOM_INIT_SEED = 0

__all__ = [
    "CLIPTeacher",
    "TeacherLoadError",
    "DEFAULT_TEACHER",
    "RESIZE_MODES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "descriptor_labels",
    "gather_text_features",
    "TEACHER_PRECISIONS",
    "resolve_teacher_precision",
    "create_open_clip",
]

DEFAULT_TEACHER = "ViT-L-14-quickgelu"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: teacher.resize_mode -> open_clip's ``image_resize_mode``.
RESIZE_MODES: Dict[str, str] = {"pad": "longest", "squash": "squash", "crop": "shortest"}
#: teacher.precision choices; a resolved precision (all but auto) is also the dtype of the images fed to CLIP.
TEACHER_PRECISIONS: Dict[str, torch.dtype] = {"auto": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16,
                                             "fp16": torch.float16}
# --------------------------------------------------------------------------- helpers


def create_open_clip(model_name: str, pretrained: Optional[str], name_key: str = "teacher.name",
                     weights_key: str = "teacher.pretrained", **create_kwargs) -> Tuple[nn.Module, object, str,
                                                                                      Optional[str]]:
    """An open_clip model on the CPU from a name and ``pretrained`` (a local file, a hub tag, or empty: random).

    The one place the plugin builds an open_clip model (the teacher and the ``clip_reid`` baseline): the name is
    checked, the weights resolved by :func:`~clip3dreid_plugin.teacher.weights.resolve_pretrained` (a tag must be in
    the local cache or reachable within seconds), a random model is a seeded draw in a forked RNG (the same network
    in every process, and the caller's RNG untouched), and every failure is one :class:`TeacherLoadError` naming
    ``name_key`` / ``weights_key``.

    Args:
        model_name: an open_clip model name (also one added with ``open_clip.add_model_config``).
        pretrained: a weights file, an open_clip tag, or ``None``/``''``.
        name_key, weights_key: the options the messages name.
        **create_kwargs: passed to ``open_clip.create_model_and_transforms`` (``precision``, ``image_resize_mode``,
            ...); a tag's own mean/std/interpolation are added.

    Returns:
        ``(model, preprocess, kind, local_file)``: the model in train mode with gradients on, its eval
        preprocessing, ``none`` | ``file`` | ``tag``, and the weights file read (None when none was).
    """
    import open_clip

    check_model_name(model_name, name_key, weights_key)
    kind, source, tag_cfg = resolve_pretrained(model_name, pretrained or None, weights_key)
    kwargs = dict(device="cpu", **create_kwargs)
    if tag_cfg:
        # A tag can carry its own normalisation/interpolation (e.g. non-OpenAI models).
        for key, arg in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation")):
            if tag_cfg.get(key):
                kwargs[arg] = tag_cfg[key]
    try:
        if kind == "tag" and source is None:
            # Not cached locally and the probe found the network: let open_clip download.
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, **kwargs)
        else:
            # A seeded draw in a forked RNG: a random model is the same network in every process (so a teacher cache
            # is reused on reruns), and building one leaves the caller's RNG, hence a student's seeded
            # initialisation, untouched.
            with quiet_random_init_warning() if source else contextlib.nullcontext(), \
                    torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None, **kwargs)
    except TeacherLoadError:
        raise
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        raise TeacherLoadError(f"open_clip could not build '{model_name}' ({name_key}, "
                               f"{weights_key}={pretrained!r}): {err}. {weights_hint(weights_key)}") from err
    if source is not None:
        load_local_weights(model, source, model_name, name_key, weights_key)
    if kind == "none":
        logger.warning("open_clip model '%s' has RANDOM weights (%s is empty): fine for tests and benchmarks, "
                       "meaningless otherwise. %s", model_name, weights_key, weights_hint(weights_key))
    if tag_cfg.get("quick_gelu") and "quickgelu" not in model_name.lower():
        # open_clip only warns about this deep in its logs; the features silently drift.
        logger.warning("weights tag '%s' was trained with QuickGELU but model '%s' uses GELU; use '%s-quickgelu'",
                       pretrained, model_name, model_name)
    return model, preprocess, kind, source


def resolve_teacher_precision(precision: str, device: Union[str, torch.device]) -> str:
    """The teacher's precision on ``device`` (``teacher.precision``).

    The teacher is frozen and computes no gradient, so half precision costs it nothing it needs; on a GPU it makes
    ViT-L/14 several times faster than float32. ``auto`` keeps the CPU in float32 (the plugin's tested reference, and
    where half precision is slow) and picks bfloat16 on a GPU that has it natively, float16 on an older one. The
    resolved name goes into every teacher-cache fingerprint.

    Raises:
        ConfigError: an unknown name, or bf16 on a GPU without native bfloat16.
    """
    if precision not in TEACHER_PRECISIONS:
        raise ConfigError(f"teacher.precision must be one of {list(TEACHER_PRECISIONS)}, got '{precision}'")
    device = torch.device(device)
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if has_native_bf16(device) else "fp16"
    if precision == "bf16" and not has_native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise ConfigError(f"teacher.precision bf16: {torch.cuda.get_device_name(device)} (compute capability "
                          f"{major}.{minor}, below 8.0) has no native bfloat16; use fp16 or auto")
    return precision


def descriptor_labels(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Eq. 2 of the paper: per pair, 0 if phrase 1 is closer (cosine) to the image, else 1.

    Ties go to phrase 2, as in Eq. 2 (``h_m = h^1 if score^1 > score^2 else h^2``).

    Args:
        image_features: ``[B, d]`` image features (normalised here, any scale accepted).
        text_features: ``[M, 2, d]`` text features of the prompt pairs.

    Returns:
        LongTensor ``[B, M]`` with values in {0, 1}.
    """
    g = F.normalize(image_features.float(), dim=-1)
    t = F.normalize(text_features.to(device=g.device, dtype=torch.float32), dim=-1)
    sims = torch.einsum("bd,mkd->bmk", g, t)
    return (~(sims[..., 0] > sims[..., 1])).long()


def gather_text_features(text_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Picks the chosen phrase's text feature for every (image, pair): the OT target ``H``.

    Args:
        text_features: ``[M, 2, d]``.
        labels: ``[B, M]`` integer labels in {0, 1}.

    Returns:
        ``[B, M, d]`` on ``labels``' device, in ``text_features``' dtype.
    """
    if labels.dim() != 2 or labels.size(1) != text_features.size(0):
        raise ValueError(f"labels must be [B, {text_features.size(0)}], got {tuple(labels.shape)}")
    t = text_features.to(labels.device)
    idx = labels.long()
    pair = torch.arange(t.size(0), device=labels.device).expand_as(idx)
    return t[pair, idx]


# --------------------------------------------------------------------------- teacher


class CLIPTeacher(nn.Module):
    """Frozen open_clip model that labels images with body-shape descriptors.

    Args:
        model_name: open_clip model name (``open_clip.list_models()``), e.g. ``ViT-L-14-quickgelu``.
        pretrained: ``None``/``''`` (random init: tests/benchmarks only), a local weights file, or an
            open_clip tag such as ``openai`` (needs the network unless already in the local cache).
        device: where CLIP runs (``cpu``, ``cuda``, ``cuda:1``, ``auto``).
        pairs: ``M`` (first, second) phrase pairs; ``None`` = the paper's 16.
        template: prompt template with ``{}``; ``None``/``''`` = the paper's.
        resize_mode: ``pad`` (default), ``squash`` or ``crop``; see the module docstring.
        student_mean: per-channel mean the student's batches are normalised with.
        student_std: per-channel std the student's batches are normalised with.
        precision: ``fp32``, ``bf16``, ``fp16`` (open_clip's mixed precision: half-precision weights and activations,
            float32 layer norms) or ``auto`` (see :func:`resolve_teacher_precision`); features come out in float32
            and labels are computed in float32.

    Raises:
        TeacherLoadError: unknown model name, missing/incompatible weights file, unknown tag, or a
            tag that must be downloaded while the hub is unreachable (fails within seconds).
        ValueError: bad pairs/template/resize mode.
    """

    def __init__(self, model_name: str = DEFAULT_TEACHER, pretrained: Optional[str] = None,
                 device: Union[str, torch.device] = "cpu", pairs: Optional[Sequence[Tuple[str, str]]] = None,
                 template: Optional[str] = None, resize_mode: str = "pad",
                 student_mean: Sequence[float] = IMAGENET_MEAN, student_std: Sequence[float] = IMAGENET_STD,
                 precision: str = "fp32"):
        super().__init__()
        if pretrained and looks_like_path(pretrained) and not osp.isfile(osp.expanduser(pretrained)):
            # Checked before importing open_clip (seconds on a busy machine) so the error is immediate.
            raise TeacherLoadError(f"teacher weights file not found: '{pretrained}' (teacher.pretrained). "
                                   + WEIGHTS_HINT)
        import open_clip  # seconds to import (see above): only building a teacher pays for it

        if resize_mode not in RESIZE_MODES:
            raise ConfigError(f"teacher.resize_mode must be one of {sorted(RESIZE_MODES)}, got '{resize_mode}'")
        if isinstance(device, str) and device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        precision = resolve_teacher_precision(precision, device)
        self.model_name = model_name
        self.pretrained = pretrained or None
        self.resize_mode = resize_mode
        self.precision = precision
        self._input_dtype = TEACHER_PRECISIONS[precision]
        self.pairs: Tuple[Tuple[str, str], ...] = tuple(tuple(p) for p in (pairs or DESCRIPTOR_PAIRS))
        self.template = resolve_template(template)
        self.prompts: List[str] = build_prompts(self.pairs, self.template)
        self.open_clip_version = open_clip.__version__

        model, preprocess, kind, source = create_open_clip(
            model_name, self.pretrained, precision=precision, image_resize_mode=RESIZE_MODES[resize_mode])
        self.weights_kind = kind  # none | file | tag
        self.weights_file: Optional[str] = source if kind == "file" else None
        model.eval()
        model.requires_grad_(False)
        model.to(device)
        # Kept outside the module registry so it is never checkpointed, optimised or counted.
        object.__setattr__(self, "_clip", model)
        object.__setattr__(self, "preprocess", preprocess)
        object.__setattr__(self, "tokenizer", open_clip.get_tokenizer(model_name))

        size = model.visual.image_size
        self.image_size: Tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        self.interpolation = pp.get("interpolation", "bicubic")
        clip_mean = pp.get("mean", (0.48145466, 0.4578275, 0.40821073))
        clip_std = pp.get("std", (0.26862954, 0.26130258, 0.27577711))
        # Non-persistent buffers: they follow .to() but never appear in a state_dict.
        self.register_buffer("clip_mean", torch.tensor(clip_mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("clip_std", torch.tensor(clip_std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("student_mean", torch.tensor(student_mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("student_std", torch.tensor(student_std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.to(device)
        self.register_buffer("text_features", self._compute_text_features(), persistent=False)
        self._weights_id: Optional[str] = None
        super().train(False)

    # ------------------------------------------------------------------ construction helpers

    @torch.no_grad()
    def _compute_text_features(self) -> torch.Tensor:
        tokens = self.tokenizer(self.prompts).to(self.device)
        feats = self._clip.encode_text(tokens).float()
        feats = F.normalize(feats, dim=-1)
        return feats.view(len(self.pairs), 2, -1)

    # ------------------------------------------------------------------ nn.Module behaviour

    def train(self, mode: bool = True) -> "CLIPTeacher":
        """Ignores ``mode``: the teacher is frozen and always in eval mode."""
        super().train(False)
        self._clip.eval()
        return self

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # .to()/.cuda()/.half() on a parent reach the hidden CLIP model too.
        super()._apply(fn, recurse)
        self._clip._apply(fn)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: D401
        # Nothing of the teacher belongs in a checkpoint (second guard; all buffers are non-persistent).
        return

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`encode_images`."""
        return self.encode_images(x)

    # ------------------------------------------------------------------ properties

    @property
    def clip_model(self) -> nn.Module:
        """The wrapped open_clip model (frozen, eval)."""
        return self._clip

    @property
    def device(self) -> torch.device:
        return self.clip_mean.device

    @property
    def embed_dim(self) -> int:
        """d, width of the image and text features."""
        return int(self.text_features.size(-1))

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    def weights_id(self) -> str:
        """Identity of the weights for cache fingerprints.

        ``sha256:<hex>`` of the weights file (streamed), ``tag:<tag>`` for a hub tag, or
        ``random:<sha256 of the parameters>`` for a randomly initialised teacher.
        """
        if self._weights_id is None:
            if self.weights_kind == "file":
                self._weights_id = "sha256:" + cached_file_sha256(self.weights_file)
            elif self.weights_kind == "tag":
                self._weights_id = f"tag:{self.pretrained or self.model_name}"
            else:
                h = hashlib.sha256()
                for k, v in self._clip.state_dict().items():
                    h.update(k.encode())
                    h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
                self._weights_id = "random:" + h.hexdigest()
        return self._weights_id

    def weights_label(self) -> str:
        """Short name of the weights for file names: file stem, tag, or ``random``."""
        return weights_label_for(self.pretrained, self.model_name)

    # ------------------------------------------------------------------ encoders

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        # open_clip and torchvision take seconds to import; a cached teacher never resizes an image
        import torchvision.transforms.functional as TF
        from open_clip.transform import center_crop_or_pad
        from torchvision.transforms import InterpolationMode

        interp = InterpolationMode.BILINEAR if self.interpolation == "bilinear" else InterpolationMode.BICUBIC
        th, tw = self.image_size
        h, w = x.shape[-2:]
        if (h, w) == (th, tw):
            return x
        if self.resize_mode == "squash":
            return TF.resize(x, [th, tw], interpolation=interp, antialias=True)
        # Same size rule as open_clip's ResizeKeepRatio (longest=1 for pad, 0 for crop).
        ratio = max(h / th, w / tw) if self.resize_mode == "pad" else min(h / th, w / tw)
        size = [max(1, round(h / ratio)), max(1, round(w / ratio))]
        x = TF.resize(x, size, interpolation=interp, antialias=True)
        return center_crop_or_pad(x, [th, tw], fill=0)

    @torch.no_grad()
    def encode_clip_input(self, x: torch.Tensor) -> torch.Tensor:
        """Encodes images already in CLIP's input format.

        Args:
            x: ``[B, 3, S, S]`` normalised with CLIP's mean/std at CLIP's input size.

        Returns:
            L2-normalised float32 features ``[B, d]`` on the teacher's device.
        """
        feats = self._clip.encode_image(x.to(self.device, dtype=self._input_dtype, non_blocking=True))
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """Encodes a student batch with CLIP's own preprocessing.

        Args:
            x: ``[B, 3, H, W]`` images normalised with ``student_mean``/``student_std`` at the student's
                size (e.g. 384x192).

        Returns:
            L2-normalised float32 features ``[B, d]`` on the teacher's device.
        """
        if x.dim() != 4 or x.size(1) != 3:
            raise ValueError(f"encode_images expects [B, 3, H, W], got {tuple(x.shape)}")
        x = x.to(self.device, dtype=torch.float32, non_blocking=True)
        x = x * self.student_std + self.student_mean
        # Resize in pixel space; bicubic overshoot is clipped like PIL's uint8 output.
        x = self._resize(x).clamp_(0.0, 1.0)
        x = (x - self.clip_mean) / self.clip_std
        return self.encode_clip_input(x)

    def preprocess_pil(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """open_clip's inference preprocessing of PIL images -> ``[B, 3, S, S]`` (CPU)."""
        return torch.stack([self.preprocess(im) for im in images])

    @torch.no_grad()
    def encode_pil(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Encodes PIL images with open_clip's preprocessing (same resize mode as ``encode_images``).

        Returns:
            L2-normalised float32 features ``[B, d]``.
        """
        return self.encode_clip_input(self.preprocess_pil(images))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text features ``[T, d]`` of arbitrary prompts."""
        feats = self._clip.encode_text(self.tokenizer(list(texts)).to(self.device)).float()
        return F.normalize(feats, dim=-1)

    # ------------------------------------------------------------------ descriptors

    def descriptor_text_features(self) -> torch.Tensor:
        """``[M, 2, d]`` L2-normalised text features of the prompt pairs (computed once, cached)."""
        return self.text_features

    def label(self, image_features: torch.Tensor) -> torch.Tensor:
        """Descriptor labels (Eq. 2): ``[B, d]`` features -> LongTensor ``[B, M]``, 0 = phrase 1, 1 = phrase 2."""
        return descriptor_labels(image_features, self.text_features)

    def gather_text_features(self, labels: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` labels -> ``[B, M, d]`` text features of the chosen phrases (OT target H)."""
        return gather_text_features(self.text_features, labels)

    def extra_repr(self) -> str:
        return (f"model={self.model_name}, weights={self.weights_label()}, d={self.embed_dim}, "
                f"pairs={self.num_pairs}, resize={self.resize_mode}, input={self.image_size}")

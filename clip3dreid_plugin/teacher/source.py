"""Teacher sources for the training engine: cached (default) or online CLIP.

The engine needs two calls per step::

    g, labels = source.lookup(img_paths, imgs)   # [B, d] float32, [B, M] int64, on imgs' device
    H = source.gather_text(labels)                # [B, M, d] on labels' device

``CacheTeacherSource`` answers from :class:`~clip3dreid_plugin.teacher.cache.TeacherCache` files
(no CLIP model in memory, ``imgs`` ignored); ``OnlineTeacherSource`` runs the frozen
:class:`~clip3dreid_plugin.teacher.clip_teacher.CLIPTeacher` on the augmented batch itself.
Neither is an ``nn.Module``, so nothing of the teacher reaches the student's checkpoint.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence, Tuple

import torch
from yacs.config import CfgNode as CN

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.data.frames import item_image_paths
from clip3dreid_plugin.teacher.cache import TeacherCache, cache_file_path
from clip3dreid_plugin.teacher.clip_teacher import CLIPTeacher
from clip3dreid_plugin.teacher.weights import weights_id_for, weights_label_for
from clip3dreid_plugin.teacher.descriptors import parse_pairs, resolve_template

logger = logging.getLogger(__name__)

__all__ = ["CacheTeacherSource", "OnlineTeacherSource", "as_teacher_source", "build_teacher", "build_teacher_source"]


class CacheTeacherSource:
    """Teacher outputs read from a cache.

    Args:
        cache: a (possibly concatenated) :class:`TeacherCache`.
    """

    def __init__(self, cache: TeacherCache):
        self.cache = cache

    @property
    def embed_dim(self) -> int:
        return self.cache.embed_dim

    def text_features(self) -> torch.Tensor:
        """``[M, 2, d]`` prompt text features."""
        return self.cache.text_features

    def lookup(self, img_paths: Sequence[str],
               imgs: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(g [B, d], labels [B, M])`` of the batch's images, on ``imgs``' device (the CPU without ``imgs``),
        where the cache keeps its table (see :meth:`TeacherCache.lookup`); only ``imgs``' device is read."""
        return self.cache.lookup(img_paths, None if imgs is None else imgs.device)

    def gather_text(self, labels: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` labels -> ``[B, M, d]`` text features."""
        return self.cache.gather_text_features(labels)

    def text_record(self) -> dict:
        """What a checkpoint keeps of this teacher: its phrase features ``[M, 2, d]``, pairs and where they came
        from (see :meth:`CLIP3DReIDEngine.checkpoint_extras`)."""
        fp = self.cache.fingerprint
        return {"features": self.cache.text_features.float().cpu(), "pairs": [list(p) for p in self.cache.pairs],
                "teacher": f"teacher cache {self.cache.source} ({fp.get('teacher')}, weights {fp.get('weights')})"}


class OnlineTeacherSource:
    """Runs the frozen CLIP teacher on every training batch.

    Args:
        teacher: the :class:`CLIPTeacher` (on the training device).
    """

    def __init__(self, teacher: CLIPTeacher):
        self.teacher = teacher

    @property
    def embed_dim(self) -> int:
        return self.teacher.embed_dim

    def text_features(self) -> torch.Tensor:
        return self.teacher.descriptor_text_features()

    def lookup(self, img_paths: Sequence[str], imgs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encodes the student batch ``imgs [B, 3, H, W]`` -> ``(g [B, d], labels [B, M])``."""
        g = self.teacher.encode_images(imgs)
        return g, self.teacher.label(g)

    def gather_text(self, labels: torch.Tensor) -> torch.Tensor:
        return self.teacher.gather_text_features(labels)

    def text_record(self) -> dict:
        """Phrase features ``[M, 2, d]``, pairs and the teacher's name (see :meth:`CacheTeacherSource.text_record`)."""
        return {"features": self.teacher.descriptor_text_features().float().cpu(),
                "pairs": [list(p) for p in self.teacher.pairs], "teacher": f"CLIP ({self.teacher.extra_repr()})"}


def build_teacher(cfg: CN, device="cpu") -> CLIPTeacher:
    """The :class:`CLIPTeacher` described by ``cfg.teacher`` (and the student's ``cfg.data.norm_*``), in
    ``teacher.precision`` as resolved for ``device`` (``auto``: float32 on the CPU, half precision on a GPU)."""
    t = cfg.teacher
    return CLIPTeacher(t.name, t.pretrained or None, device=device, pairs=parse_pairs(t.descriptor_pairs),
                       template=resolve_template(t.prompt_template), resize_mode=t.resize_mode,
                       student_mean=tuple(cfg.data.norm_mean), student_std=tuple(cfg.data.norm_std),
                       precision=t.precision)


def build_teacher_source(cfg: CN, datasets: Sequence[Tuple[str, Sequence[str]]], device="cpu"):
    """Source for ``cfg.teacher.mode``: ``cache`` | ``online`` | ``ideal`` (synthcc only, see
    :mod:`clip3dreid_plugin.teacher.ideal`) | ``none`` (returns None).

    Args:
        cfg: full config.
        datasets: ``(name, training image paths)`` of every source dataset; in cache mode each must
            have a cache built by ``clip3dreid-label`` holding all its images.
        device: device of the online teacher.

    Raises:
        FileNotFoundError: a cache file is missing (the message says how to build it).
        TeacherCacheMismatchError: a cache belongs to another dataset/teacher/descriptor set.
    """
    mode = cfg.teacher.mode
    if mode == "none":
        return None
    if mode == "online":
        return OnlineTeacherSource(build_teacher(cfg, device))
    if mode == "ideal":
        from clip3dreid_plugin.teacher.ideal import IdealTeacherSource  # a study instrument, built only on request

        others = [name for name, _ in datasets if name != "synthcc"]
        if others:
            raise ConfigError(f"teacher.mode ideal knows body shape for synthcc only, not for {others}; "
                              "use teacher.mode cache or online")
        source = IdealTeacherSource.from_synthcc(cfg.data.root, cfg.clip3dreid.teacher_dim, cfg.teacher.ideal_seed)
        logger.warning("teacher.mode ideal: an offline stand-in that knows synthcc's true shapes (orthonormal phrase "
                       "features, ground-truth labels, g = projected betas), not CLIP")
        return source
    if mode != "cache":
        raise ConfigError(f"teacher.mode must be cache, online, ideal or none, got '{mode}'")
    t = cfg.teacher
    label = weights_label_for(t.pretrained or None, t.name)
    # The file name only carries the weights' stem; the hash catches a replaced file of the same name.
    weights_id = weights_id_for(t.pretrained or None, t.name)
    caches = []
    for name, paths in datasets:
        path = cache_file_path(t.cache_dir, name, t.name, label)
        cache = TeacherCache.load(path)
        cache.check_compatible(image_paths=paths, teacher_name=t.name, weights_id=weights_id,
                               pairs=parse_pairs(t.descriptor_pairs), template=resolve_template(t.prompt_template),
                               dataset=name, resize_mode=t.resize_mode)
        logger.info("teacher cache %s: %d images", path, len(cache))
        caches.append(cache)
    return CacheTeacherSource(TeacherCache.concat(caches))


def as_teacher_source(teacher, datamanager=None):
    """The engine's teacher source from what a user has at hand.

    Args:
        teacher: ``None``; a teacher-cache file path; a :class:`CLIPTeacher` (run online); or a source (any object
            with ``lookup`` and ``gather_text``), returned unchanged.
        datamanager: when given with a cache file, every training image of ``datamanager.train_loader`` must be in
            the cache (checked now rather than at the first batch that misses one).

    Raises:
        TeacherCacheMissError: the cache lacks a training image (named).
        TypeError: ``teacher`` is none of the above.
    """
    if teacher is None or (hasattr(teacher, "lookup") and hasattr(teacher, "gather_text")):
        return teacher
    if isinstance(teacher, CLIPTeacher):
        return OnlineTeacherSource(teacher)
    if isinstance(teacher, (str, os.PathLike)):
        cache = TeacherCache.load(os.fspath(teacher))
        if datamanager is not None:
            cache.rows(item_image_paths(datamanager.train_loader.dataset.train))
        logger.info("teacher cache %s: %d images", os.fspath(teacher), len(cache))
        return CacheTeacherSource(cache)
    raise TypeError(f"teacher must be a teacher-cache file, a CLIPTeacher or a teacher source, "
                    f"got {type(teacher).__name__}")

"""The stand-in teacher (``teacher.mode stand-in``): synthcc's ground-truth descriptor labels with the features of
the configured CLIP, for running the OT term offline where no CLIP weights are at hand.

Without weights, ``cfg.teacher`` is a randomly initialised CLIP: its text tower still gives phrase features (nearly
parallel ones) and its image tower a ``g`` that says nothing about the body, so the quickstart keeps L_global off
with this teacher. Its labels, though, are replaced by synthcc's ground truth, measured on each identity's mesh.

Those labels are not the teacher's, so the stand-in cache is a file of its own
(``<cache_dir>/synthcc__<teacher>__<weights>-standin.pt``) whose fingerprint says where its labels came from
(``labels``: :data:`STANDIN_LABELS`). ``teacher.mode cache`` refuses it (its labels are not the teacher's), this
mode refuses a CLIP cache, and ``clip3dreid-label`` rebuilds a teacher cache whose fingerprint carries another
``labels``: a stand-in cache is never taken for a CLIP cache, nor the reverse.
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import Sequence, Tuple

import torch
from yacs.config import CfgNode as CN

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.teacher import source
from clip3dreid_plugin.teacher.cache import TeacherCache, build_teacher_cache, cache_file_path
from clip3dreid_plugin.teacher.descriptors import parse_pairs, resolve_template
from clip3dreid_plugin.teacher.weights import weights_id_for, weights_label_for

logger = logging.getLogger(__name__)

__all__ = ["STANDIN_LABELS", "build_standin_cache", "build_standin_teacher_source", "standin_cache_path",
           "synthcc_teacher_cache"]

#: The ``labels`` entry of a stand-in cache's fingerprint (a teacher's own cache has none).
STANDIN_LABELS = "synthcc ground truth (the stand-in teacher)"


def standin_cache_path(cfg: CN) -> str:
    """``<teacher.cache_dir>/synthcc__<teacher.name>__<weights>-standin.pt``: apart from the teacher's own cache."""
    t = cfg.teacher
    return cache_file_path(t.cache_dir, "synthcc", t.name, weights_label_for(t.pretrained or None, t.name) + "-standin")


def synthcc_teacher_cache(cfg: CN, image_paths: Sequence[str], device="cpu") -> TeacherCache:
    """The cache of ``cfg.teacher`` (a CLIP, random without weights) on synthcc's ``image_paths``, built or reused.

    Args:
        cfg: full config (``teacher.*``, ``data.norm_*``, ``runtime.progress``).
        image_paths: synthcc's training images.
        device: where the teacher labels (the run's resolved device).
    """
    teacher = source.build_teacher(cfg, device)
    path = cache_file_path(cfg.teacher.cache_dir, "synthcc", cfg.teacher.name, teacher.weights_label())
    return build_teacher_cache(teacher, image_paths, path, batch_size=cfg.teacher.batch_size, dataset="synthcc",
                               progress=cfg.runtime.progress)


def build_standin_cache(cfg: CN, gt_paths: Sequence[str], gt_labels: torch.Tensor, device="cpu") -> TeacherCache:
    """Writes the stand-in cache at :func:`standin_cache_path`: the teacher's features, synthcc's true labels.

    Args:
        cfg: full config.
        gt_paths: synthcc's training images ``[N]``.
        gt_labels: their ground-truth descriptor labels ``[N, M]`` (``body.synthcc.synthcc_ground_truth``).
        device: where the teacher labels.

    Returns:
        The stand-in cache as written.
    """
    cache = synthcc_teacher_cache(cfg, gt_paths, device)
    labels = cache.labels.clone()
    labels[cache.rows(gt_paths)] = gt_labels.to(labels.dtype)
    standin = TeacherCache(cache.paths, cache.features, labels, cache.text_features,
                           dict(cache.fingerprint, labels=STANDIN_LABELS), dataset="synthcc")
    standin.save(standin_cache_path(cfg))
    return standin


def build_standin_teacher_source(cfg: CN, datasets: Sequence[Tuple[str, Sequence[str]]],
                                 device="cpu") -> source.CacheTeacherSource:
    """``teacher.mode stand-in`` (an entry of ``teacher.source.TEACHER_MODES``): serves the stand-in cache.

    Args:
        cfg: full config.
        datasets: ``(name, training image paths)`` of every source dataset; synthcc only.
        device: unused (the cache answers on the CPU).

    Raises:
        ConfigError: a source dataset other than synthcc, or no stand-in cache (the message says how to build it).
        TeacherCacheMismatchError: the file is not a stand-in cache of this teacher, or misses training images.
    """
    others = [name for name, _ in datasets if name != "synthcc"]
    if others:
        raise ConfigError(f"teacher.mode stand-in knows synthcc's ground-truth labels only, not {others}; "
                          "use teacher.mode cache or online")
    path = standin_cache_path(cfg)
    if not osp.isfile(path):
        raise ConfigError(f"teacher.mode stand-in: no stand-in cache '{path}'; write it with clip3dreid-quickstart "
                          "--teacher stand-in (or clip3dreid_plugin.study.standin_teacher.build_standin_cache)")
    cache = TeacherCache.load(path)
    t = cfg.teacher
    for _, paths in datasets:
        cache.check_compatible(image_paths=paths, teacher_name=t.name,
                               weights_id=weights_id_for(t.pretrained or None, t.name),
                               pairs=parse_pairs(t.descriptor_pairs), template=resolve_template(t.prompt_template),
                               dataset="synthcc", resize_mode=t.resize_mode, labels=STANDIN_LABELS)
    logger.warning("teacher.mode stand-in: synthcc's ground-truth descriptor labels with the features of %s (%s), "
                   "not a CLIP teacher's labels", t.name, t.pretrained or "randomly initialised")
    logger.info("teacher cache %s: %d images", path, len(cache))
    return source.CacheTeacherSource(TeacherCache.concat([cache]))

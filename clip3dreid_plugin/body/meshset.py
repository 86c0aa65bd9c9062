"""Renders the synthetic body-mesh image set: plan -> true descriptors -> images + ``meta.npz``.

Output layout::

    <out_dir>/meta.npz          one metadata file (format: clip3dreid_plugin.body.meshset_plan)
    <out_dir>/images/*.png      one untextured render per (subject, pose)

The run is resumable through :mod:`clip3dreid_plugin.utils.artefact`: the plan is deterministic in
the arguments, images are rendered in index order, every image is written atomically (temporary
file + ``os.replace``), how far the rendering got is saved to ``meta.npz.partial`` (with the
fingerprint) every ``checkpoint_every`` images and on an interruption, and a rerun continues from
there. ``meta.npz`` is written last, so it marks a complete set; a rerun with the same fingerprint
only renders images deleted since. A folder rendered with different arguments (or by an older
plugin version, whose fingerprint was a bare digest) is refused naming what changed, or
re-rendered with ``on_stale='rebuild'`` (``--overwrite``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import os.path as osp
import warnings
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from clip3dreid_plugin.body.anthropometry import MEASUREMENT_NAMES, measure_bodies
from clip3dreid_plugin.body.descriptor_rules import descriptor_scores, fit_thresholds, rule_labels
from clip3dreid_plugin.body.render import MeshRenderer
from clip3dreid_plugin.body.smpl_io import BodyModel, load_body_model
from clip3dreid_plugin.body.meshset_plan import (
    META_FORMAT_VERSION,
    META_NAME,
    SyntheticPlan,
    SyntheticSetError,
    make_plan,
    read_synthetic_meta,
    write_synthetic_meta,
)
from clip3dreid_plugin.shape import DESCRIPTOR_PAIRS
from clip3dreid_plugin.utils.artefact import (PartialBuild, StaleArtefactError, apply_stale_policy, as_fingerprint,
                                              check_stale_policy, digest, fingerprint, fingerprint_diff)
from clip3dreid_plugin.utils.hashing import file_sha256
from clip3dreid_plugin.utils.io import atomic_write
from clip3dreid_plugin.utils.progress import progress

__all__ = ["render_synthetic_set", "SyntheticSetError", "SyntheticSetStaleError", "canonical_descriptors"]

logger = logging.getLogger(__name__)

IMAGE_DIR = "images"
STALE_HINT = "Choose a new --out, or pass --overwrite (on_stale='rebuild') to re-render it"


class SyntheticSetStaleError(SyntheticSetError, StaleArtefactError):
    """``out_dir`` holds a set rendered with other arguments (or another body model) and ``on_stale='error'``."""


@torch.no_grad()
def canonical_descriptors(models: Dict[str, BodyModel], betas: np.ndarray, genders: Sequence[str],
                          thresholds: Optional[np.ndarray] = None, batch_size: int = 256) -> Dict[str, np.ndarray]:
    """Measures the canonical mesh of every subject and derives its descriptor labels.

    Args:
        models: gender -> body model.
        betas: [S, 10] shape coefficients.
        genders: [S] gender of each subject (a key of ``models``).
        thresholds: [16] rule thresholds; None = medians of this population.
        batch_size: bodies per body-model call.

    Returns:
        Dict with ``measurements`` [S, 13], ``scores`` [S, 16], ``labels`` [S, 16] (int8) and
        ``thresholds`` [16].
    """
    genders = np.asarray(genders)
    meas = np.zeros((len(betas), len(MEASUREMENT_NAMES)))
    for g in np.unique(genders):
        idx = np.flatnonzero(genders == g)
        model = models[str(g)]
        for start in range(0, len(idx), batch_size):
            sel = idx[start: start + batch_size]
            b = torch.as_tensor(betas[sel], dtype=torch.float32)
            verts = model.canonical_vertices(b).cpu().numpy()
            joints = model.canonical_joints(b).cpu().numpy()
            m = measure_bodies(verts, model.faces, joints)
            meas[sel] = np.stack([m[k] for k in MEASUREMENT_NAMES], 1)
    scores = descriptor_scores({k: meas[:, i] for i, k in enumerate(MEASUREMENT_NAMES)})
    thr = fit_thresholds(scores) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    return {"measurements": meas, "scores": scores, "labels": rule_labels(scores, thr).astype(np.int8),
            "thresholds": thr}


def _save_image(img: np.ndarray, path: str) -> None:
    fmt = "PNG" if path.lower().endswith(".png") else "JPEG"
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    atomic_write(path, lambda fh: Image.fromarray(img).save(fh, format=fmt, **kwargs))


def render_synthetic_set(body_model_dir: str, out_dir: str, num_female: int, num_male: int, poses_per_subject: int,
                         height: int = 384, width: int = 192, seed: int = 0, pose_file: Optional[str] = None,
                         sigma: float = 1.0, thresholds: Optional[Sequence[float]] = None, ext: str = "png",
                         on_stale: str = "error", checkpoint_every: int = 200, show_progress: bool = True,
                         renderer_kwargs: Optional[Dict[str, Any]] = None, overwrite: Optional[bool] = None
                         ) -> Dict[str, Any]:
    """Renders (or resumes) a synthetic set.

    Args:
        body_model_dir: root with ``smpl/SMPL_{FEMALE,MALE}.pkl`` (official or procedural).
        out_dir: output folder.
        num_female: female subjects.
        num_male: male subjects.
        poses_per_subject: renders per subject.
        height: image height H.
        width: image width W.
        seed: seed of shapes, poses and cameras.
        pose_file: optional ``.npz`` with ``body_pose`` [K, 69] extending the built-in pool.
        sigma: standard deviation of the sampled betas.
        thresholds: [16] descriptor thresholds; None = medians of the sampled population.
        ext: ``png`` or ``jpg``.
        on_stale: ``error`` (default: a folder holding a set with another fingerprint is refused, naming what
            changed) or ``rebuild`` (it is re-rendered, with a line saying what changed).
        checkpoint_every: save how far the rendering got (``meta.npz.partial``) after this many new images.
        show_progress: tqdm bar.
        renderer_kwargs: extra :class:`~clip3dreid_plugin.body.render.MeshRenderer` arguments.
        overwrite: deprecated spelling of ``on_stale``: True is ``rebuild``, False ``error``.

    Returns:
        The metadata as written (see :mod:`clip3dreid_plugin.body.meshset_plan`).

    Raises:
        SyntheticSetStaleError: ``out_dir`` holds a different set and ``on_stale`` is ``error``.
        BodyModelError: body model files missing or unreadable.
        HeadlessGLError: no headless OpenGL.
        PoseFileError: bad ``pose_file``.
    """
    if overwrite is not None:
        warnings.warn("render_synthetic_set(overwrite=...) is deprecated; pass on_stale='rebuild' or 'error'",
                      DeprecationWarning, stacklevel=2)
        on_stale = "rebuild" if overwrite else "error"
    check_stale_policy(on_stale, "on_stale", SyntheticSetError)
    plan = make_plan(num_female, num_male, poses_per_subject, seed=seed, sigma=sigma, pose_file=pose_file, ext=ext)
    models = {g: load_body_model(body_model_dir, g) for g in np.unique(plan.genders)}
    desc = canonical_descriptors(models, plan.betas, plan.genders,
                                 None if thresholds is None else np.asarray(thresholds, dtype=np.float64))
    renderer_kwargs = dict(renderer_kwargs or {})
    fp = _fingerprint(plan, models, desc["thresholds"], height, width, seed, sigma, renderer_kwargs)

    img_dir = osp.join(out_dir, IMAGE_DIR)
    os.makedirs(img_dir, exist_ok=True)
    meta_path = osp.join(out_dir, META_NAME)
    repair = False
    if osp.isfile(meta_path):
        old = read_synthetic_meta(meta_path)
        diff = fingerprint_diff(as_fingerprint(old.get("fingerprint", "")), fp)
        repair = apply_stale_policy(meta_path, diff, on_stale, "synthetic set", STALE_HINT, SyntheticSetStaleError)
        if not repair:  # stale: the old set goes (its metadata first, so no reader sees a half-deleted set)
            os.remove(meta_path)
            for name in np.atleast_1d(old.get("files", [])):
                if osp.exists(osp.join(out_dir, str(name))):
                    os.remove(osp.join(out_dir, str(name)))
    for name in os.listdir(img_dir):
        if name.endswith(".tmp"):  # leftovers of an interrupted write
            os.remove(osp.join(img_dir, name))

    def meta_for(done: np.ndarray) -> Dict[str, Any]:
        idx = np.flatnonzero(done)
        subj = plan.subject[idx]
        return {
            "files": np.array([f"{IMAGE_DIR}/{f}" for f in plan.files[idx]], dtype=str).reshape(-1),
            "subject": subj.astype(np.int32),
            "gender": plan.genders[subj].astype(str),
            "betas": plan.betas[subj].astype(np.float32).reshape(len(idx), -1),
            "pose_id": plan.pose_id[idx].astype(np.int32),
            "yaw_deg": plan.yaw_deg[idx].astype(np.float32),
            "distance_scale": plan.distance_scale[idx].astype(np.float32),
            "labels": desc["labels"][subj].astype(np.int8).reshape(len(idx), -1),
            "scores": desc["scores"][subj].astype(np.float32).reshape(len(idx), -1),
            "measurements": desc["measurements"][subj].astype(np.float32).reshape(len(idx), -1),
            "thresholds": desc["thresholds"].astype(np.float64),
            "descriptor_pairs": np.array(DESCRIPTOR_PAIRS, dtype=str),
            "measurement_names": np.array(MEASUREMENT_NAMES, dtype=str),
            "pose_pool": plan.pose_pool.astype(np.float32),
            "pose_names": np.array(plan.pose_names, dtype=str),
            "image_size": np.array([height, width], dtype=np.int32),
            "seed": np.int64(seed),
            "sigma": np.float64(sigma),
            "fingerprint": np.str_(json.dumps(fp, sort_keys=True)),
            "complete": np.bool_(bool(done.all())),
            "format_version": np.int64(META_FORMAT_VERSION),
            "body_model_dir": np.str_(osp.abspath(body_model_dir)),
        }

    partial = PartialBuild(meta_path, fp, "synthetic set rendering", save_every_s=0, save_every=checkpoint_every)
    if repair:  # complete and up to date: only images deleted since are rendered
        done = np.array([osp.isfile(osp.join(img_dir, str(f))) for f in plan.files])
    else:  # rendered in index order: the first 'start' images are done
        start, _ = partial.resume()
        done = np.arange(plan.num_images) < start
    todo = np.flatnonzero(~done)
    if len(todo) == 0:
        logger.info("all %d images of %s already exist", plan.num_images, out_dir)
    else:
        logger.info("rendering %d of %d images (%d subjects) into %s", len(todo), plan.num_images,
                    len(plan.betas), out_dir)
        with MeshRenderer(height=height, width=width, **renderer_kwargs) as renderer, \
                (contextlib.nullcontext() if repair else partial.saved_on_error(lambda: (int(done.sum()), {}))):
            cache_subject, cache = -1, {}
            for i in progress(todo, total=len(todo), desc="render", enabled=show_progress):
                s = int(plan.subject[i])
                if s != cache_subject:
                    cache = _posed_subject(plan, models, s, todo)
                    cache_subject = s
                img = renderer.render(cache[int(i)], models[str(plan.genders[s])].faces,
                                      float(plan.yaw_deg[i]), float(plan.distance_scale[i]))
                _save_image(img, osp.join(img_dir, str(plan.files[i])))
                done[i] = True
                if not repair:
                    partial.step(int(done.sum()), dict)
    meta = meta_for(done)
    write_synthetic_meta(meta_path, meta)
    partial.finish()
    return meta


@torch.no_grad()
def _posed_subject(plan: SyntheticPlan, models: Dict[str, BodyModel], subject: int, todo: np.ndarray
                   ) -> Dict[int, np.ndarray]:
    """Posed vertices [V, 3] of the subject's images still to render, keyed by image index."""
    idx = [int(i) for i in todo[plan.subject[todo] == subject]]
    model = models[str(plan.genders[subject])]
    betas = torch.as_tensor(plan.betas[subject][None], dtype=torch.float32)
    poses = torch.as_tensor(plan.pose_pool[plan.pose_id[idx]], dtype=torch.float32)
    verts = model.posed_vertices(betas, poses).cpu().numpy()
    return {i: verts[k] for k, i in enumerate(idx)}


def _fingerprint(plan: SyntheticPlan, models: Dict[str, BodyModel], thresholds: np.ndarray, height: int, width: int,
                 seed: int, sigma: float, renderer_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Everything that determines the images and labels: the arguments, the body model files and, as one digest,
    the plan drawn from them (pose pool included)."""
    drawn = {"files": plan.files, "pose_id": plan.pose_id, "betas": plan.betas, "pose_pool": plan.pose_pool,
             "yaw_deg": plan.yaw_deg, "distance_scale": plan.distance_scale}
    return fingerprint({"format_version": META_FORMAT_VERSION, "seed": int(seed), "sigma": float(sigma),
                        "num_images": int(plan.num_images), "size": [int(height), int(width)],
                        "renderer": {k: repr(v) for k, v in sorted(renderer_kwargs.items())},
                        "thresholds": np.round(np.asarray(thresholds, dtype=np.float64), 10),
                        "body_model": {g: file_sha256(models[g].path) for g in sorted(models)},
                        "plan": digest(drawn)})

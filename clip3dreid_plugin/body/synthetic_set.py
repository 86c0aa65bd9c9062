"""Renders the synthetic body-mesh image set: plan -> true descriptors -> images + ``meta.npz``.

Output layout::

    <out_dir>/meta.npz          one metadata file (format: clip3dreid_plugin.body.synthetic)
    <out_dir>/images/*.png      one untextured render per (subject, pose)

The run is resumable: the plan is deterministic in the arguments, images already on disk are
skipped, every image and the metadata are written atomically (temporary file + ``os.replace``),
and the metadata is refreshed every ``checkpoint_every`` images, listing only images that exist.
A folder rendered with different arguments (other fingerprint) is refused unless ``overwrite``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import os.path as osp
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from clip3dreid_plugin.body.anthropometry import MEASUREMENT_NAMES, measure_bodies
from clip3dreid_plugin.body.descriptor_rules import descriptor_scores, fit_thresholds, rule_labels
from clip3dreid_plugin.body.render import MeshRenderer
from clip3dreid_plugin.body.smpl_io import BodyModel, load_body_model
from clip3dreid_plugin.body.synthetic import (
    META_FORMAT_VERSION,
    META_NAME,
    SyntheticPlan,
    SyntheticSetError,
    make_plan,
    read_synthetic_meta,
    write_synthetic_meta,
)
from clip3dreid_plugin.shape import DESCRIPTOR_PAIRS
from clip3dreid_plugin.utils.hashing import file_sha256
from clip3dreid_plugin.utils.io import atomic_write
from clip3dreid_plugin.utils.progress import progress

__all__ = ["render_synthetic_set", "SyntheticSetError", "canonical_descriptors"]

logger = logging.getLogger(__name__)

IMAGE_DIR = "images"


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
                         overwrite: bool = False, checkpoint_every: int = 200, show_progress: bool = True,
                         renderer_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
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
        overwrite: re-render a folder that holds a set with another fingerprint.
        checkpoint_every: rewrite the metadata after this many new images.
        show_progress: tqdm bar.
        renderer_kwargs: extra :class:`~clip3dreid_plugin.body.render.MeshRenderer` arguments.

    Returns:
        The metadata as written (see :mod:`clip3dreid_plugin.body.synthetic`).

    Raises:
        SyntheticSetError: ``out_dir`` holds a different set and ``overwrite`` is False.
        BodyModelError: body model files missing or unreadable.
        HeadlessGLError: no headless OpenGL.
        PoseFileError: bad ``pose_file``.
    """
    plan = make_plan(num_female, num_male, poses_per_subject, seed=seed, sigma=sigma, pose_file=pose_file, ext=ext)
    models = {g: load_body_model(body_model_dir, g) for g in np.unique(plan.genders)}
    desc = canonical_descriptors(models, plan.betas, plan.genders,
                                 None if thresholds is None else np.asarray(thresholds, dtype=np.float64))
    renderer_kwargs = dict(renderer_kwargs or {})
    fingerprint = _fingerprint(plan, models, desc["thresholds"], height, width, seed, sigma, renderer_kwargs)

    img_dir = osp.join(out_dir, IMAGE_DIR)
    os.makedirs(img_dir, exist_ok=True)
    meta_path = osp.join(out_dir, META_NAME)
    if osp.isfile(meta_path):
        old = read_synthetic_meta(meta_path).get("fingerprint", "")
        if old != fingerprint:
            if not overwrite:
                raise SyntheticSetError(
                    f"{out_dir} already holds a synthetic set rendered with other arguments (or another body "
                    "model); choose a new --out, or pass overwrite=True / --overwrite to re-render it")
            logger.warning("re-rendering %s: the existing set has another fingerprint", out_dir)
            for name in plan.files:
                p = osp.join(img_dir, str(name))
                if osp.exists(p):
                    os.remove(p)
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
            "fingerprint": np.str_(fingerprint),
            "complete": np.bool_(bool(done.all())),
            "format_version": np.int64(META_FORMAT_VERSION),
            "body_model_dir": np.str_(osp.abspath(body_model_dir)),
        }

    done = np.array([osp.isfile(osp.join(img_dir, str(f))) for f in plan.files])
    todo = np.flatnonzero(~done)
    if len(todo) == 0:
        logger.info("all %d images of %s already exist", plan.num_images, out_dir)
    else:
        logger.info("rendering %d of %d images (%d subjects) into %s", len(todo), plan.num_images,
                    len(plan.betas), out_dir)
        with MeshRenderer(height=height, width=width, **renderer_kwargs) as renderer:
            cache_subject, cache = -1, {}
            since_ckpt = 0
            for i in progress(todo, total=len(todo), desc="render", enabled=show_progress):
                s = int(plan.subject[i])
                if s != cache_subject:
                    cache = _posed_subject(plan, models, s, todo)
                    cache_subject = s
                img = renderer.render(cache[int(i)], models[str(plan.genders[s])].faces,
                                      float(plan.yaw_deg[i]), float(plan.distance_scale[i]))
                _save_image(img, osp.join(img_dir, str(plan.files[i])))
                done[i] = True
                since_ckpt += 1
                if since_ckpt >= checkpoint_every:
                    write_synthetic_meta(meta_path, meta_for(done))
                    since_ckpt = 0
    meta = meta_for(done)
    write_synthetic_meta(meta_path, meta)
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
                 seed: int, sigma: float, renderer_kwargs: Dict[str, Any]) -> str:
    """Hash of everything that determines the images and labels (arguments, pose pool, body model files)."""
    h = hashlib.sha1()
    h.update(json.dumps({"files": plan.files.tolist(), "pose_id": plan.pose_id.tolist(), "seed": int(seed),
                         "sigma": float(sigma), "size": [int(height), int(width)],
                         "renderer": {k: repr(v) for k, v in sorted(renderer_kwargs.items())},
                         "version": META_FORMAT_VERSION}, sort_keys=True).encode())
    for arr in (plan.betas, plan.pose_pool, plan.yaw_deg, plan.distance_scale, np.round(thresholds, 10)):
        h.update(np.ascontiguousarray(arr).tobytes())
    for g in sorted(models):
        h.update(file_sha256(models[g].path).encode())
    return h.hexdigest()

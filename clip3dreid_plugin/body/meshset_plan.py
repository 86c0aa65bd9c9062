"""Sampling plan and metadata file of the synthetic body-mesh image set (Design 3).

A plan fixes, from the arguments and one seed, every random choice of the set: shape
coefficients of each subject (``num_female`` female then ``num_male`` male bodies, the first
ten betas ~ N(0, sigma^2)), the poses of each subject (``poses_per_subject`` draws from the pose
pool, without repetition while the pool is large enough), and the camera of each image (yaw
uniform in [0, 360) degrees, distance scale uniform in [1, ``max_distance_scale``]). Separate
random streams are used for shapes, poses and cameras, so e.g. a larger pose pool does not change
the sampled shapes.

Metadata file (``meta.npz``, one per set; read with :func:`read_synthetic_meta`):

==================  ==============  ===============================================================
key                 shape / dtype   meaning
==================  ==============  ===============================================================
files               [N] str         image file names, relative to the folder of ``meta.npz``
subject             [N] int32       subject index (females first)
gender              [N] str         ``female`` | ``male`` (the body model used to render it)
betas               [N, 10] f32     shape coefficients (the true canonical shape P = SMPL_gender(betas))
pose_id             [N] int32       row of ``pose_pool``
yaw_deg             [N] f32         body rotation about the vertical axis seen by the camera
distance_scale      [N] f32         camera distance relative to the tightest framing
labels              [N, 16] int8    descriptor labels (0 = first phrase of the pair, 1 = second)
scores              [N, 16] f32     descriptor scores the labels threshold
measurements        [N, 13] f32     anthropometry of the canonical mesh (``measurement_names`` order)
thresholds          [16] f64        descriptor thresholds used
descriptor_pairs    [16, 2] str     the phrase pairs
measurement_names   [13] str
pose_pool           [P, 69] f32     axis-angle body poses; ``pose_names`` [P] str
image_size          [2] int32       (H, W)
seed, sigma         scalars         sampling seed and beta standard deviation
fingerprint         str             JSON of the fingerprint dict (``utils/artefact.py``; stale check)
complete            bool            all planned images are present (sets of older versions: maybe not)
format_version      int
==================  ==============  ===============================================================

Only rendered images are listed, so the metadata is always consistent with the files on disk; the
renderer writes it when the set is complete (an unfinished run keeps its progress in
``meta.npz.partial``).
"""
from __future__ import annotations

import os
import os.path as osp
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from clip3dreid_plugin.body.poses import builtin_pose_names, builtin_pose_pool, load_pose_file
from clip3dreid_plugin.errors import InputError, UserError
from clip3dreid_plugin.shape import NUM_BETAS
from clip3dreid_plugin.utils.io import atomic_write
from clip3dreid_plugin.utils.paths import stays_inside
from clip3dreid_plugin.utils.rng import spawn_rngs

__all__ = ["SyntheticSetError", "SyntheticPlan", "sample_subjects", "build_pose_pool", "make_plan",
           "write_synthetic_meta", "read_synthetic_meta", "META_NAME", "META_FORMAT_VERSION"]


class SyntheticSetError(UserError, RuntimeError):
    """The output folder holds a set rendered with other arguments, the inputs are inconsistent, or its metadata
    is not what the renderer writes."""


META_NAME = "meta.npz"
META_FORMAT_VERSION = 1


@dataclass
class SyntheticPlan:
    """Every random choice of a synthetic set.

    Attributes:
        betas: float32 [S, 10] per subject.
        genders: str [S] per subject.
        pose_pool: float32 [P, 69].
        pose_names: [P] names.
        subject: int32 [N] per image.
        pose_id: int32 [N] per image.
        yaw_deg: float32 [N] per image.
        distance_scale: float32 [N] per image.
        files: str [N] per image.
    """

    betas: np.ndarray
    genders: np.ndarray
    pose_pool: np.ndarray
    pose_names: List[str]
    subject: np.ndarray
    pose_id: np.ndarray
    yaw_deg: np.ndarray
    distance_scale: np.ndarray
    files: np.ndarray

    @property
    def num_images(self) -> int:
        return len(self.files)


def sample_subjects(num_female: int, num_male: int, sigma: float = 1.0, seed: int = 0,
                    num_betas: int = NUM_BETAS) -> Tuple[np.ndarray, np.ndarray]:
    """Draws shape coefficients of ``num_female`` female then ``num_male`` male subjects.

    Args:
        num_female: female subjects.
        num_male: male subjects.
        sigma: standard deviation of every beta.
        seed: random seed (the same seed as :func:`make_plan` gives the same shapes).
        num_betas: coefficients per subject.

    Returns:
        (betas float32 [S, num_betas], genders str [S]).
    """
    if num_female < 0 or num_male < 0 or num_female + num_male == 0:
        raise InputError(f"need at least one subject, got num_female={num_female}, num_male={num_male}")
    rng = spawn_rngs(seed, 3)[0]
    n = num_female + num_male
    betas = (rng.standard_normal((n, num_betas)) * float(sigma)).astype(np.float32)
    genders = np.array(["female"] * num_female + ["male"] * num_male)
    return betas, genders


def build_pose_pool(pose_file: Optional[str] = None) -> Tuple[np.ndarray, List[str]]:
    """The built-in poses, extended by the poses of ``pose_file`` (see :func:`~.poses.load_pose_file`).

    Returns:
        (float32 [P, 69], names [P]).
    """
    pool, names = builtin_pose_pool(), builtin_pose_names()
    if pose_file:
        extra = load_pose_file(pose_file)
        stem = osp.splitext(osp.basename(pose_file))[0]
        pool = np.concatenate([pool, extra])
        names = names + [f"{stem}_{i:04d}" for i in range(len(extra))]
    return pool.astype(np.float32), names


def make_plan(num_female: int, num_male: int, poses_per_subject: int, seed: int = 0, sigma: float = 1.0,
              pose_file: Optional[str] = None, ext: str = "png", max_distance_scale: float = 1.15) -> SyntheticPlan:
    """Builds the plan of a synthetic set (deterministic in its arguments).

    Args:
        num_female: female subjects.
        num_male: male subjects.
        poses_per_subject: images per subject, each in its own pose (poses repeat only if the pool is smaller).
        seed: random seed.
        sigma: beta standard deviation.
        pose_file: optional ``.npz`` of extra poses.
        ext: image extension (``png`` or ``jpg``).
        max_distance_scale: largest camera distance relative to the tightest framing.

    Returns:
        A :class:`SyntheticPlan`.
    """
    if poses_per_subject < 1:
        raise InputError(f"poses_per_subject must be >= 1, got {poses_per_subject}")
    ext = ext.lower().lstrip(".")
    if ext not in ("png", "jpg"):
        raise InputError(f"image extension must be png or jpg, got {ext!r}")
    betas, genders = sample_subjects(num_female, num_male, sigma, seed)
    pool, names = build_pose_pool(pose_file)
    _, pose_rng, cam_rng = spawn_rngs(seed, 3)
    k, p = int(poses_per_subject), len(pool)
    subjects = np.repeat(np.arange(len(betas)), k).astype(np.int32)
    pose_id = np.concatenate([pose_rng.choice(p, size=k, replace=k > p) for _ in range(len(betas))]).astype(np.int32)
    n = len(subjects)
    yaw = cam_rng.uniform(0.0, 360.0, n).astype(np.float32)
    dist = cam_rng.uniform(1.0, float(max_distance_scale), n).astype(np.float32)
    slots = np.tile(np.arange(k), len(betas))
    files = np.array([f"{s:05d}_{genders[s][0]}_{j:02d}.{ext}" for s, j in zip(subjects, slots)])
    return SyntheticPlan(betas=betas, genders=genders, pose_pool=pool, pose_names=names, subject=subjects,
                         pose_id=pose_id, yaw_deg=yaw, distance_scale=dist, files=files)


def write_synthetic_meta(path: str, meta: Dict[str, Any]) -> None:
    """Writes ``meta`` to ``path`` atomically (temporary file + ``os.replace``).

    Args:
        path: target ``.npz`` file.
        meta: key -> array-like (strings, numbers, arrays; no Python objects).
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in meta.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise TypeError(f"metadata key {k!r} holds Python objects; store numbers or strings")
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def read_synthetic_meta(path: str) -> Dict[str, Any]:
    """Reads a metadata file (or the ``meta.npz`` inside a folder).

    Returns:
        key -> numpy array; 0-d entries become Python scalars/strings.
    """
    if osp.isdir(path):
        path = osp.join(path, META_NAME)
    if not osp.isfile(path):
        raise FileNotFoundError(f"synthetic-set metadata {path} does not exist; render the set with "
                                "clip3dreid-render-meshset")
    out: Dict[str, Any] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for k in data.files:
                v = data[k]
                out[k] = v.item() if v.ndim == 0 else v
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        # ValueError is numpy's refusal of pickled Python objects: the renderer never writes them
        raise SyntheticSetError(f"synthetic-set metadata {path} is not readable as data "
                                f"({type(err).__name__}: {' '.join(str(err).split())}); render the set again") from None
    bad = [str(f) for f in np.atleast_1d(out.get("files", [])) if not stays_inside(str(f))]
    if bad:
        raise SyntheticSetError(f"synthetic-set metadata {path} lists the image '{bad[0]}' outside its folder "
                                f"({len(bad)} such entries); render the set again")
    return out


"""``synthcc``: a generated cloth-changing ReID benchmark in which identity = body shape.

Every identity is a body of the (procedural or real) SMPL-format model with its own gender and
random shape coefficients; it wears ``outfits_per_id`` outfits drawn from one *global* pool that is
smaller than ``num_ids * outfits_per_id``, so every outfit is worn by several identities and colour
is no identity cue. Each camera has its own viewpoint (yaw range), background gradient, lighting
and white balance; each (identity, outfit, camera) is rendered in ``poses_per_view`` poses of the
built-in pose pool with a small random yaw and distance jitter.

Layout (read by :class:`datasets_ext.synthcc.SynthCC`)::

    <root>/synthcc/meta.json
    <root>/synthcc/{train,query,gallery}/<pid:04d>_<outfit:02d>_c<cam>_<k:03d>.png

``pid`` is the identity index (0..num_ids-1), ``outfit`` the outfit slot of that identity
(0..outfits_per_id-1; the clothes key is ``(pid, outfit)``), ``cam`` is 1-based (camid = cam - 1),
``k`` the pose slot within the view.

Splits: identities are split at random, half train / half test (disjoint). For a test identity,
camera 1 (camid 0) of every outfit is the query and cameras 2.. of every outfit are the gallery.
So every query (outfit o, camid 0) has same-clothes positives (outfit o, other cameras: the SC
protocol) and clothes-changing positives (other outfits, other cameras: the CC protocol) in the
gallery, and ``general`` / ``sc`` / ``cc`` are all meaningful.

``meta.json`` holds the generation arguments, a fingerprint of everything that determines the
images, per identity its gender, betas, skin tone, outfit pool indices and the 16 ground-truth
descriptor labels (measured on its canonical mesh, thresholds = medians over the identities), the
outfit pool, the cameras, and one record per image. The build is deterministic in its arguments
and the body model files, resumable and idempotent through :mod:`clip3dreid_plugin.utils.artefact`:
images are rendered in index order, how far a build got is saved to ``meta.json.partial`` (with the
fingerprint) and a rerun continues from there; ``meta.json`` is written last, so it marks a complete
set, which a rerun with the same fingerprint does not touch (it only renders images deleted since).
A set of other arguments (or of an older plugin version's fingerprint) is rebuilt with a line saying
what changed, or refused with ``on_stale='error'``. Every file is written to a temporary name and
moved into place with ``os.replace``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import os.path as osp
import re
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from clip3dreid_plugin.body.poses import builtin_pose_pool
from clip3dreid_plugin.body.render import MeshRenderer
from clip3dreid_plugin.body.skeleton import J
from clip3dreid_plugin.body.smpl_io import BodyModel, load_body_model
from clip3dreid_plugin.body.meshset import canonical_descriptors
from clip3dreid_plugin.errors import UserError
from clip3dreid_plugin.shape import DESCRIPTOR_PAIRS
from clip3dreid_plugin.utils.artefact import (PartialBuild, StaleArtefactError, apply_stale_policy, as_fingerprint,
                                              check_stale_policy, digest, fingerprint, fingerprint_diff)
from clip3dreid_plugin.utils.hashing import file_sha256
from clip3dreid_plugin.utils.io import atomic_write
from clip3dreid_plugin.utils.paths import stays_inside
from clip3dreid_plugin.utils.progress import progress
from clip3dreid_plugin.utils.rng import spawn_rngs

__all__ = [
    "DATASET_DIR", "META_NAME", "SPLITS", "SynthCCError", "SynthCCStaleError", "build_synthcc", "read_synthcc_meta",
    "synthcc_labels_by_path", "synthcc_shapes_by_path", "synthcc_ground_truth", "outfit_pool_size",
    "camera_background", "FILE_PATTERN",
]

logger = logging.getLogger(__name__)

DATASET_DIR = "synthcc"
META_NAME = "meta.json"
SPLITS = ("train", "query", "gallery")
FORMAT_VERSION = 1  # bump when the generator changes what a given seed produces (invalidates old fingerprints)
FILE_PATTERN = re.compile(r"(\d{4})_(\d{2})_c(\d+)_(\d{3})")
BETA_SIGMA = 1.25  # default spread, wider than the synthetic mesh set's 1.0: identities differ in shape
SUBDIVISIONS = 2  # midpoint subdivisions of the colouring mesh: stripes need ~1 cm vertex spacing, rings are ~5 cm
YAW_HALF_RANGE = 30.0  # degrees of yaw jitter around a camera's viewing direction
MAX_DISTANCE_SCALE = 1.15
SAVE_EVERY_S = 30.0  # how often an unfinished build saves how far it got (meta.json.partial)
STALE_HINT = "Delete it, or build with on_stale='rebuild'"

# Clothing palette (sRGB in [0, 1]); several identities share each colour, so colour alone is no cue.
PALETTE: Tuple[Tuple[str, Tuple[float, float, float]], ...] = (
    ("black", (0.10, 0.10, 0.11)), ("white", (0.90, 0.90, 0.88)), ("grey", (0.50, 0.50, 0.52)),
    ("navy", (0.12, 0.16, 0.40)), ("blue", (0.20, 0.40, 0.80)), ("red", (0.78, 0.14, 0.14)),
    ("green", (0.18, 0.52, 0.24)), ("olive", (0.45, 0.45, 0.20)), ("yellow", (0.92, 0.80, 0.20)),
    ("orange", (0.92, 0.50, 0.14)), ("purple", (0.45, 0.22, 0.60)), ("pink", (0.92, 0.55, 0.68)),
    ("brown", (0.42, 0.27, 0.16)), ("beige", (0.80, 0.72, 0.56)), ("teal", (0.10, 0.50, 0.52)),
)
SKIN_TONES: Tuple[Tuple[float, float, float], ...] = (
    (0.94, 0.78, 0.66), (0.85, 0.65, 0.50), (0.66, 0.46, 0.32), (0.45, 0.30, 0.20),
)
PATTERNS = ("plain", "stripes", "block")  # block = a second colour on the upper (top) / lower (bottom) part

# Body regions by the SMPL bone a vertex follows (argmax of its skinning weights).
SKIN, TOP, BOTTOM = 0, 1, 2
_TOP_BONES = (J.SPINE1, J.SPINE2, J.SPINE3, J.L_COLLAR, J.R_COLLAR, J.L_SHOULDER, J.R_SHOULDER)
_FOREARM_BONES = (J.L_ELBOW, J.R_ELBOW)  # sleeve when long-sleeved, skin otherwise
_BOTTOM_BONES = (J.PELVIS, J.L_HIP, J.R_HIP)
_SHANK_BONES = (J.L_KNEE, J.R_KNEE)  # trouser leg when long, skin when shorts


class SynthCCError(UserError, RuntimeError):
    """Invalid synthcc arguments, or a synthcc folder whose metadata is missing or unreadable."""


class SynthCCStaleError(SynthCCError, StaleArtefactError):
    """The folder holds a synthcc set of other arguments or another body model, and ``on_stale='error'``."""


# ----------------------------------------------------------------------------------------------- plan
def outfit_pool_size(num_ids: int, outfits_per_id: int) -> int:
    """Size of the global outfit pool: about three wearers per outfit, always < num_ids * outfits_per_id."""
    return max(outfits_per_id + 1, math.ceil(num_ids * outfits_per_id / 3))


def _round(x: Any, nd: int = 5) -> Any:
    """Rounds floats in nested lists so that meta.json (and the fingerprint) are stable and compact."""
    if isinstance(x, (list, tuple)):
        return [_round(v, nd) for v in x]
    if isinstance(x, (float, np.floating)):
        return round(float(x), nd)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _sample_outfits(rng: np.random.Generator, n: int) -> List[Dict[str, Any]]:
    """``n`` distinct outfits (top/bottom colour, pattern, sleeve and leg length)."""
    outfits, seen = [], set()
    names = [p[0] for p in PALETTE]
    while len(outfits) < n:
        top, bottom, top2, bottom2 = (int(i) for i in rng.choice(len(PALETTE), 4, replace=False))
        tp = PATTERNS[int(rng.choice(len(PATTERNS), p=(0.5, 0.3, 0.2)))]
        bp = PATTERNS[int(rng.choice(len(PATTERNS), p=(0.7, 0.15, 0.15)))]
        sleeves = "short" if rng.random() < 0.35 else "long"
        legs = "short" if rng.random() < 0.2 else "long"
        key = (top, bottom, tp, bp, top2 if tp != "plain" else -1, bottom2 if bp != "plain" else -1, sleeves, legs)
        if key in seen and len(seen) < 10 * n:  # distinct outfits while the combinations allow it
            continue
        seen.add(key)
        jitter = rng.uniform(-0.04, 0.04, (4, 3))  # dyes vary a little between garments of one colour name

        def col(i: int, k: int) -> List[float]:
            return _round(np.clip(np.array(PALETTE[i][1]) + jitter[k], 0.0, 1.0).tolist(), 4)

        outfits.append({
            "top": {"color": col(top, 0), "color_name": names[top], "pattern": tp, "color2": col(top2, 1),
                    "period_m": _round(float(rng.uniform(0.07, 0.14)), 4), "sleeves": sleeves},
            "bottom": {"color": col(bottom, 2), "color_name": names[bottom], "pattern": bp, "color2": col(bottom2, 3),
                       "period_m": _round(float(rng.uniform(0.07, 0.14)), 4), "legs": legs},
        })
    return outfits


def _assign_outfits(rng: np.random.Generator, num_ids: int, per_id: int, pool: int) -> np.ndarray:
    """[num_ids, per_id] distinct pool indices per identity, keeping usage balanced (every outfit worn ~equally)."""
    used = np.zeros(pool, dtype=np.int64)
    out = np.zeros((num_ids, per_id), dtype=np.int64)
    for i in range(num_ids):
        # least-used outfits first, random among equals: spreads every outfit over several identities
        order = np.lexsort((rng.random(pool), used))
        out[i] = order[:per_id]
        used[out[i]] += 1
    return out


def _sample_cameras(rng: np.random.Generator, num_cameras: int) -> List[Dict[str, Any]]:
    cams = []
    for c in range(num_cameras):
        centre = c * 360.0 / num_cameras + rng.uniform(-15.0, 15.0)
        wall = np.clip(rng.uniform(0.3, 0.75) + rng.uniform(-0.08, 0.08, 3), 0.0, 1.0)
        floor = np.clip(wall * rng.uniform(0.45, 0.8) + rng.uniform(-0.05, 0.05, 3), 0.0, 1.0)
        cams.append({
            "yaw_range_deg": _round([centre - YAW_HALF_RANGE, centre + YAW_HALF_RANGE], 3),
            "background_top": _round(wall.tolist(), 4),
            "background_bottom": _round(floor.tolist(), 4),
            "horizon": _round(float(rng.uniform(0.7, 0.85)), 4),  # image row fraction where the floor starts
            "light_intensity": _round(float(rng.uniform(1.3, 3.5)), 4),
            "ambient": _round(float(rng.uniform(0.2, 0.45)), 4),
            "white_balance": _round(rng.uniform(0.92, 1.08, 3).tolist(), 4),
        })
    return cams


def _plan(num_ids: int, outfits_per_id: int, num_cameras: int, poses_per_view: int, seed: int,
          pose_pool_size: int, beta_sigma: float) -> Dict[str, Any]:
    """Every random choice of the set (identities, outfits, cameras, images), deterministic in the arguments."""
    r_shape, r_outfit, r_assign, r_cam, r_img, r_split = spawn_rngs(seed, 6)
    genders = np.where(r_shape.random(num_ids) < 0.5, "female", "male")
    betas = (r_shape.standard_normal((num_ids, 10)) * beta_sigma).astype(np.float32)
    skin = r_shape.integers(0, len(SKIN_TONES), num_ids)
    pool = _sample_outfits(r_outfit, outfit_pool_size(num_ids, outfits_per_id))
    assign = _assign_outfits(r_assign, num_ids, outfits_per_id, len(pool))
    cams = _sample_cameras(r_cam, num_cameras)
    perm = r_split.permutation(num_ids)
    train_ids = sorted(int(i) for i in perm[: num_ids // 2])
    test_ids = sorted(int(i) for i in perm[num_ids // 2:])
    train_set = set(train_ids)
    images = []
    for pid in range(num_ids):
        for o in range(outfits_per_id):
            for c in range(num_cameras):
                lo, hi = cams[c]["yaw_range_deg"]
                poses = r_img.choice(pose_pool_size, poses_per_view, replace=poses_per_view > pose_pool_size)
                for k in range(poses_per_view):
                    split = "train" if pid in train_set else ("query" if c == 0 else "gallery")
                    images.append({
                        "file": f"{split}/{pid:04d}_{o:02d}_c{c + 1}_{k:03d}.png", "split": split, "pid": pid,
                        "outfit": o, "pool_outfit": int(assign[pid, o]), "camid": c, "k": k,
                        "pose_id": int(poses[k]), "yaw_deg": _round(float(r_img.uniform(lo, hi)), 3),
                        "distance_scale": _round(float(r_img.uniform(1.0, MAX_DISTANCE_SCALE)), 4),
                    })
    return {"genders": genders.tolist(), "betas": betas, "skin": skin.tolist(), "pool": pool,
            "assign": assign.tolist(), "cameras": cams, "train_ids": train_ids, "test_ids": test_ids,
            "images": images}


# ------------------------------------------------------------------------------------------ colouring
def _subdivision(faces: np.ndarray, levels: int) -> Tuple[List[np.ndarray], np.ndarray]:
    """Midpoint subdivision plan: per level the [E, 2] parent pairs of the new vertices, and the final faces."""
    f = np.asarray(faces, dtype=np.int64)
    n = int(f.max()) + 1
    steps = []
    for _ in range(levels):
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        uniq, inv = np.unique(e, axis=0, return_inverse=True)
        inv = inv.reshape(3, -1)
        m01, m12, m20 = (n + inv[k] for k in range(3))
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        f = np.concatenate([np.stack(t, 1) for t in ((a, m01, m20), (m01, b, m12), (m20, m12, c), (m01, m12, m20))])
        steps.append(uniq)
        n += len(uniq)
    return steps, f


def _subdivide(v: np.ndarray, steps: Sequence[np.ndarray]) -> np.ndarray:
    for pairs in steps:
        v = np.concatenate([v, 0.5 * (v[pairs[:, 0]] + v[pairs[:, 1]])])
    return v


def _subdivide_labels(lab: np.ndarray, steps: Sequence[np.ndarray]) -> np.ndarray:
    # a new vertex between two regions takes the higher code (clothes over skin, bottom over top): a garment
    # edge then sits half a ring further out, which reads as a hem
    for pairs in steps:
        lab = np.concatenate([lab, np.maximum(lab[pairs[:, 0]], lab[pairs[:, 1]])])
    return lab


def _bones(model: BodyModel) -> np.ndarray:
    return model.smpl.lbs_weights.detach().cpu().numpy().argmax(1)


def _regions(bones: np.ndarray, outfit: Dict[str, Any]) -> np.ndarray:
    lab = np.full(len(bones), SKIN, dtype=np.int64)
    top = list(_TOP_BONES) + (list(_FOREARM_BONES) if outfit["top"]["sleeves"] == "long" else [])
    bottom = list(_BOTTOM_BONES) + (list(_SHANK_BONES) if outfit["bottom"]["legs"] == "long" else [])
    lab[np.isin(bones, top)] = TOP
    lab[np.isin(bones, bottom)] = BOTTOM
    return lab


def _garment_colors(y: np.ndarray, part: Dict[str, Any], y_split: float, upper: bool) -> np.ndarray:
    """Colours [n, 3] of a garment's vertices at canonical heights ``y`` (metres)."""
    base, second = np.array(part["color"]), np.array(part["color2"])
    out = np.tile(base, (len(y), 1))
    if part["pattern"] == "stripes":
        # horizontal stripes follow the canonical height, so they move with the body when it is posed
        on = np.floor(y / float(part["period_m"])) % 2 == 1
        out[on] = second
    elif part["pattern"] == "block":
        on = y > y_split if upper else y < y_split
        out[on] = second
    return out


def _vertex_colors(canon: np.ndarray, lab: np.ndarray, joints: np.ndarray, outfit: Dict[str, Any],
                   skin: Sequence[float]) -> np.ndarray:
    """Per-vertex RGB [V, 3] of one identity in one outfit (canonical vertices of the colouring mesh)."""
    y = canon[:, 1]
    col = np.tile(np.asarray(skin, dtype=np.float64), (len(y), 1))
    top, bottom = lab == TOP, lab == BOTTOM
    chest_y = 0.5 * (joints[J.SPINE3, 1] + joints[J.NECK, 1])  # yoke line of a colour-blocked top
    knee_y = joints[J.L_KNEE, 1]  # colour block of a bottom starts at the knee
    col[top] = _garment_colors(y[top], outfit["top"], chest_y, upper=True)
    col[bottom] = _garment_colors(y[bottom], outfit["bottom"], knee_y, upper=False)
    return col


def camera_background(cam: Dict[str, Any], height: int, width: int) -> np.ndarray:
    """Wall-to-floor gradient of a camera (an entry of ``meta["cameras"]``) before white balance.

    Returns:
        float [H, W, 3] RGB in [0, 1].
    """
    t = np.linspace(0.0, 1.0, height)[:, None]
    top, bottom = np.array(cam["background_top"]), np.array(cam["background_bottom"])
    horizon = float(cam["horizon"])
    wall = top * (1.0 - 0.25 * t)  # walls darken a little towards the floor (light from above)
    floor = bottom * (0.9 + 0.2 * np.clip((t - horizon) / max(1e-6, 1.0 - horizon), 0.0, 1.0))
    img = np.where(t < horizon, wall, floor)
    return np.repeat(img[:, None, :], width, axis=1)


# ------------------------------------------------------------------------------------------------ io
def _save_png(img: np.ndarray, path: str) -> None:
    atomic_write(path, lambda fh: Image.fromarray(img).save(fh, format="PNG"))


def _write_meta(path: str, meta: Dict[str, Any]) -> None:
    text = json.dumps(meta, indent=1, sort_keys=True).encode("utf-8")
    atomic_write(path, lambda fh: fh.write(text))


def read_synthcc_meta(root: str) -> Dict[str, Any]:
    """Reads ``meta.json`` of a synthcc set.

    Args:
        root: the data root holding ``synthcc/`` (or the ``synthcc`` folder itself).

    Raises:
        SynthCCError: no (readable) metadata; the message names the file and how to build the set.
    """
    dataset_dir = _dataset_dir(root)
    path = osp.join(dataset_dir, META_NAME)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            meta = json.load(fh)
    except FileNotFoundError as exc:
        raise SynthCCError(f"synthcc metadata '{path}' does not exist; build the set with "
                           f"`clip3dreid-build-synthcc --root {osp.dirname(dataset_dir)}`") from exc
    except (OSError, ValueError) as exc:
        raise SynthCCError(f"synthcc metadata '{path}' is unreadable ({type(exc).__name__}: {exc}); "
                           "rebuild the set") from exc
    images = meta.get("images", []) if isinstance(meta, dict) else None
    if not isinstance(images, list) or not all(isinstance(im, dict) for im in images):
        raise SynthCCError(f"synthcc metadata '{path}' is not what clip3dreid-build-synthcc writes; rebuild the set")
    bad = [str(im.get("file")) for im in images if not stays_inside(str(im.get("file", "")))]
    if bad:
        raise SynthCCError(f"synthcc metadata '{path}' lists the image '{bad[0]}' outside its folder "
                           f"({len(bad)} such entries); rebuild the set")
    return meta


def _dataset_dir(root: str) -> str:
    root = osp.abspath(osp.expanduser(root or "."))
    if osp.basename(root.rstrip(os.sep)) == DATASET_DIR and osp.isfile(osp.join(root, META_NAME)):
        return root
    return osp.join(root, DATASET_DIR)


def _clear_images(dataset_dir: str) -> int:
    """Removes the images (and temporary files) this generator writes; returns how many were removed."""
    n = 0
    for split in SPLITS:
        folder = osp.join(dataset_dir, split)
        if not osp.isdir(folder):
            continue
        for name in os.listdir(folder):
            stem = osp.splitext(name)[0]
            if name.endswith(".tmp") or (name.endswith(".png") and FILE_PATTERN.fullmatch(stem)):
                os.remove(osp.join(folder, name))
                n += 1
    return n


def _fingerprint(meta: Dict[str, Any]) -> Dict[str, Any]:
    """The set's fingerprint: its arguments and body model hashes as they are, everything drawn from them as one
    digest (paths are left out: the same model files moved elsewhere give the same set)."""
    drawn = {k: v for k, v in meta.items() if k not in ("format_version", "args", "beta_sigma", "body_model")}
    return fingerprint(dict(meta["args"], format_version=meta["format_version"], beta_sigma=meta["beta_sigma"],
                            body_model={g: v["sha256"] for g, v in meta["body_model"].items()}, drawn=digest(drawn)))


# ---------------------------------------------------------------------------------------------- build
def build_synthcc(root: str, body_model_dir: str, num_ids: int = 60, outfits_per_id: int = 3, num_cameras: int = 3,
                  poses_per_view: int = 2, height: int = 128, width: int = 64, seed: int = 0,
                  progress: bool = True, beta_sigma: float = BETA_SIGMA, on_stale: str = "rebuild") -> Dict[str, Any]:
    """Builds (or resumes, or leaves alone) the synthcc set under ``root/synthcc``.

    Args:
        root: data root; the set goes to ``root/synthcc``.
        body_model_dir: folder with ``smpl/SMPL_{FEMALE,MALE}.pkl`` (procedural or official SMPL).
        num_ids: identities (>= 2), split half train / half test.
        outfits_per_id: outfits per identity (>= 2, so that clothes change).
        num_cameras: cameras (>= 2: camera 1 is the test query camera, the others the gallery).
        poses_per_view: images per (identity, outfit, camera), each in a pose of the built-in pool.
        height: image height H.
        width: image width W.
        seed: seed of every random choice.
        progress: show a tqdm bar while rendering.
        beta_sigma: standard deviation of the identities' shape coefficients: the spread of body shapes, i.e. how
            far apart two identities are in the one cue synthcc keeps through a change of clothes.
        on_stale: ``rebuild`` (default; one line says what changed) or ``error`` when the folder holds a set of
            other arguments or another body model (or one written by an older plugin version).

    Returns:
        The metadata as written to ``meta.json`` (see the module docstring), plus ``dataset_dir`` and
        ``rendered`` (images rendered by this call; 0 when the set was already complete).

    Raises:
        SynthCCError: invalid arguments.
        SynthCCStaleError: ``on_stale='error'`` and the folder holds another set (names the file and the diff).
        BodyModelError: body model files missing or unreadable.
        HeadlessGLError: no headless OpenGL for rendering.
    """
    if num_ids < 2 or outfits_per_id < 2 or num_cameras < 2 or poses_per_view < 1:
        raise SynthCCError("synthcc needs num_ids >= 2, outfits_per_id >= 2, num_cameras >= 2 and poses_per_view >= 1 "
                           f"(got {num_ids}, {outfits_per_id}, {num_cameras}, {poses_per_view})")
    if height < 16 or width < 8:
        raise SynthCCError(f"image size {height}x{width} is too small")
    if not beta_sigma > 0:
        raise SynthCCError(f"beta_sigma must be positive, got {beta_sigma}")
    check_stale_policy(on_stale, "on_stale", SynthCCError)
    show = progress  # the argument shadows the module's progress() helper inside this function
    t0 = time.time()
    dataset_dir = osp.join(osp.abspath(osp.expanduser(root)), DATASET_DIR)
    pose_pool = builtin_pose_pool().astype(np.float32)
    plan = _plan(num_ids, outfits_per_id, num_cameras, poses_per_view, seed, len(pose_pool), beta_sigma)
    genders = np.array(plan["genders"])
    models = {g: load_body_model(body_model_dir, g) for g in sorted(set(plan["genders"]))}
    desc = canonical_descriptors(models, plan["betas"], genders)

    args = {"num_ids": int(num_ids), "outfits_per_id": int(outfits_per_id), "num_cameras": int(num_cameras),
            "poses_per_view": int(poses_per_view), "height": int(height), "width": int(width), "seed": int(seed)}
    identities = [{"pid": pid, "gender": plan["genders"][pid], "betas": _round(plan["betas"][pid].tolist()),
                   "skin_tone": _round(list(SKIN_TONES[plan["skin"][pid]]), 4),
                   "split": "train" if pid in set(plan["train_ids"]) else "test",
                   "outfits": plan["assign"][pid], "labels": [int(x) for x in desc["labels"][pid]]}
                  for pid in range(num_ids)]
    meta: Dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "args": args,
        "beta_sigma": float(beta_sigma),
        "body_model": {g: {"path": osp.abspath(m.path), "sha256": file_sha256(m.path), "num_vertices": m.num_vertices}
                       for g, m in models.items()},
        "descriptor_pairs": [list(p) for p in DESCRIPTOR_PAIRS],
        "thresholds": _round(desc["thresholds"].tolist(), 8),
        "identities": identities,
        "train_ids": plan["train_ids"],
        "test_ids": plan["test_ids"],
        "outfit_pool": plan["pool"],
        "cameras": plan["cameras"],
        "images": plan["images"],
        "complete": True,  # only a finished build writes meta.json (older versions wrote it first, False)
    }
    meta["fingerprint"] = _fingerprint(meta)
    meta_path = osp.join(dataset_dir, META_NAME)
    paths = [osp.join(dataset_dir, im["file"]) for im in plan["images"]]

    if osp.isfile(meta_path):
        try:
            old = read_synthcc_meta(dataset_dir)
            diff = fingerprint_diff(as_fingerprint(old.get("fingerprint")), meta["fingerprint"])
        except SynthCCError as err:
            diff = [f"unreadable ({err})"]
        if apply_stale_policy(meta_path, diff, on_stale, "synthcc metadata", STALE_HINT, SynthCCStaleError):
            todo = [i for i, p in enumerate(paths) if not osp.isfile(p)]
            if not todo:
                logger.info("synthcc at %s is complete and up to date (%d images); nothing to do", dataset_dir,
                            len(paths))
                return dict(meta, dataset_dir=dataset_dir, rendered=0)
            logger.info("synthcc at %s: %d of %d images missing; rendering them", dataset_dir, len(todo), len(paths))
            _render(plan, models, pose_pool, todo, paths, height, width, show)
            return dict(meta, dataset_dir=dataset_dir, rendered=len(todo))
        # stale: the set is gone from here on (no metadata), until the rebuild writes the new one
        os.remove(meta_path)

    partial = PartialBuild(meta_path, meta["fingerprint"], "synthcc build", save_every_s=SAVE_EVERY_S)
    start, _ = partial.resume()
    if start:
        logger.info("resuming synthcc at %s from image %d of %d", dataset_dir, start, len(paths))
    else:
        removed = _clear_images(dataset_dir)
        if removed:
            logger.info("synthcc at %s: removed %d images of an earlier build", dataset_dir, removed)
    todo = list(range(start, len(paths)))
    for split in SPLITS:
        os.makedirs(osp.join(dataset_dir, split), exist_ok=True)
    rendered = [start]

    def one_done() -> None:
        rendered[0] += 1
        partial.step(rendered[0], dict)

    # images are rendered in index order, so 'done' images are always the first ones
    with partial.saved_on_error(lambda: (rendered[0], {})):
        _render(plan, models, pose_pool, todo, paths, height, width, show, one_done)
    _write_meta(meta_path, meta)
    partial.finish()
    dt = time.time() - t0
    logger.info("synthcc: rendered %d images in %.1f s (%.1f img/s) into %s", len(todo), dt,
                len(todo) / max(dt, 1e-9), dataset_dir)
    return dict(meta, dataset_dir=dataset_dir, rendered=len(todo))


@torch.no_grad()
def _render(plan: Dict[str, Any], models: Dict[str, BodyModel], pose_pool: np.ndarray, todo: List[int],
            paths: List[str], height: int, width: int, show: bool,
            on_image: Optional[Callable[[], None]] = None) -> None:
    """Renders the images ``todo`` of the plan in their order, one identity at a time (one batched posing per
    identity); ``on_image()`` is called after each image is written."""
    images = plan["images"]
    cams = plan["cameras"]
    backgrounds = [camera_background(c, height, width) for c in cams]
    # one topology for every gender (procedural and SMPL files alike), but keep it per model to be safe
    sub = {g: _subdivision(m.faces, SUBDIVISIONS) for g, m in models.items()}
    bones = {g: _bones(m) for g, m in models.items()}
    by_pid: Dict[int, List[int]] = {}
    for i in todo:
        by_pid.setdefault(int(images[i]["pid"]), []).append(i)
    bar = progress(range(len(todo)), total=len(todo), desc="synthcc", enabled=show)
    bar_iter = iter(bar)
    with MeshRenderer(height=height, width=width) as renderer:
        for pid, idx in by_pid.items():
            g = plan["genders"][pid]
            model, (steps, faces) = models[g], sub[g]
            betas = torch.as_tensor(plan["betas"][pid][None], dtype=torch.float32)
            canon = _subdivide(model.canonical_vertices(betas)[0].cpu().numpy().astype(np.float64), steps)
            joints = model.canonical_joints(betas)[0].cpu().numpy()
            poses = torch.as_tensor(pose_pool[[images[i]["pose_id"] for i in idx]])
            posed = model.posed_vertices(betas, poses).cpu().numpy().astype(np.float64)
            colors: Dict[int, np.ndarray] = {}
            for n, i in enumerate(idx):
                im = images[i]
                po = int(im["pool_outfit"])
                if po not in colors:
                    outfit = plan["pool"][po]
                    lab = _subdivide_labels(_regions(bones[g], outfit), steps)
                    skin = SKIN_TONES[plan["skin"][pid]]
                    colors[po] = _vertex_colors(canon, lab, joints, outfit, skin)
                cam = cams[im["camid"]]
                bg = backgrounds[im["camid"]]
                rgb, depth = renderer.render_rgbd(
                    _subdivide(posed[n], steps), faces, float(im["yaw_deg"]), float(im["distance_scale"]),
                    vertex_colors=colors[po], background=bg.mean((0, 1)), light_intensity=cam["light_intensity"],
                    ambient=cam["ambient"])
                # the renderer's background is flat; the camera's gradient replaces it where no surface was hit
                img = np.where((depth > 0)[..., None], rgb.astype(np.float64) / 255.0, bg)
                img = np.clip(img * np.asarray(cam["white_balance"]), 0.0, 1.0)
                _save_png(np.round(img * 255.0).astype(np.uint8), paths[i])
                if on_image is not None:
                    on_image()
                next(bar_iter, None)
    if hasattr(bar, "close"):
        bar.close()


# ------------------------------------------------------------------------------------ ground truth
def _per_image(root: str, splits: Sequence[str], field) -> Dict[str, Any]:
    """absolute image path -> ``field(identity record)`` for the images of ``splits``."""
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise SynthCCError(f"unknown synthcc split(s) {bad}; choose among {list(SPLITS)}")
    meta = read_synthcc_meta(root)
    dataset_dir = _dataset_dir(root)
    per_id = {int(r["pid"]): field(r) for r in meta["identities"]}
    return {osp.join(dataset_dir, im["file"]): per_id[int(im["pid"])] for im in meta["images"]
            if im["split"] in splits}


def synthcc_labels_by_path(root: str, splits: Sequence[str] = ("train",)) -> Dict[str, List[int]]:
    """Ground-truth descriptor labels of every image: its identity's 16 labels (0 = first phrase of the pair).

    Args:
        root: data root holding ``synthcc/`` (or that folder itself).
        splits: any of ``train``, ``query``, ``gallery``.

    Returns:
        absolute image path -> 16 labels, in the order of ``meta.json`` (identity, outfit, camera, pose).

    Raises:
        SynthCCError: missing metadata or an unknown split.
    """
    return _per_image(root, splits, lambda r: [int(x) for x in r["labels"]])


def synthcc_shapes_by_path(root: str, splits: Sequence[str] = ("train",)) -> Dict[str, List[float]]:
    """True shape coefficients of every image's identity (the betas it was rendered with).

    Args:
        root: data root holding ``synthcc/`` (or that folder itself).
        splits: any of ``train``, ``query``, ``gallery``.

    Returns:
        absolute image path -> the identity's 10 betas.

    Raises:
        SynthCCError: missing metadata or an unknown split.
    """
    return _per_image(root, splits, lambda r: [float(x) for x in r["betas"]])


def synthcc_ground_truth(root: str, split: str = "train") -> Tuple[List[str], torch.Tensor]:
    """Image paths of a split and their ground-truth descriptor labels (for a teacher cache without CLIP).

    Args:
        root: data root holding ``synthcc/``.
        split: ``train`` (default), ``query`` or ``gallery``.

    Returns:
        (sorted absolute paths [N], labels LongTensor [N, 16]).
    """
    by_path = synthcc_labels_by_path(root, (split,))
    paths = sorted(by_path)
    labels = torch.tensor([by_path[p] for p in paths], dtype=torch.long).reshape(len(paths), len(DESCRIPTOR_PAIRS))
    return paths, labels

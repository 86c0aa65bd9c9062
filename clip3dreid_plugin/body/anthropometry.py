"""Body measurements from a canonical (T-pose) SMPL(-format) mesh and its 24 joints.

All lengths are in metres, volumes in cubic metres. The mesh is expected in SMPL's frame (y up,
facing +z, left at +x) and in the T-pose (arms horizontal), so that horizontal slices below the
armpits cut only the torso (and the thighs near the hips).

==================  =========================================================================
measurement         definition
==================  =========================================================================
height              max y - min y of the vertices (crown to sole)
shoulder_width      distance between the shoulder joints (16, 17)
leg_length          mean height of the hip joints (1, 2) above the sole
torso_length        neck joint (12) y - pelvis joint (0) y
arm_length          shoulder -> elbow -> wrist -> hand joint chain (16-18-20-22), mean of both sides
neck_length         head joint (15) y - neck joint (12) y
waist_girth         horizontal torso girth at the spine1 joint (3): SMPL's spine1 sits where the WHO
                    protocol measures the waist, between the lowest rib and the iliac crest
waist_height        height of the spine1 joint above the sole
chest_girth         largest horizontal girth between spine2 (6) and a third of the way from spine3 up
                    to the shoulders (bust level)
chest_depth         front-to-back (z) extent of the chest slice
hip_girth           largest horizontal girth between 4 % of the height below the hip joints and the
                    pelvis joint (the tape passes around buttocks and thighs)
upper_arm_girth     girth of the cut perpendicular to the arm halfway between shoulder and elbow, mean
                    of both sides
volume              |sum of signed tetrahedra| over all faces (exact for a closed mesh; for the
                    procedural body, whose closed parts overlap at the joins, the sum of the parts)
==================  =========================================================================

A girth is the perimeter of the convex hull of the slice points, i.e. what a tape measure reads.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from clip3dreid_plugin.body.skeleton import J

__all__ = ["MEASUREMENT_NAMES", "measure_body", "measure_bodies", "mesh_volume", "slice_points", "unique_edges"]

MEASUREMENT_NAMES: Tuple[str, ...] = (
    "height", "shoulder_width", "leg_length", "torso_length", "arm_length", "neck_length", "waist_girth",
    "waist_height", "chest_girth", "chest_depth", "hip_girth", "upper_arm_girth", "volume",
)
_LEVELS = 15  # slices per search range (about 1 cm apart on an adult torso)


def unique_edges(faces: np.ndarray) -> np.ndarray:
    """Undirected edges [E, 2] of a triangle mesh with faces [F, 3]."""
    f = np.asarray(faces, dtype=np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def slice_points(vertices: np.ndarray, edges: np.ndarray, axis: int, level: float) -> np.ndarray:
    """Points [K, 3] where mesh edges cross the plane ``vertices[:, axis] == level``."""
    a, b = vertices[edges[:, 0]], vertices[edges[:, 1]]
    da, db = a[:, axis] - level, b[:, axis] - level
    # exactly one endpoint at or below the plane: a vertex lying on the plane (slices at ring heights)
    # is still found, through the edges that leave it upwards
    hit = (da <= 0) != (db <= 0)
    t = (da[hit] / (da[hit] - db[hit]))[:, None]
    return a[hit] + t * (b[hit] - a[hit])


def _hull_perimeter(points_2d: np.ndarray) -> float:
    if len(points_2d) < 3:
        return 0.0
    try:
        return float(ConvexHull(points_2d).area)  # in 2D, scipy's "area" is the perimeter
    except QhullError:  # collinear points: a degenerate slice
        return 0.0


def mesh_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Absolute signed-tetrahedron volume of a closed, consistently oriented mesh (m^3)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return float(abs(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0))


def _torso_girth(v: np.ndarray, edges: np.ndarray, y: float, x_centre: float, x_limit: float
                 ) -> Tuple[float, float]:
    """(girth, z extent) of the horizontal slice at ``y``, ignoring points beyond ``x_limit`` (hands, forearms)."""
    pts = slice_points(v, edges, 1, y)
    pts = pts[np.abs(pts[:, 0] - x_centre) < x_limit]
    if len(pts) < 3:
        return 0.0, 0.0
    return _hull_perimeter(pts[:, [0, 2]]), float(np.ptp(pts[:, 2]))


def measure_body(vertices: np.ndarray, faces: np.ndarray, joints: np.ndarray,
                 edges: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Measures one canonical body.

    Args:
        vertices: [V, 3] T-pose vertices (metres, SMPL frame).
        faces: [F, 3] triangles.
        joints: [24, 3] SMPL joints of the same body.
        edges: optional precomputed :func:`unique_edges` of ``faces`` (saves time over a batch).

    Returns:
        Dict with every name of :data:`MEASUREMENT_NAMES`.
    """
    v = np.asarray(vertices, dtype=np.float64)
    jt = np.asarray(joints, dtype=np.float64)
    e = unique_edges(faces) if edges is None else edges
    sole, crown = float(v[:, 1].min()), float(v[:, 1].max())
    height = crown - sole
    out: Dict[str, float] = {"height": height}
    out["shoulder_width"] = float(np.linalg.norm(jt[J.L_SHOULDER] - jt[J.R_SHOULDER]))
    out["leg_length"] = float(0.5 * (jt[J.L_HIP, 1] + jt[J.R_HIP, 1]) - sole)
    out["torso_length"] = float(jt[J.NECK, 1] - jt[J.PELVIS, 1])
    arms = []
    for chain in ((J.L_SHOULDER, J.L_ELBOW, J.L_WRIST, J.L_HAND), (J.R_SHOULDER, J.R_ELBOW, J.R_WRIST, J.R_HAND)):
        arms.append(float(np.linalg.norm(np.diff(jt[list(chain)], axis=0), axis=1).sum()))
    out["arm_length"] = float(np.mean(arms))
    out["neck_length"] = float(jt[J.HEAD, 1] - jt[J.NECK, 1])

    xc = float(jt[J.PELVIS, 0])
    # beyond 80 % of the way to the elbows only arms and hands remain at torso heights
    x_limit = 0.8 * 0.5 * (abs(jt[J.L_ELBOW, 0] - xc) + abs(jt[J.R_ELBOW, 0] - xc))
    y_pelvis, y2, y3 = jt[J.PELVIS, 1], jt[J.SPINE2, 1], jt[J.SPINE3, 1]
    y_sh = 0.5 * (jt[J.L_SHOULDER, 1] + jt[J.R_SHOULDER, 1])
    y_hip = 0.5 * (jt[J.L_HIP, 1] + jt[J.R_HIP, 1])

    # the WHO waist site (between lowest rib and iliac crest) is at SMPL's spine1 joint; a "narrowest slice"
    # rule would jump to the ribs or the pelvis on bodies with a belly
    y1 = float(jt[J.SPINE1, 1])
    out["waist_girth"], out["waist_height"] = _torso_girth(v, e, y1, xc, x_limit)[0], y1 - sole

    levels = np.linspace(y2, y3 + (y_sh - y3) / 3.0, _LEVELS)
    chest = max((_torso_girth(v, e, y, xc, x_limit) for y in levels), key=lambda t: t[0])
    out["chest_girth"], out["chest_depth"] = chest

    levels = np.linspace(y_hip - 0.04 * height, y_pelvis, _LEVELS)
    out["hip_girth"] = max(_torso_girth(v, e, y, xc, x_limit)[0] for y in levels)

    arm_g = []
    for sh, el in ((J.L_SHOULDER, J.L_ELBOW), (J.R_SHOULDER, J.R_ELBOW)):
        mid = 0.5 * (jt[sh] + jt[el])
        pts = slice_points(v, e, 0, float(mid[0]))
        near = np.linalg.norm(pts[:, 1:] - mid[1:], axis=1) < 0.25 * np.linalg.norm(jt[el] - jt[sh]) + 0.1
        arm_g.append(_hull_perimeter(pts[near][:, 1:]))
    out["upper_arm_girth"] = float(np.mean(arm_g))
    out["volume"] = mesh_volume(v, faces)
    return out


def measure_bodies(vertices: np.ndarray, faces: np.ndarray, joints: np.ndarray) -> Dict[str, np.ndarray]:
    """Measures a batch of canonical bodies sharing one topology.

    Args:
        vertices: [B, V, 3] T-pose vertices.
        faces: [F, 3] triangles.
        joints: [B, 24, 3] joints.

    Returns:
        Dict name -> float64 [B] for every name of :data:`MEASUREMENT_NAMES`.
    """
    v = np.asarray(vertices, dtype=np.float64)
    jt = np.asarray(joints, dtype=np.float64)
    if v.ndim != 3 or jt.shape != (len(v), 24, 3):
        raise ValueError(f"expected vertices [B, V, 3] and joints [B, 24, 3], got {v.shape} and {jt.shape}")
    edges = unique_edges(faces)
    rows = [measure_body(v[i], faces, jt[i], edges) for i in range(len(v))]
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in MEASUREMENT_NAMES}

"""A procedural, license-free body model written in the SMPL pickle format.

SMPL files are licensed and cannot ship with the project, yet the synthetic-body pipeline, the
quickstart and the tests need *a* body model with SMPL's interface. This module builds one: a
mannequin on the real SMPL 24-joint skeleton, in SMPL's canonical T-pose and frame (metres, y up,
facing +z, the person's left at +x, pelvis near ``(0, -0.23, 0)`` as in SMPL's template), with ten
shape directions that act like SMPL's first ten betas, and writes it as
``out_dir/smpl/SMPL_{NEUTRAL,MALE,FEMALE}.pkl`` with SMPL's keys so that ``smplx`` loads it
unchanged.

Geometry
    The body is a set of closed generalised cylinders ("tubes"): torso, neck, head, two arms (collar
    to finger tips, hand included), two legs (hip to just below the ankle) and two feet. Each tube
    is a sequence of rings (super-ellipses) placed at named stations on the skeleton, with extra
    rings interpolated between stations (radii by monotone cubic interpolation, so the profile is
    smooth), and closed by a cap vertex at each end. Every tube is watertight and outward-oriented,
    so the signed-tetrahedron volume of the mesh is the sum of the tube volumes; tubes overlap at
    the joins (e.g. the top of each thigh lies inside the torso), so that sum overestimates the
    volume of the union by a roughly constant fraction (~12 % for the neutral template, measured by
    Monte-Carlo winding numbers), which does not matter for descriptors measured relative to a
    population. Female bodies carry a bust and all bodies small gluteal and belly displacements on
    the torso.

Topology
    Ring counts and vertices per ring depend only on the resolution (chosen to match
    ``num_vertices``), never on shape or gender, so all three genders share one topology (as the
    SMPL files do) and shape directions are plain vertex offsets.

Shape space (``shapedirs[:, :, k]`` = central difference of the generator for one unit of beta_k)
    ====  ==============================================================================
    beta  effect of +1 (about one population standard deviation)
    ====  ==============================================================================
    0     overall size: all lengths +4 % (~7 cm of stature), all radii +2 %
    1     girth / weight: soft-tissue radii +10 % (torso, thighs most; wrists least), belly
    2     shoulder width: shoulder joints 1.3 cm further out, wider upper chest
    3     hip width: hip joints 0.8 cm further out, hip half-width +1.2 cm
    4     leg length: thigh and shank +5 %
    5     torso length: pelvis-to-neck segments +5 %
    6     arm length: upper arm, forearm and hand +5 %
    7     neck length: neck-to-head segment +18 %
    8     chest / bust: chest depth +0.6 cm, bust prominence +1 cm (+0.8 cm for male)
    9     waist: waist half-width and half-depth +1.2 cm, belly +0.6 cm
    ====  ==============================================================================

    Betas beyond these ten are not modelled (``shapedirs`` has 10 columns, like SMPL's
    ``*_lbs_10_207_*`` files).

Skinning and joints
    Each ring is bound to the bones of its tube's joint chain; near a joint the weight moves from
    the parent bone to the child bone along a smoothstep over a joint-specific half-width, so
    elbows and knees bend smoothly. ``J_regressor`` row ``j`` is a set of weights on the ring
    that sits on joint ``j`` (close to uniform, corrected by a minimum-norm least-squares step
    so that the template regresses the designed joint exactly); since rings move with the shape,
    the regressed joints follow the betas.

Pose correctives
    ``posedirs`` is all zeros: the mannequin has no pose-dependent blend shapes. Joints bend by
    linear blend skinning alone, which is adequate for the mild standing and walking poses the
    synthetic renders use.

Gender
    The male template is taller (1.78 m) with broader shoulders, narrower hips and thicker limbs;
    the female template (1.64 m) has narrower shoulders, wider hips, a narrower waist and a bust;
    the neutral template (1.71 m) sits in between.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import pickle
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse
from scipy.interpolate import PchipInterpolator

from clip3dreid_plugin.body.skeleton import PARENTS, J
from clip3dreid_plugin.errors import InputError
from clip3dreid_plugin.shape import NUM_BETAS
from clip3dreid_plugin.utils.io import atomic_write

__all__ = [
    "GENDERS",
    "BETA_EFFECTS",
    "TEMPLATE_HEIGHTS",
    "body_params",
    "build_procedural_model",
    "write_procedural_smpl",
    "procedural_vertex_count",
]

logger = logging.getLogger(__name__)

GENDERS = ("neutral", "male", "female")
NUM_POSE_BASIS = 207  # 23 joints x 9 rotation-matrix entries, as in SMPL
PELVIS_POSITION = np.array([0.0, -0.23, 0.0])  # where SMPL's template has its pelvis joint
TEMPLATE_HEIGHTS = {"neutral": 1.71, "male": 1.78, "female": 1.64}  # stature in metres at betas = 0
FORMAT_VERSION = 1

# Base shape parameters per gender. Lengths are in metres at scale 1 (multiplied by the overall scale),
# widths/radii in metres before the girth factors. Shared keys first, gendered values after.
_COMMON = dict(size=0.0, girth=0.0, leg=1.0, torso=1.0, arm=1.0, neck=1.0, belly=0.0)
_BASE: Dict[str, Dict[str, float]] = {
    "neutral": dict(_COMMON, shoulder_x=0.175, hip_x=0.075, hip_w=0.170, hip_d=0.106, waist_w=0.133, waist_d=0.098,
                    chest_w=0.157, chest_d=0.110, bust=0.018, glute=0.012, limb=1.0, neck_r=0.055),
    "male": dict(_COMMON, shoulder_x=0.190, hip_x=0.070, hip_w=0.160, hip_d=0.102, waist_w=0.140, waist_d=0.102,
                 chest_w=0.167, chest_d=0.116, bust=0.010, glute=0.010, limb=1.07, neck_r=0.060),
    "female": dict(_COMMON, shoulder_x=0.160, hip_x=0.080, hip_w=0.180, hip_d=0.112, waist_w=0.122, waist_d=0.092,
                   chest_w=0.147, chest_d=0.106, bust=0.032, glute=0.016, limb=0.93, neck_r=0.050),
}

# Parameter change produced by beta_k = +1 (see the module docstring table).
BETA_EFFECTS: Tuple[Dict[str, float], ...] = (
    dict(size=0.04),
    dict(girth=0.10, belly=0.010),
    dict(shoulder_x=0.013, chest_w=0.006),
    dict(hip_x=0.008, hip_w=0.012),
    dict(leg=0.05),
    dict(torso=0.05),
    dict(arm=0.05),
    dict(neck=0.18),
    dict(chest_d=0.006, bust=0.010),
    dict(waist_w=0.012, waist_d=0.012, belly=0.006),
)
# beta 8 on a male body moves the pectorals less than a bust
_MALE_BUST_PER_BETA = 0.008


def body_params(gender: str, betas: Optional[Sequence[float]] = None) -> Dict[str, float]:
    """Shape parameters of the generator for ``gender`` moved by ``betas`` (linear in the betas).

    Args:
        gender: ``neutral`` | ``male`` | ``female``.
        betas: up to 10 coefficients; missing ones are 0.

    Returns:
        Parameter dict consumed by the generator (includes the gender's stature calibration).
    """
    gender = _check_gender(gender)
    p = dict(_BASE[gender])
    p["scale"] = _calibration(gender)
    for k, b in enumerate(list(betas if betas is not None else [])[:NUM_BETAS]):
        for key, delta in BETA_EFFECTS[k].items():
            if gender == "male" and key == "bust":
                delta = _MALE_BUST_PER_BETA
            p[key] += float(b) * delta
    return p


def _check_gender(gender: str) -> str:
    g = str(gender).lower()
    if g not in GENDERS:
        raise ValueError(f"gender must be one of {GENDERS}, got {gender!r}")
    return g


# ------------------------------------------------------------------------------------------ skeleton
def _skeleton(p: Dict[str, float]) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Joint positions [24, 3] (pelvis at the origin) and a few extra landmarks of the T-pose."""
    sc = p["scale"] * (1.0 + p["size"])
    leg, tor, arm = p["leg"], p["torso"], p["arm"]
    thigh, shank, ankle_h = 0.40 * leg * sc, 0.41 * leg * sc, 0.075 * sc
    hip_up = 0.075 * tor * sc
    sp1, sp2, sp3, to_neck = 0.11 * tor * sc, 0.13 * tor * sc, 0.055 * tor * sc, 0.17 * tor * sc
    head_up = 0.075 * p["neck"] * sc

    jt = np.zeros((24, 3))
    y1, y2, y3 = sp1, sp1 + sp2, sp1 + sp2 + sp3
    yn = y3 + to_neck
    jt[J.SPINE1] = (0.0, y1, 0.0)
    jt[J.SPINE2] = (0.0, y2, 0.0)
    jt[J.SPINE3] = (0.0, y3, 0.0)
    jt[J.NECK] = (0.0, yn, -0.01 * sc)
    jt[J.HEAD] = (0.0, yn + head_up, 0.015 * sc)
    for side, (hip, knee, ankle, foot) in ((1, (J.L_HIP, J.L_KNEE, J.L_ANKLE, J.L_FOOT)),
                                           (-1, (J.R_HIP, J.R_KNEE, J.R_ANKLE, J.R_FOOT))):
        hx = p["hip_x"] * sc
        jt[hip] = (side * hx, -hip_up, 0.0)
        jt[knee] = (side * (hx + 0.02 * sc), -hip_up - thigh, 0.005 * sc)
        jt[ankle] = (side * (hx + 0.025 * sc), -hip_up - thigh - shank, -0.02 * sc)
        sole = jt[ankle, 1] - ankle_h
        jt[foot] = (side * (hx + 0.035 * sc), sole + 0.022 * sc, jt[ankle, 2] + 0.12 * sc)
    ys = yn - 0.06 * sc
    tips = {}
    for side, (collar, sh, el, wr, hand) in ((1, (J.L_COLLAR, J.L_SHOULDER, J.L_ELBOW, J.L_WRIST, J.L_HAND)),
                                             (-1, (J.R_COLLAR, J.R_SHOULDER, J.R_ELBOW, J.R_WRIST, J.R_HAND))):
        jt[collar] = (side * 0.07 * sc, ys - 0.03 * sc, -0.005 * sc)
        jt[sh] = (side * p["shoulder_x"] * sc, ys, -0.01 * sc)
        jt[el] = jt[sh] + (side * 0.26 * arm * sc, -0.02 * sc, -0.01 * sc)
        jt[wr] = jt[el] + (side * 0.245 * arm * sc, 0.005 * sc, 0.01 * sc)
        jt[hand] = jt[wr] + (side * 0.085 * arm * sc, -0.005 * sc, 0.0)
        tips["left" if side > 0 else "right"] = jt[hand] + (side * 0.095 * arm * sc, 0.0, 0.0)
    extra = {"sole_y": np.array(jt[J.L_ANKLE, 1] - ankle_h), "left_tip": tips["left"], "right_tip": tips["right"],
             "scale": np.array(sc)}
    return jt, extra


# ------------------------------------------------------------------------------------------ tubes
@dataclass
class _Tube:
    """A closed generalised cylinder: rings at named stations plus interpolated rings and two caps."""

    name: str
    stations: Tuple[str, ...]
    centres: np.ndarray  # [S, 3] ring centres at the stations
    radii: np.ndarray  # [S, 2] half-extents along u and v
    u: np.ndarray  # [3] first ring axis
    v: np.ndarray  # [3] second ring axis ("depth": bumps push along +v / -v)
    around: int  # vertices per ring at resolution 1
    chain: Tuple[Tuple[int, float], ...]  # (joint id, blend half-width); joint k's bone starts at joint k
    chain_points: np.ndarray  # [len(chain), 3] joint positions of the chain
    joint_rings: Tuple[Tuple[int, str], ...]  # (joint id, station whose ring regresses it)
    exponent: float = 2.0  # super-ellipse exponent (2 = ellipse, larger = boxier)
    caps: Tuple[float, float] = (0.3, 0.3)  # cap bulge along the axis, as a fraction of the end ring's radius
    bumps: List[Tuple[float, float, float, float, float, float]] = field(default_factory=list)
    # (amplitude, centre x, centre y, sigma x, sigma y, side): displacement along side * v of the front
    # (side +1) or back (side -1) half of the rings, Gaussian in world (x, y)

    @property
    def axis(self) -> np.ndarray:
        d = self.centres[-1] - self.centres[0]
        return d / np.linalg.norm(d)


def _lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return a + (b - a) * t


def _tubes(p: Dict[str, float]) -> List[_Tube]:
    """All tubes of the body for parameters ``p`` (pelvis at the origin)."""
    jt, extra = _skeleton(p)
    sc = float(extra["scale"])
    rs = 1.0 + 0.5 * p["size"]  # radii grow half as fast as lengths with overall size
    g = p["girth"]

    def soft(r: float, fat: float) -> float:
        # soft-tissue radius: `fat` says how strongly this station responds to girth
        return r * rs * (1.0 + g * fat)

    ex, ey, ez = np.eye(3)
    tubes: List[_Tube] = []

    # -------------------------------------------------------------- torso (bottom -> top)
    yh, y1, y2, y3 = jt[J.L_HIP, 1], jt[J.SPINE1, 1], jt[J.SPINE2, 1], jt[J.SPINE3, 1]
    yn, ys = jt[J.NECK, 1], jt[J.L_SHOULDER, 1]
    sx = p["shoulder_x"] * sc
    hw, hd, ww, wd, cw, cd = p["hip_w"], p["hip_d"], p["waist_w"], p["waist_d"], p["chest_w"], p["chest_d"]
    rows = [  # name, y, half-width, half-depth
        ("crotch", yh - 0.08 * sc, soft(0.50 * hw, 0.8), soft(0.62 * hd, 0.8)),
        ("hip_low", yh - 0.045 * sc, soft(0.86 * hw, 0.9), soft(0.92 * hd, 0.9)),
        ("hip", yh, soft(hw, 0.9), soft(hd, 0.9)),
        ("pelvis", 0.0, soft(0.5 * (hw + ww) + 0.004, 0.9), soft(0.5 * (hd + wd), 1.0)),
        ("waist", 0.75 * y1, soft(ww, 1.1), soft(wd, 1.2)),
        ("spine1", y1, soft(1.01 * ww, 1.1), soft(wd, 1.15)),
        ("spine2", y2, soft(0.5 * (ww + cw) + 0.004, 1.0), soft(0.5 * (wd + cd), 1.0)),
        ("spine3", y3, soft(cw, 0.8), soft(cd, 0.8)),
        ("chest_up", y3 + 0.35 * (ys - y3), soft(1.02 * cw, 0.7), soft(0.96 * cd, 0.7)),
        ("armpit", y3 + 0.72 * (ys - y3), 0.5 * (soft(cw, 0.6) + sx - 0.02 * sc), soft(0.88 * cd, 0.6)),
        ("shoulder", ys, sx - 0.025 * sc + soft(0.012, 1.0), soft(0.72 * cd, 0.5)),
        ("trapezius", ys + 0.03 * sc, 0.5 * sx + soft(0.02, 1.0), soft(0.58 * cd, 0.5)),
        ("top", yn + 0.008 * sc, soft(0.065, 0.5), soft(0.055, 0.5)),
    ]
    bumps = []
    yb = y3 + 0.02 * sc
    for side in (1.0, -1.0):
        bumps.append((p["bust"], side * 0.085 * sc, yb, 0.05 * sc, 0.045 * sc, 1.0))
        bumps.append((p["glute"], side * 0.07 * sc, yh + 0.01 * sc, 0.06 * sc, 0.06 * sc, -1.0))
    belly = p["belly"] + 0.012 * g  # weight settles on the belly first
    bumps.append((belly, 0.0, 0.6 * y1, 0.09 * sc, 0.07 * sc, 1.0))
    tubes.append(_Tube(
        name="torso", stations=tuple(r[0] for r in rows),
        centres=np.array([[0.0, r[1], 0.0] for r in rows]), radii=np.array([[r[2], r[3]] for r in rows]),
        u=ex, v=ez, around=22, exponent=2.4, caps=(0.35, 0.25),
        chain=((J.PELVIS, 0.0), (J.SPINE1, 0.05 * sc), (J.SPINE2, 0.05 * sc), (J.SPINE3, 0.05 * sc),
               (J.NECK, 0.02 * sc)),
        chain_points=jt[[J.PELVIS, J.SPINE1, J.SPINE2, J.SPINE3, J.NECK]],
        joint_rings=((J.PELVIS, "pelvis"), (J.SPINE1, "spine1"), (J.SPINE2, "spine2"), (J.SPINE3, "spine3")),
        bumps=bumps))

    # -------------------------------------------------------------- neck and head (bottom -> top)
    neck_r = p["neck_r"] * rs * (1.0 + 0.6 * g)
    jn, jh = jt[J.NECK], jt[J.HEAD]
    tubes.append(_Tube(
        name="neck", stations=("base", "neck", "mid", "top"),
        centres=np.array([jn - (0.0, 0.05 * sc, 0.0), jn, 0.5 * (jn + jh), jh + (0.0, 0.03 * sc, 0.0)]),
        radii=np.array([[1.1, 1.05], [1.0, 1.0], [0.93, 0.95], [0.9, 0.95]]) * neck_r,
        u=ex, v=ez, around=10, caps=(0.0, 0.0),
        chain=((J.SPINE3, 0.0), (J.NECK, 0.025 * sc), (J.HEAD, 0.025 * sc)),
        chain_points=jt[[J.SPINE3, J.NECK, J.HEAD]], joint_rings=((J.NECK, "neck"),)))
    hs = sc * (1.0 + 0.15 * g)  # heads barely change with weight
    head_rows = [  # name, height above the head joint, half-width, half-depth, z offset of the ring centre
        ("chin", -0.03, 0.035, 0.045, 0.012),
        ("jaw", 0.0, 0.055, 0.068, 0.0),
        ("mouth", 0.04, 0.066, 0.088, 0.004),
        ("cheek", 0.09, 0.075, 0.098, -0.002),
        ("temple", 0.14, 0.077, 0.099, -0.008),
        ("crown_low", 0.18, 0.065, 0.085, -0.012),
        ("crown", 0.205, 0.04, 0.052, -0.014),
    ]
    tubes.append(_Tube(
        name="head", stations=tuple(r[0] for r in head_rows),
        centres=np.array([jh + (0.0, r[1] * sc, r[4] * sc) for r in head_rows]),
        radii=np.array([[r[2] * hs, r[3] * hs] for r in head_rows]),
        u=ex, v=ez, around=14, caps=(0.25, 0.45),
        chain=((J.NECK, 0.0), (J.HEAD, 0.03 * sc)), chain_points=jt[[J.NECK, J.HEAD]],
        joint_rings=((J.HEAD, "jaw"),)))

    # -------------------------------------------------------------- legs and feet
    for side, (hip, knee, ankle, foot), nm in ((1, (J.L_HIP, J.L_KNEE, J.L_ANKLE, J.L_FOOT), "left"),
                                               (-1, (J.R_HIP, J.R_KNEE, J.R_ANKLE, J.R_FOOT), "right")):
        lf = p["limb"]
        jhip, jkn, jan = jt[hip], jt[knee], jt[ankle]
        leg_rows = [  # name, centre, half-width (x), half-depth (z)
            ("top", jhip + (0.0, 0.06 * sc, 0.0), soft(0.080 * lf, 1.2), soft(0.085 * lf, 1.2)),
            ("hip", jhip, soft(0.094 * lf, 1.2), soft(0.094 * lf, 1.2)),
            ("thigh_up", _lerp(jhip, jkn, 0.25), soft(0.086 * lf, 1.2), soft(0.088 * lf, 1.2)),
            ("thigh_mid", _lerp(jhip, jkn, 0.55), soft(0.072 * lf, 1.1), soft(0.076 * lf, 1.1)),
            ("knee_up", _lerp(jhip, jkn, 0.85), soft(0.056 * lf, 0.8), soft(0.060 * lf, 0.8)),
            ("knee", jkn, soft(0.050 * lf, 0.6), soft(0.053 * lf, 0.6)),
            ("calf", _lerp(jkn, jan, 0.30) - (0.0, 0.0, 0.008 * sc), soft(0.054 * lf, 0.8), soft(0.060 * lf, 0.8)),
            ("shin_low", _lerp(jkn, jan, 0.72), soft(0.038 * lf, 0.5), soft(0.040 * lf, 0.5)),
            ("ankle", jan, soft(0.030 * lf, 0.3), soft(0.033 * lf, 0.3)),
            ("bottom", jan - (0.0, 0.04 * sc, 0.0), soft(0.028 * lf, 0.3), soft(0.030 * lf, 0.3)),
        ]
        tubes.append(_Tube(
            name=f"{nm}_leg", stations=tuple(r[0] for r in leg_rows), centres=np.array([r[1] for r in leg_rows]),
            radii=np.array([[r[2], r[3]] for r in leg_rows]), u=ex, v=ez, around=12, caps=(0.2, 0.1),
            chain=((J.PELVIS, 0.0), (hip, 0.06 * sc), (knee, 0.05 * sc), (ankle, 0.03 * sc)),
            chain_points=jt[[J.PELVIS, hip, knee, ankle]],
            joint_rings=((hip, "hip"), (knee, "knee"), (ankle, "ankle"))))
        sole = float(extra["sole_y"])
        fx = jt[foot, 0]
        fz0 = jan[2]
        fs = sc * (1.0 + 0.2 * g)
        foot_rows = [  # name, z relative to the ankle, half-width, half-height (centre sits on the sole)
            ("heel", -0.065, 0.022, 0.022), ("heel_up", -0.04, 0.032, 0.035), ("instep", 0.0, 0.036, 0.045),
            ("arch", 0.06, 0.042, 0.035), ("ball", 0.12, 0.045, 0.022), ("toes", 0.175, 0.035, 0.015),
            ("tip", 0.20, 0.02, 0.010),
        ]
        centres = []
        for name, z, _, hh in foot_rows:
            x = _lerp(jan[0], fx, np.clip((z + 0.065) / 0.185, 0.0, 1.0))
            centres.append((x, sole + hh * fs, fz0 + z * sc))
        centres = np.array(centres)
        centres[4] = jt[foot]  # the ball ring carries the foot joint
        tubes.append(_Tube(
            name=f"{nm}_foot", stations=tuple(r[0] for r in foot_rows), centres=centres,
            radii=np.array([[r[2] * fs, r[3] * fs] for r in foot_rows]), u=ex, v=ey, around=10, caps=(0.3, 0.3),
            chain=((ankle, 0.0), (foot, 0.03 * sc)), chain_points=jt[[ankle, foot]],
            joint_rings=((foot, "ball"),)))

    # -------------------------------------------------------------- arms (collar -> finger tips)
    for side, (collar, sh, el, wr, hand), nm in (
            (1, (J.L_COLLAR, J.L_SHOULDER, J.L_ELBOW, J.L_WRIST, J.L_HAND), "left"),
            (-1, (J.R_COLLAR, J.R_SHOULDER, J.R_ELBOW, J.R_WRIST, J.R_HAND), "right")):
        af = p["limb"]
        tip = extra[f"{nm}_tip"]
        jc, js, je, jw, jhd = jt[collar], jt[sh], jt[el], jt[wr], jt[hand]
        arm_rows = [  # name, centre, half-height (y), half-depth (z)
            ("collar", jc, soft(0.045 * af, 0.8), soft(0.050 * af, 0.8)),
            ("shoulder", js, soft(0.056 * af, 0.9), soft(0.058 * af, 0.9)),
            ("deltoid", _lerp(js, je, 0.2), soft(0.050 * af, 1.0), soft(0.052 * af, 1.0)),
            ("biceps", _lerp(js, je, 0.55), soft(0.044 * af, 1.0), soft(0.045 * af, 1.0)),
            ("elbow", je, soft(0.037 * af, 0.6), soft(0.039 * af, 0.6)),
            ("forearm", _lerp(je, jw, 0.25), soft(0.040 * af, 0.7), soft(0.043 * af, 0.7)),
            ("wrist", jw, soft(0.022 * af, 0.3), soft(0.030 * af, 0.3)),
            ("hand", jhd, soft(0.016 * af, 0.3), soft(0.044 * af, 0.3)),
            ("fingers", _lerp(jhd, tip, 0.5), soft(0.012 * af, 0.2), soft(0.040 * af, 0.2)),
            ("tip", tip, soft(0.008 * af, 0.2), soft(0.028 * af, 0.2)),
        ]
        tubes.append(_Tube(
            name=f"{nm}_arm", stations=tuple(r[0] for r in arm_rows), centres=np.array([r[1] for r in arm_rows]),
            radii=np.array([[r[2], r[3]] for r in arm_rows]), u=ey, v=ez, around=10, caps=(0.0, 0.4),
            chain=((collar, 0.0), (sh, 0.07 * sc), (el, 0.04 * sc), (wr, 0.025 * sc), (hand, 0.02 * sc)),
            chain_points=jt[[collar, sh, el, wr, hand]],
            joint_rings=((collar, "collar"), (sh, "shoulder"), (el, "elbow"), (wr, "wrist"), (hand, "hand"))))
    return tubes


# ------------------------------------------------------------------------------------------ topology
@dataclass
class _TubeTopology:
    around: int  # vertices per ring
    ring_t: np.ndarray  # [R] station parameter of each ring (station i at t = i)
    first_vertex: int  # index of the tube's first vertex in the mesh
    station_rings: Dict[str, int]  # station name -> ring index
    flip: bool  # reverse the winding so that face normals point outwards

    @property
    def num_rings(self) -> int:
        return len(self.ring_t)

    @property
    def num_vertices(self) -> int:
        return self.num_rings * self.around + 2


@dataclass
class _Topology:
    tubes: List[_TubeTopology]
    faces: np.ndarray  # [F, 3]
    num_vertices: int


_RING_SPACING = 0.05  # metres between rings at resolution 1


def _topology(resolution: float) -> _Topology:
    """Ring layout and faces for ``resolution``; depends only on the neutral template's lengths."""
    # uncalibrated neutral parameters: fixed constants, so the layout never depends on the stature calibration
    ref = _tubes(dict(_BASE["neutral"], scale=1.0))
    spacing = _RING_SPACING / resolution
    out: List[_TubeTopology] = []
    faces: List[np.ndarray] = []
    start = 0
    for tube in ref:
        n = max(6, 2 * int(round(tube.around * resolution / 2.0)))
        ts: List[float] = []
        station_rings: Dict[str, int] = {}
        for i in range(len(tube.stations)):
            station_rings[tube.stations[i]] = len(ts)
            ts.append(float(i))
            if i + 1 < len(tube.stations):
                seg = float(np.linalg.norm(tube.centres[i + 1] - tube.centres[i]))
                extra = max(0, int(round(seg / spacing)) - 1)
                ts.extend(i + (k + 1) / (extra + 1) for k in range(extra))
        # rings run counter-clockwise around cross(u, v); the faces face outwards when that is the tube axis
        flip = bool(np.dot(np.cross(tube.u, tube.v), tube.axis) < 0)
        topo = _TubeTopology(around=n, ring_t=np.array(ts), first_vertex=start, station_rings=station_rings,
                             flip=flip)
        faces.append(_tube_faces(topo))
        out.append(topo)
        start += topo.num_vertices
    return _Topology(tubes=out, faces=np.concatenate(faces).astype(np.int64), num_vertices=start)


def _tube_faces(topo: _TubeTopology) -> np.ndarray:
    """Quads between consecutive rings (two triangles each) plus a triangle fan per cap."""
    n, r = topo.around, topo.num_rings
    base = topo.first_vertex
    k = np.arange(n)
    k1 = (k + 1) % n
    tris = []
    for i in range(r - 1):
        a, b = base + i * n + k, base + i * n + k1
        c, d = base + (i + 1) * n + k1, base + (i + 1) * n + k
        tris.append(np.stack([a, b, c], 1))
        tris.append(np.stack([a, c, d], 1))
    cap0, cap1 = base + r * n, base + r * n + 1
    tris.append(np.stack([np.full(n, cap0), base + k1, base + k], 1))
    last = base + (r - 1) * n
    tris.append(np.stack([np.full(n, cap1), last + k, last + k1], 1))
    out = np.concatenate(tris)
    return out[:, ::-1] if topo.flip else out


# ------------------------------------------------------------------------------------------ geometry
def _superellipse(n: int, exponent: float) -> np.ndarray:
    """[n, 2] unit super-ellipse points; symmetric, so every ring's vertex mean is its centre."""
    th = 2.0 * np.pi * np.arange(n) / n
    c, s = np.cos(th), np.sin(th)
    e = 2.0 / exponent
    return np.stack([np.sign(c) * np.abs(c) ** e, np.sign(s) * np.abs(s) ** e], 1)


def _place(tubes: List[_Tube], topo: _Topology) -> np.ndarray:
    """Vertices [V, 3] of ``tubes`` laid out on ``topo`` (pelvis at the origin)."""
    verts = np.zeros((topo.num_vertices, 3))
    for tube, tt in zip(tubes, topo.tubes):
        idx = np.arange(len(tube.stations), dtype=float)
        radii = PchipInterpolator(idx, tube.radii, axis=0)(tt.ring_t)  # [R, 2]
        centres = np.stack([np.interp(tt.ring_t, idx, tube.centres[:, d]) for d in range(3)], 1)  # [R, 3]
        unit = _superellipse(tt.around, tube.exponent)  # [n, 2]
        local_u = radii[:, None, 0] * unit[None, :, 0]  # [R, n]
        local_v = radii[:, None, 1] * unit[None, :, 1]
        ring = centres[:, None, :] + local_u[..., None] * tube.u + local_v[..., None] * tube.v  # [R, n, 3]
        if tube.bumps:
            front = unit[None, :, 1]  # +1 at the front (+v), -1 at the back
            disp = np.zeros(ring.shape[:2])
            for amp, cx, cy, sx, sy, side in tube.bumps:
                gauss = np.exp(-0.5 * (((ring[..., 0] - cx) / sx) ** 2 + ((ring[..., 1] - cy) / sy) ** 2))
                disp += side * amp * gauss * np.clip(side * front, 0.0, None) ** 1.5  # outwards on its side
            ring = ring + disp[..., None] * tube.v
        a = tube.axis
        cap0 = centres[0] - a * tube.caps[0] * radii[0].mean()
        cap1 = centres[-1] + a * tube.caps[1] * radii[-1].mean()
        block = np.concatenate([ring.reshape(-1, 3), cap0[None], cap1[None]])
        verts[tt.first_vertex: tt.first_vertex + tt.num_vertices] = block
    return verts


def _generate(p: Dict[str, float], topo: _Topology) -> Tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] and designed joints [24, 3] in SMPL's frame (pelvis at PELVIS_POSITION)."""
    tubes = _tubes(p)
    verts = _place(tubes, topo) + PELVIS_POSITION
    joints, _ = _skeleton(p)
    return verts, joints + PELVIS_POSITION


def _height(p: Dict[str, float], topo: _Topology) -> float:
    v, _ = _generate(p, topo)
    return float(v[:, 1].max() - v[:, 1].min())


_CALIBRATION: Dict[str, float] = {}


def _calibration(gender: str) -> float:
    """Length scale that gives the gender's template its target stature (computed once, cached)."""
    if gender not in _CALIBRATION:
        # every length scales with `scale`, so one evaluation at scale 1 gives the factor; the stature runs
        # from the head-top cap to the sole, which the ring resolution barely moves (< 1 mm)
        h = _height(dict(_BASE[gender], scale=1.0), _topology(1.0))
        _CALIBRATION[gender] = TEMPLATE_HEIGHTS[gender] / h
    return _CALIBRATION[gender]


# ------------------------------------------------------------------------------------------ rigging
def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _skinning_weights(tubes: List[_Tube], topo: _Topology) -> np.ndarray:
    """Linear-blend-skinning weights [V, 24]: each ring follows its tube's joint chain."""
    w = np.zeros((topo.num_vertices, 24))
    for tube, tt in zip(tubes, topo.tubes):
        idx = np.arange(len(tube.stations), dtype=float)
        centres = np.stack([np.interp(tt.ring_t, idx, tube.centres[:, d]) for d in range(3)], 1)
        axis = tube.axis
        s_ring = (centres - tube.centres[0]) @ axis  # [R]
        s_joint = (tube.chain_points - tube.centres[0]) @ axis
        ring_w = np.zeros((tt.num_rings, 24))
        ring_w[:, tube.chain[0][0]] = 1.0
        for (jid, half), s_j in zip(tube.chain[1:], s_joint[1:]):
            t = _smoothstep((s_ring - (s_j - half)) / (2.0 * half))[:, None]
            onehot = np.zeros(24)
            onehot[jid] = 1.0
            ring_w = (1.0 - t) * ring_w + t * onehot
        per_vertex = np.repeat(ring_w, tt.around, axis=0)
        block = np.concatenate([per_vertex, ring_w[:1], ring_w[-1:]])
        w[tt.first_vertex: tt.first_vertex + tt.num_vertices] = block
    return w


def _joint_regressor(tubes: List[_Tube], topo: _Topology, verts: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """J_regressor [24, V]: near-uniform weights on each joint's ring that regress the template exactly."""
    reg = np.zeros((24, topo.num_vertices))
    for tube, tt in zip(tubes, topo.tubes):
        for jid, station in tube.joint_rings:
            r = tt.station_rings[station]
            ids = tt.first_vertex + r * tt.around + np.arange(tt.around)
            pts = verts[ids]  # [n, 3]
            a = np.concatenate([pts.T, np.ones((1, len(ids)))])  # [4, n]
            u = np.full(len(ids), 1.0 / len(ids))
            rhs = np.concatenate([joints[jid], [1.0]]) - a @ u
            # minimum-norm correction keeps the weights close to uniform (bumps move ring centroids slightly)
            corr = np.linalg.lstsq(a, rhs, rcond=None)[0]
            reg[jid, ids] = u + corr
    missing = [j for j in range(24) if not reg[j].any()]
    if missing:  # pragma: no cover - a bug in the tube table, not a user error
        raise AssertionError(f"joints without a regressor ring: {missing}")
    return reg


def _landmarks(verts: np.ndarray, joints: np.ndarray, topo: _Topology, tubes: List[_Tube]) -> Dict[str, int]:
    """Vertex ids for the extra joints smplx selects (nose, eyes, ears, toes, heels, finger tips)."""
    def nearest(point: np.ndarray, tube_name: str) -> int:
        k = [t.name for t in tubes].index(tube_name)
        tt = topo.tubes[k]
        ids = np.arange(tt.first_vertex, tt.first_vertex + tt.num_vertices)
        return int(ids[np.argmin(np.linalg.norm(verts[ids] - point, axis=1))])

    h = joints[J.HEAD]
    out = {
        "nose": nearest(h + (0.0, 0.07, 0.15), "head"),
        "reye": nearest(h + (-0.035, 0.10, 0.15), "head"),
        "leye": nearest(h + (0.035, 0.10, 0.15), "head"),
        "rear": nearest(h + (-0.12, 0.09, 0.0), "head"),
        "lear": nearest(h + (0.12, 0.09, 0.0), "head"),
    }
    for side, sgn in (("L", 1.0), ("R", -1.0)):
        nm = "left" if sgn > 0 else "right"
        ball = joints[J.L_FOOT if sgn > 0 else J.R_FOOT]
        out[f"{side}BigToe"] = nearest(ball + (-sgn * 0.02, 0.0, 0.12), f"{nm}_foot")
        out[f"{side}SmallToe"] = nearest(ball + (sgn * 0.03, 0.0, 0.08), f"{nm}_foot")
        out[f"{side}Heel"] = nearest(ball + (0.0, 0.0, -0.25), f"{nm}_foot")
        hand = joints[J.L_HAND if sgn > 0 else J.R_HAND]
        for k, finger in enumerate(("thumb", "index", "middle", "ring", "pinky")):
            # finger tips spread across the hand's width (z), thumb at the front
            out[f"{nm[0]}{finger}"] = nearest(hand + (sgn * 0.12, 0.0, 0.04 - 0.02 * k), f"{nm}_arm")
    return out


# ------------------------------------------------------------------------------------------ public API
def procedural_vertex_count(resolution: float) -> int:
    """Number of mesh vertices at ``resolution``."""
    return _topology(resolution).num_vertices


def _resolution_for(num_vertices: int) -> float:
    """Smallest resolution whose vertex count reaches ``num_vertices`` (bisection; counts are monotone steps)."""
    lo, hi = 0.2, 1.0
    while procedural_vertex_count(hi) < num_vertices:
        hi *= 2.0
        if hi > 64:
            raise InputError(f"num_vertices={num_vertices} is too large for the procedural body")
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if procedural_vertex_count(mid) < num_vertices:
            lo = mid
        else:
            hi = mid
    return hi


def build_procedural_model(gender: str = "neutral", num_vertices: int = 1000,
                           resolution: Optional[float] = None) -> Dict[str, object]:
    """Builds the SMPL-format arrays of the procedural body.

    Args:
        gender: ``neutral`` | ``male`` | ``female``.
        num_vertices: approximate vertex count (the smallest layout with at least this many is used).
        resolution: explicit layout resolution; overrides ``num_vertices``.

    Returns:
        Dict with SMPL's keys: ``v_template`` [V, 3], ``shapedirs`` [V, 3, 10], ``posedirs`` [V, 3, 207]
        (zeros), ``J_regressor`` (scipy CSC [24, V]), ``weights`` [V, 24], ``kintree_table`` [2, 24],
        ``f`` [F, 3] (uint32), plus ``J`` [24, 3] (template joints, as in SMPL files), ``vertex_ids``
        (landmarks for smplx's extra joints) and ``procedural_info`` (generator provenance).
    """
    gender = _check_gender(gender)
    res = float(resolution) if resolution is not None else _resolution_for(int(num_vertices))
    topo = _topology(res)
    p0 = body_params(gender)
    v_template, joints = _generate(p0, topo)
    shapedirs = np.zeros((topo.num_vertices, 3, NUM_BETAS))
    for k in range(NUM_BETAS):
        betas = np.zeros(NUM_BETAS)
        betas[k] = 1.0
        vp, _ = _generate(body_params(gender, betas), topo)
        vm, _ = _generate(body_params(gender, -betas), topo)
        shapedirs[:, :, k] = 0.5 * (vp - vm)
    tubes = _tubes(p0)
    weights = _skinning_weights(tubes, topo)
    reg = _joint_regressor(tubes, topo, v_template - PELVIS_POSITION, joints - PELVIS_POSITION)
    kintree = np.array([list(PARENTS), list(range(24))], dtype=np.int64)
    kintree[0, 0] = 2 ** 32 - 1  # SMPL releases store the root's parent as uint32 max
    return {
        "v_template": v_template,
        "shapedirs": shapedirs,
        "posedirs": np.zeros((topo.num_vertices, 3, NUM_POSE_BASIS)),
        "J_regressor": scipy.sparse.csc_matrix(reg),
        "weights": weights,
        "kintree_table": kintree,
        "f": topo.faces.astype(np.uint32),
        "J": joints,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "vertex_ids": _landmarks(v_template, joints, topo, tubes),
        "procedural_info": {"generator": "clip3dreid_plugin.body.procedural", "format_version": FORMAT_VERSION,
                            "gender": gender, "resolution": res, "num_vertices": topo.num_vertices,
                            "template_height_m": TEMPLATE_HEIGHTS[gender]},
    }


def write_procedural_smpl(out_dir: str, num_vertices: int = 1000, seed: int = 0) -> str:
    """Writes ``out_dir/smpl/SMPL_{NEUTRAL,MALE,FEMALE}.pkl`` of the procedural body.

    The result loads with ``load_body_model(out_dir, gender)`` or ``smplx.create(out_dir, 'smpl', gender=...,
    vertex_ids=...)`` (a small mesh needs smplx's ``vertex_ids``; ``load_body_model`` passes the ones stored
    in the file).

    Args:
        out_dir: root folder (created if needed).
        num_vertices: approximate vertices per mesh (≈1000 is plenty for 384x192 renders; 6890 matches
            SMPL's count for benchmarks).
        seed: kept for API stability and recorded in ``procedural_info``; the generator is deterministic
            and draws no random numbers.

    Returns:
        ``out_dir`` (the root to pass as ``body.model_dir``).
    """
    smpl_dir = osp.join(out_dir, "smpl")
    os.makedirs(smpl_dir, exist_ok=True)
    res = _resolution_for(int(num_vertices))
    for gender in GENDERS:
        data = build_procedural_model(gender, resolution=res)
        data["procedural_info"]["seed"] = int(seed)
        path = osp.join(smpl_dir, f"SMPL_{gender.upper()}.pkl")
        atomic_write(path, lambda fh, data=data: pickle.dump(data, fh, protocol=4))
    logger.info("procedural SMPL-format body (%d vertices) written to %s", procedural_vertex_count(res), smpl_dir)
    return out_dir

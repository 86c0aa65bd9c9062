"""A built-in pool of standing and walking SMPL body poses, and loading of user pose files.

The paper estimates its pose pool from 100 training images with an off-the-shelf estimator; the
plugin ships a hand-written pool instead (no estimator or images needed) and accepts extra poses
from an ``.npz`` file (key ``body_pose``, shaped [K, 69] or [K, 23, 3], axis-angle, SMPL joint
order without the pelvis), e.g. poses exported from such an estimator.

Conventions (SMPL's rest frame: y up, facing +z, person's left at +x). Each local rotation is
written as a sequence of rotations about the parent's rest axes, applied first to last:

* shoulders: lowering the arm from the T-pose is ``z -a`` (left) / ``z +a`` (right), shared between
  the collar (15 %) and the shoulder joint; then a swing about ``x`` (negative = forward);
* elbows: flexion bringing the forearm forward is ``y -f`` (left) / ``y +f`` (right);
* hips: flexion (thigh forward) is ``x -f``; abduction is ``z +a`` (left) / ``z -a`` (right);
* knees: flexion (shank backward) is ``x +f``; ankles: plantar flexion (toes down) is ``x +f``.
"""
from __future__ import annotations

import math
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy.spatial.transform import Rotation

from clip3dreid_plugin.body.skeleton import NUM_BODY_JOINTS, J
from clip3dreid_plugin.errors import UserError

__all__ = ["builtin_pose_pool", "builtin_pose_names", "load_pose_file", "PoseFileError", "pose_from_rotations"]

Rot = Sequence[Tuple[str, float]]  # [(axis, degrees), ...] applied in order
_COLLAR_SHARE = 0.15  # part of the arm lowering done by the collar, as in real shoulders (avoids a sharp corner)


class PoseFileError(UserError, ValueError):
    """A user pose file is missing, unreadable, or not shaped [K, 69] / [K, 23, 3]."""


def pose_from_rotations(rotations: Dict[int, Rot]) -> np.ndarray:
    """Builds a body_pose [69] from per-joint rotation sequences.

    Args:
        rotations: joint id (1..23) -> [(axis in 'xyz', degrees), ...], applied first to last about the
            parent's rest axes.

    Returns:
        float32 [69] axis-angle body pose.
    """
    pose = np.zeros((NUM_BODY_JOINTS, 3))
    for jid, seq in rotations.items():
        if not 1 <= jid <= NUM_BODY_JOINTS:
            raise ValueError(f"joint id {jid} is not a body joint (1..23)")
        rot = Rotation.identity()
        for axis, deg in seq:
            rot = Rotation.from_euler(axis, deg, degrees=True) * rot  # later rotations act in the parent frame
        pose[jid - 1] = rot.as_rotvec()
    return pose.reshape(-1).astype(np.float32)


def _standing(arm_down: float, elbow: float = 8.0, swing_l: float = 0.0, swing_r: float = 0.0,
              abd: float = 3.0, head_nod: float = 0.0, twist: float = 0.0, lean: float = 0.0,
              shift: float = 0.0) -> Dict[int, Rot]:
    """Upright stance: arms lowered by ``arm_down`` degrees from the T-pose, small variations."""
    return {
        J.L_COLLAR: [("z", -_COLLAR_SHARE * arm_down)],
        J.R_COLLAR: [("z", _COLLAR_SHARE * arm_down)],
        J.L_SHOULDER: [("z", -(1.0 - _COLLAR_SHARE) * arm_down), ("x", swing_l)],
        J.R_SHOULDER: [("z", (1.0 - _COLLAR_SHARE) * arm_down), ("x", swing_r)],
        J.L_ELBOW: [("y", -elbow)],
        J.R_ELBOW: [("y", elbow)],
        J.L_HIP: [("z", abd + shift)],
        J.R_HIP: [("z", -abd + shift)],
        J.SPINE2: [("y", twist), ("z", lean)],
        J.NECK: [("x", head_nod)],
    }


def _walking(phase_deg: float, stride: float = 17.0, arm_swing: float = 16.0, arm_down: float = 72.0
             ) -> Dict[int, Rot]:
    """One phase of a walking cycle; phase 90 = left leg fully forward, right arm forward."""
    s = math.sin(math.radians(phase_deg))

    def knee(phase: float) -> float:
        # a leg bends most while it swings through (just after being furthest back)
        return 5.0 + 25.0 * max(0.0, -math.sin(math.radians(phase) + math.pi / 4))

    def ankle(phase: float) -> float:
        return 12.0 * max(0.0, -math.sin(math.radians(phase)))  # push-off: toes down when the leg is behind

    return {
        J.L_HIP: [("z", 2.0), ("x", -stride * s)],
        J.R_HIP: [("z", -2.0), ("x", stride * s)],
        J.L_KNEE: [("x", knee(phase_deg))],
        J.R_KNEE: [("x", knee(phase_deg + 180.0))],
        J.L_ANKLE: [("x", ankle(phase_deg))],
        J.R_ANKLE: [("x", ankle(phase_deg + 180.0))],
        J.L_COLLAR: [("z", -_COLLAR_SHARE * arm_down)],
        J.R_COLLAR: [("z", _COLLAR_SHARE * arm_down)],
        # left arm back when the left leg is forward
        J.L_SHOULDER: [("z", -(1.0 - _COLLAR_SHARE) * arm_down), ("x", arm_swing * s)],
        J.R_SHOULDER: [("z", (1.0 - _COLLAR_SHARE) * arm_down), ("x", -arm_swing * s)],
        J.L_ELBOW: [("y", -(12.0 + 10.0 * max(0.0, -s)))],  # the forward arm bends more
        J.R_ELBOW: [("y", 12.0 + 10.0 * max(0.0, s))],
        J.SPINE2: [("y", -4.0 * s)],  # shoulders counter-rotate against the hips
        J.SPINE1: [("x", 3.0)],  # slight forward lean while walking
    }


_POSES: List[Tuple[str, Dict[int, Rot]]] = [
    ("stand_relaxed", _standing(66.0)),
    ("stand_arms_close", _standing(74.0, elbow=5.0, abd=2.0)),
    ("stand_elbows_bent", _standing(62.0, elbow=25.0, swing_l=-8.0, swing_r=-8.0)),
    ("stand_weight_left", _standing(68.0, elbow=10.0, shift=3.0, lean=2.5)),
    ("stand_weight_right", _standing(67.0, elbow=12.0, shift=-3.0, lean=-2.5, head_nod=5.0)),
    ("stand_phone", _standing(70.0, elbow=12.0, swing_r=-25.0, head_nod=15.0)),
    ("stand_turned", _standing(65.0, elbow=15.0, twist=10.0, abd=4.0)),
    ("stand_wide", _standing(60.0, elbow=8.0, abd=6.0)),
]
_POSES += [(f"walk_{int(ph):03d}", _walking(ph)) for ph in (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)]
_POSES += [("walk_long_090", _walking(90.0, stride=23.0, arm_swing=22.0)),
           ("walk_long_270", _walking(270.0, stride=23.0, arm_swing=22.0))]


def builtin_pose_names() -> List[str]:
    """Names of the built-in poses, in pool order."""
    return [name for name, _ in _POSES]


def builtin_pose_pool() -> np.ndarray:
    """The built-in pool: float32 [P, 69] (P = 18) axis-angle body poses (8 standing, 10 walking)."""
    return np.stack([pose_from_rotations(rot) for _, rot in _POSES])


def load_pose_file(path: str) -> np.ndarray:
    """Reads user poses from an ``.npz`` with key ``body_pose`` shaped [K, 69] or [K, 23, 3].

    Args:
        path: the ``.npz`` file.

    Returns:
        float32 [K, 69].

    Raises:
        PoseFileError: missing file, missing key, or wrong shape (the message names the file and the
            expected shape).
    """
    if not osp.isfile(path):
        raise PoseFileError(f"pose file {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "body_pose" not in data.files:
                raise PoseFileError(f"pose file {path!r} has no key 'body_pose' (keys: {data.files}); expected "
                                    "body_pose shaped [K, 69] or [K, 23, 3] (axis-angle, SMPL joints 1..23)")
            poses = np.asarray(data["body_pose"])
    except PoseFileError:
        raise
    except Exception as exc:
        raise PoseFileError(f"pose file {path!r} is not a readable .npz: {exc}") from exc
    if poses.ndim == 3 and poses.shape[1:] == (NUM_BODY_JOINTS, 3):
        poses = poses.reshape(len(poses), -1)
    if poses.ndim != 2 or poses.shape[1] != 3 * NUM_BODY_JOINTS or len(poses) == 0:
        raise PoseFileError(f"pose file {path!r}: body_pose has shape {tuple(poses.shape)}, expected [K, 69] or "
                            "[K, 23, 3] with K >= 1 (axis-angle, SMPL joints 1..23, no global orientation)")
    if not np.issubdtype(poses.dtype, np.number) or not np.isfinite(poses).all():
        raise PoseFileError(f"pose file {path!r}: body_pose must be finite numbers")
    return poses.astype(np.float32)

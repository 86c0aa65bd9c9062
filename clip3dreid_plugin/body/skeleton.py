"""The SMPL 24-joint skeleton and shape space: joint names, parents, the joint ids other modules index by, and
the number of shape coefficients (betas, defined in :mod:`clip3dreid_plugin.shape` and re-exported here).

SMPL's coordinate frame: y up, the body faces +z, the person's left side is +x. ``body_pose``
holds the axis-angle rotations of joints 1..23 (joint ``j`` at ``body_pose[3 * (j - 1): 3 * j]``);
joint 0 (pelvis) is rotated by ``global_orient``.
"""
from __future__ import annotations

from typing import Tuple

from clip3dreid_plugin.shape import NUM_BETAS

__all__ = ["JOINT_NAMES", "PARENTS", "NUM_JOINTS", "NUM_BODY_JOINTS", "NUM_BETAS", "J"]

JOINT_NAMES: Tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)

# kintree_table[0] of every SMPL release (the root's parent is stored as 2**32 - 1 there)
PARENTS: Tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)

NUM_JOINTS = 24
NUM_BODY_JOINTS = 23  # joints driven by body_pose (all but the pelvis)


class J:
    """Joint ids by name, so code reads ``J.L_SHOULDER`` rather than ``16``."""

    PELVIS = 0
    L_HIP = 1
    R_HIP = 2
    SPINE1 = 3
    L_KNEE = 4
    R_KNEE = 5
    SPINE2 = 6
    L_ANKLE = 7
    R_ANKLE = 8
    SPINE3 = 9
    L_FOOT = 10
    R_FOOT = 11
    NECK = 12
    L_COLLAR = 13
    R_COLLAR = 14
    HEAD = 15
    L_SHOULDER = 16
    R_SHOULDER = 17
    L_ELBOW = 18
    R_ELBOW = 19
    L_WRIST = 20
    R_WRIST = 21
    L_HAND = 22
    R_HAND = 23

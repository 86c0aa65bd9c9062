"""Body model layer: SMPL loading without chumpy, a procedural SMPL-format body, measurements,
descriptor rules, synthetic mesh renders and 3D shape evaluation (Design 3 of CLIP3DReID).

Submodules (one concept each): ``skeleton``, ``genders``, ``smpl_io``, ``procedural``, ``anthropometry``,
``descriptor_rules``, ``poses``, ``meshset_plan`` (plan + metadata of the synthetic mesh set of the 3D term),
``meshset`` (rendering that set), ``synthcc`` (rendering the synthcc benchmark, another generated set),
``render`` (headless pyrender), ``shape_eval`` (Chamfer distance).

The names below are imported lazily on first use, so ``import clip3dreid_plugin.body.render``
(e.g. in a process that only needs to pick the OpenGL platform) does not pay for torch, and nothing
imports pyrender or OpenGL until a :class:`MeshRenderer` is created.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BodyModel": "smpl_io", "BodyModelError": "smpl_io", "load_body_model": "smpl_io",
    "GENDER_IDS": "genders", "write_procedural_smpl": "procedural",
    "MEASUREMENT_NAMES": "anthropometry", "measure_body": "anthropometry", "measure_bodies": "anthropometry",
    "descriptor_scores": "descriptor_rules", "fit_thresholds": "descriptor_rules", "rule_labels": "descriptor_rules",
    "PoseFileError": "poses", "builtin_pose_pool": "poses", "load_pose_file": "poses",
    "HeadlessGLError": "render", "MeshRenderer": "render",
    "sample_surface": "shape_eval", "chamfer_distance": "shape_eval", "evaluate_shapes": "shape_eval",
    "make_plan": "meshset_plan", "sample_subjects": "meshset_plan", "read_synthetic_meta": "meshset_plan",
    "write_synthetic_meta": "meshset_plan",
    "SyntheticSetError": "meshset", "render_synthetic_set": "meshset",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + list(_EXPORTS))

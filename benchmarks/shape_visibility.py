"""How many pixels of a synthcc render each shape coefficient moves: is body shape visible at this image size?

For each gender and each of the body model's ten shape coefficients, a body at ``beta_k = -s`` and one at
``beta_k = +s`` (all other coefficients 0; ``s`` = synthcc's ``beta_sigma``, one population sd of its identities)
are posed and rendered with synthcc's framing (the whole body fills the frame, as a detector crop does). The
measure is the silhouette difference: the pixels that are body in one render and background in the other, averaged
over the views (poses of the built-in pool x yaws), in pixels and as a share of the silhouette's area. Shading
inside the silhouette is left out: it changes with the lighting and the clothes, the outline does not.

A coefficient that moves about one pixel at 128x64 cannot be read from synthcc's images, by the shape probe, the
baseline or the student alike. Usage::

    python benchmarks/shape_visibility.py --body-model work_dirs/quickstart/body_model --sizes 128x64 256x128 \\
        --out benchmarks/results/shape_visibility.json
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from clip3dreid_plugin.body.poses import builtin_pose_pool
from clip3dreid_plugin.body.smpl_io import BodyModel, load_body_model
from clip3dreid_plugin.body.synthcc import BETA_SIGMA
from clip3dreid_plugin.utils.io import atomic_write_json

logger = logging.getLogger("clip3dreid.shape_visibility")

DEFAULT_POSES = (0, 4, 8, 12)  # standing and walking poses of the built-in pool
DEFAULT_YAWS = (0.0, 45.0, 90.0)  # front, three-quarter and side views


def silhouettes(model: BodyModel, betas: np.ndarray, poses: Sequence[int], yaws: Sequence[float],
                renderer) -> np.ndarray:
    """Body masks of one shape in every (pose, yaw) view.

    Args:
        model: the body model.
        betas: [10] shape coefficients.
        poses: indices into :func:`builtin_pose_pool`.
        yaws: body yaws in degrees.
        renderer: an open :class:`clip3dreid_plugin.body.render.MeshRenderer` (it sets the image size).

    Returns:
        bool [len(poses) * len(yaws), H, W], True on the body.
    """
    pool = torch.as_tensor(builtin_pose_pool()[list(poses)])
    b = torch.as_tensor(np.asarray(betas, dtype=np.float32)[None]).expand(len(poses), -1)
    with torch.no_grad():
        posed = model.posed_vertices(b, pool).cpu().numpy().astype(np.float64)
    masks = [renderer.render_rgbd(v, model.faces, yaw)[1] > 0 for v in posed for yaw in yaws]
    return np.stack(masks)


def coefficient_visibility(model: BodyModel, k: int, sigma: float, poses: Sequence[int], yaws: Sequence[float],
                           renderer) -> Tuple[float, float]:
    """Silhouette change when ``beta_k`` goes from ``-sigma`` to ``+sigma``.

    Returns:
        (mean changed pixels per view, mean changed pixels / silhouette area of the ``-sigma`` body).
    """
    lo, hi = np.zeros(model.num_betas, np.float32), np.zeros(model.num_betas, np.float32)
    lo[k], hi[k] = -sigma, sigma
    a, b = silhouettes(model, lo, poses, yaws, renderer), silhouettes(model, hi, poses, yaws, renderer)
    changed = (a ^ b).reshape(len(a), -1).sum(1).astype(np.float64)
    area = a.reshape(len(a), -1).sum(1).astype(np.float64)
    return float(changed.mean()), float((changed / np.maximum(area, 1.0)).mean())


def measure(body_dir: str, sizes: Sequence[Tuple[int, int]], sigma: float = BETA_SIGMA,
            poses: Sequence[int] = DEFAULT_POSES, yaws: Sequence[float] = DEFAULT_YAWS) -> Dict[str, dict]:
    """``{"HxW": {gender: [(pixels, share) per coefficient]}}`` for the female and male bodies."""
    from clip3dreid_plugin.body.render import MeshRenderer

    models = {g: load_body_model(body_dir, g) for g in ("female", "male")}
    out: Dict[str, dict] = {}
    for h, w in sizes:
        with MeshRenderer(height=h, width=w) as renderer:
            out[f"{h}x{w}"] = {g: [coefficient_visibility(m, k, sigma, poses, yaws, renderer)
                                   for k in range(m.num_betas)] for g, m in models.items()}
    return out


def markdown(result: Dict[str, dict]) -> str:
    """One row per coefficient, the changed pixels (share of the silhouette) per size and gender."""
    cols = [(size, g) for size, by_g in result.items() for g in by_g]
    lines = ["| beta | " + " | ".join(f"{size} {g}" for size, g in cols) + " |", "|---|" + "---|" * len(cols)]
    n = len(next(iter(next(iter(result.values())).values())))
    for k in range(n):
        cells = [f"{result[size][g][k][0]:.1f} ({100 * result[size][g][k][1]:.1f}%)" for size, g in cols]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _size(text: str) -> Tuple[int, int]:
    h, _, w = text.partition("x")
    if not (h.isdigit() and w.isdigit()):
        raise argparse.ArgumentTypeError(f"image size must be HxW, e.g. 128x64, got '{text}'")
    return int(h), int(w)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--body-model", required=True, help="folder with smpl/SMPL_{FEMALE,MALE}.pkl")
    p.add_argument("--sizes", type=_size, nargs="+", default=[(128, 64), (256, 128)])
    p.add_argument("--sigma", type=float, default=BETA_SIGMA, help="coefficient value (synthcc's beta_sigma)")
    p.add_argument("--out", default="", help="write the result as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = measure(args.body_model, args.sizes, args.sigma)
    if args.out:
        atomic_write_json({"sigma": args.sigma, "poses": list(DEFAULT_POSES), "yaws": list(DEFAULT_YAWS),
                           "pixels_and_share": result}, args.out)
    logger.info("silhouette pixels changed by beta_k = -%.2f -> +%.2f:\n%s", args.sigma, args.sigma,
                markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

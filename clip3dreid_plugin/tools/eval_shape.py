"""Scores predicted body shapes against ground truth with the Chamfer distance (mm), as in Table 9.

Example::

    clip3dreid-eval-shape --body-model /data/body_models --pred-npz pred.npz --gt-npz gt.npz

``--pred-npz`` holds ``betas`` [B, 10] (e.g. the student's phi head on B images). ``--gt-npz`` holds
either ``betas`` [B, 10] (optionally ``gender`` [B] with female/male/neutral, to build each true mesh
with its gendered model) or ``vertices`` [B, V, 3] canonical meshes with ``faces`` [F, 3]. Predictions
use the ``--gender`` model (neutral by default, as the 3D loss does). Both meshes are compared in the
canonical pose with 10,000 area-weighted surface samples each; see
``clip3dreid_plugin/body/shape_eval.py`` for the exact definition.
"""
from __future__ import annotations

import logging
import sys
from typing import Dict, Optional, Sequence

import numpy as np

from clip3dreid_plugin.body.genders import GENDER_IDS
from clip3dreid_plugin.body.shape_eval import evaluate_shapes
from clip3dreid_plugin.body.smpl_io import BodyModel, load_body_model
from clip3dreid_plugin.errors import InputError
from clip3dreid_plugin.tools.common import CLIParser, add_overrides, cli_main, load_student, start_cli
from clip3dreid_plugin.utils.io import atomic_write_json

logger = logging.getLogger("eval_shape")


def _load_npz(path: str, role: str) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{role} file {path} does not exist") from None
    except Exception as exc:
        raise InputError(f"{role} file {path} is not a readable .npz: {exc}") from exc


def predict_from_images(config_file: str, weights: str, images_dir: str, opts: Sequence[str] = (),
                        batch_size: int = 32) -> Dict[str, np.ndarray]:
    """Student predictions on a rendered set: ``{'pred': betas [B,10], 'gt': betas [B,10], 'gender': [B]}``."""
    # torchreid warns when first imported: after start_cli's quiet warnings
    import torch
    import torchreid

    from clip3dreid_plugin.data.meshset import SyntheticMeshDataset

    cfg, model = load_student(config_file, ["model.name", "clip3dreid", *opts], weights)
    _, tf = torchreid.data.transforms.build_transforms(cfg.data.height, cfg.data.width, transforms=None,
                                                       norm_mean=list(cfg.data.norm_mean),
                                                       norm_std=list(cfg.data.norm_std))
    ds = SyntheticMeshDataset(images_dir, transform=tf)
    preds = []
    with torch.no_grad():
        for s in range(0, len(ds), batch_size):
            x = torch.stack([ds[i]["img"] for i in range(s, min(s + batch_size, len(ds)))])
            preds.append(model.shape_head(model(x)))  # eval forward gives f_id; phi maps it to betas
    inv = {v: k for k, v in GENDER_IDS.items()}
    return {"pred": torch.cat(preds).numpy(), "gt": ds.betas.numpy(),
            "gender": np.array([inv[int(g)] for g in ds.genders])}


def chamfer_per_sample(pred_betas: np.ndarray, gt: Dict[str, np.ndarray], model: BodyModel,
                       args) -> np.ndarray:
    """Chamfer distance (mm) of each predicted shape ``pred_betas [B, 10]`` to its ground truth.

    Args:
        pred_betas: predicted shape coefficients, built with ``model`` (the ``--gender`` body).
        gt: ``{'betas' [B, 10] (+ 'gender' [B])}`` or ``{'vertices' [B, V, 3], 'faces' [F, 3]}``.
        model: the prediction's body model.
        args: the parsed command line (``body_model``, ``gender``, ``num_points``, ``seed``, ``align``).

    Returns:
        ``[B]`` distances in mm.

    Raises:
        ValueError: sizes disagree, or ``gt`` holds neither betas nor vertices.
    """
    per_sample = np.zeros(len(pred_betas))
    if "vertices" in gt:
        res = evaluate_shapes(pred_betas, gt["vertices"], model, gt_faces=gt.get("faces"),
                              num_points=args.num_points, seed=args.seed, align=args.align)
        return np.asarray(res["chamfer_mm"], dtype=np.float64)
    if "betas" not in gt:
        raise InputError(f"{args.gt_npz} has neither 'betas' nor 'vertices' (keys: {sorted(gt)})")
    genders = gt["gender"].astype(str) if "gender" in gt else np.full(len(gt["betas"]), args.gender)
    if len(genders) != len(gt["betas"]) or len(gt["betas"]) != len(pred_betas):
        raise InputError(f"size mismatch: {len(pred_betas)} predictions, {len(gt['betas'])} gt betas, "
                         f"{len(genders)} genders")
    models: Dict[str, BodyModel] = {args.gender: model}
    for g in np.unique(genders):
        idx = np.flatnonzero(genders == g)
        if g not in models:
            models[g] = load_body_model(args.body_model, str(g))
        res = evaluate_shapes(pred_betas[idx], gt["betas"][idx], model, gt_body_model=models[g],
                              num_points=args.num_points, seed=args.seed, align=args.align)
        per_sample[idx] = res["chamfer_mm"]
    return per_sample


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input)."""
    parser = CLIParser(description=__doc__.split("\n")[0])
    parser.add_argument("--body-model", required=True, help="root folder with smpl/SMPL_{NEUTRAL,MALE,FEMALE}.pkl")
    parser.add_argument("--pred-npz", default="", help=".npz with betas [B, 10]")
    parser.add_argument("--gt-npz", default="", help=".npz with betas [B, 10] (+ gender [B]) or vertices + faces")
    parser.add_argument("--images-dir", default="", help="rendered set (meta.npz + images): predict with the student")
    parser.add_argument("--config-file", default="",
                        help="student config (with --images-dir; default: the config.yaml of the checkpoint's run)")
    parser.add_argument("--weights", default="", help="student checkpoint (with --images-dir)")
    parser.add_argument("--gender", default="neutral", choices=["neutral", "male", "female"],
                        help="body model of the predictions")
    parser.add_argument("--num-points", type=int, default=10000, help="surface samples per mesh")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--align", choices=["centroid", "none"], default="centroid")
    parser.add_argument("--json", default=None, help="write the result (mean and per-sample) to this file")
    add_overrides(parser, "student config overrides KEY VALUE (--images-dir)")
    args = parser.parse_args(argv)
    start_cli(stream=sys.stderr)

    if args.images_dir:
        out = predict_from_images(args.config_file, args.weights, args.images_dir, args.opts)
        pred, gt = {"betas": out["pred"]}, {"betas": out["gt"], "gender": out["gender"]}
    elif args.pred_npz and args.gt_npz:
        pred = _load_npz(args.pred_npz, "prediction")
        gt = _load_npz(args.gt_npz, "ground-truth")
    else:
        raise InputError("give --images-dir (with --config-file/--weights) or both --pred-npz and --gt-npz")
    if "betas" not in pred:
        raise InputError(f"{args.pred_npz} has no 'betas' array (keys: {sorted(pred)})")
    model = load_body_model(args.body_model, args.gender)
    per_sample = chamfer_per_sample(pred["betas"], gt, model, args)
    # The reference a shape head has to beat: every prediction the body model's mean shape (betas 0).
    mean_shape = chamfer_per_sample(np.zeros_like(pred["betas"]), gt, model, args)
    mean = float(per_sample.mean()) if len(per_sample) else float("nan")
    reference = float(mean_shape.mean()) if len(mean_shape) else float("nan")
    logger.info("mean Chamfer distance over %d shapes: %.2f mm; predicting the mean shape (betas 0) for every one: "
                "%.2f mm", len(per_sample), mean, reference)
    if args.json:
        atomic_write_json({"mean_chamfer_mm": mean, "chamfer_mm": per_sample.tolist(),
                           "mean_shape_chamfer_mm": reference, "num_points": args.num_points, "align": args.align,
                           "pred_gender": args.gender}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

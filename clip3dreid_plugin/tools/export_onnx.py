"""ONNX export of a trained model's eval path, with a parity check (``clip3dreid-export-onnx``).

Usage::

    clip3dreid-export-onnx --config-file CFG --weights CKPT --output model.onnx [KEY VALUE ...]

The graph maps ``images [B, 3, H, W]`` (dynamic batch) to ``features [B, D]``. The export is then run
with onnxruntime on a random batch and compared with PyTorch; the maximum absolute difference is
reported and must stay under ``--atol``.
"""
from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

import numpy as np
import torch

from clip3dreid_plugin.tools.common import CLIParser, add_overrides, cli_main, load_student, start_cli

logger = logging.getLogger(__name__)

__all__ = ["export_onnx", "onnx_parity", "main"]


def export_onnx(model: torch.nn.Module, path: str, height: int, width: int, opset: int = 17) -> None:
    """Writes ``model`` (eval mode) to ``path`` with a dynamic batch axis."""
    model = model.eval()
    x = torch.randn(2, 3, height, width)
    torch.onnx.export(model, (x,), path, input_names=["images"], output_names=["features"],
                      dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, opset_version=opset,
                      dynamo=False)


def onnx_parity(model: torch.nn.Module, path: str, height: int, width: int, batch: int = 3, seed: int = 0) -> float:
    """Max |onnxruntime - PyTorch| over the features of a random batch."""
    # onnxruntime is optional (the export extra): only the parity check needs it
    import onnxruntime as ort

    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})[0]
    return float(np.abs(got - ref).max())


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = CLIParser(description="Export the student to ONNX and check it against PyTorch.")
    p.add_argument("--config-file", default="")
    p.add_argument("--weights", default="", help="checkpoint; empty exports the initialised model")
    p.add_argument("--output", required=True)
    p.add_argument("--atol", type=float, default=1e-4)
    add_overrides(p)
    args = p.parse_args(argv)
    start_cli()
    cfg, model = load_student(args.config_file, args.opts, args.weights)
    export_onnx(model, args.output, cfg.data.height, cfg.data.width)
    diff = onnx_parity(model, args.output, cfg.data.height, cfg.data.width)
    logger.info("exported %s; max |onnx - torch| = %.2e (atol %.0e)", args.output, diff, args.atol)
    print(f"max_abs_diff {diff:.3e}")
    return 0 if diff <= args.atol else 1


if __name__ == "__main__":
    sys.exit(main())

"""Model-complexity table (params, MACs, FLOPs) for the student and the CLIP teachers (supplement Table 2).

Counts come from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls, attention),
which reports FLOPs = 2 x multiply-accumulates; element-wise ops and normalisations are not counted,
as in the usual MAC counters.

Usage::

    python -m clip3dreid_plugin.tools.complexity --height 384 --width 192 [--teachers ViT-L-14 ViT-B-16]
"""
from __future__ import annotations

import logging
import sys
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from clip3dreid_plugin.errors import InputError
from clip3dreid_plugin.tools.common import CLIParser, cli_main
from clip3dreid_plugin.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["count_complexity", "student_complexity", "teacher_complexity", "main"]


def count_complexity(model: nn.Module, inputs: torch.Tensor, params: Optional[int] = None) -> Dict[str, float]:
    """Params (M), MACs (G) and FLOPs (G) of one eval-mode forward of ``model`` on ``inputs``.

    Args:
        model: module to measure (put in eval mode).
        inputs: one input batch, e.g. ``[1, 3, H, W]``; figures are per batch.
        params: parameter count to report instead of all of ``model``'s parameters.
    """
    model.eval()
    # Grad mode on: with autograd off, nn.MultiheadAttention takes a fused fast path that the counter misses.
    with torch.enable_grad(), FlopCounterMode(display=False) as fc:
        model(inputs)
    flops = fc.get_total_flops()
    n = params if params is not None else sum(p.numel() for p in model.parameters())
    return {"params_M": n / 1e6, "GMACs": flops / 2e9, "GFLOPs": flops / 1e9}


def student_complexity(height: int = 384, width: int = 192, num_classes: int = 77, last_stride: int = 1) -> Dict:
    """The inference path of the student (trunk + aggregation MLP + classifier; training-only heads excluded)."""
    # torchreid warns when first imported: after start_cli's quiet warnings
    from clip3dreid_plugin.models.clip3dreid import CLIP3DReID

    m = CLIP3DReID(num_classes, last_stride=last_stride)
    heads = ("text_head", "image_head", "shape_head")
    n = sum(p.numel() for name, p in m.named_parameters() if not name.startswith(heads))
    return count_complexity(m, torch.randn(1, 3, height, width), params=n)


def teacher_complexity(name: str) -> Dict:
    """The CLIP image encoder ``name`` (open_clip, random init) at its own input size."""
    # open_clip takes seconds to import: only the teacher's row needs it
    import open_clip

    model = open_clip.create_model(name, pretrained=None)
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    return count_complexity(visual, torch.randn(1, 3, size, size))


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = CLIParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--num-classes", type=int, default=77, help="classifier size (77 = LTCC train ids)")
    p.add_argument("--teachers", nargs="*", default=["ViT-L-14", "ViT-B-16", "ViT-B-32"])
    p.add_argument("--json", default="", help="also write the rows as JSON")
    args = p.parse_args(argv)
    for option, value in (("--height", args.height), ("--width", args.width), ("--num-classes", args.num_classes)):
        if value < 1:
            raise InputError(f"{option} must be a positive integer, got {value}")
    rows: List[Dict] = []
    for ls in (1, 2):
        r = student_complexity(args.height, args.width, args.num_classes, ls)
        rows.append({"model": f"student ResNet-50 (last stride {ls}) {args.height}x{args.width}", **r})
    for t in args.teachers:
        rows.append({"model": f"teacher CLIP {t} image encoder", **teacher_complexity(t)})
    print("| model | params (M) | MACs (G) | FLOPs (G) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params_M']:.2f} | {r['GMACs']:.2f} | {r['GFLOPs']:.2f} |")
    if args.json:
        atomic_write_json(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Features of every image in a folder, saved as ``.npy`` (``clip3dreid-extract-features``).

Usage::

    clip3dreid-extract-features --config-file CFG --weights log/.../model-best.pth.tar \
        --input DIR --output feats.npy [--flip] [KEY VALUE ...]

Writes ``feats.npy`` (``[N, D]`` float32, L2-normalised unless ``--no-normalize``) and
``feats.txt`` (one image path per row, same order).
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence

import numpy as np
import torch

from clip3dreid_plugin.tools.common import CLIParser, add_overrides, cli_main, eval_transform, load_student, start_cli
from clip3dreid_plugin.utils.progress import progress
from clip3dreid_plugin.utils.runtime import DEVICE_HELP, resolve_device
from datasets_ext.image_io import read_image

logger = logging.getLogger(__name__)

__all__ = ["main", "list_images", "extract"]

EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(folder: str) -> List[str]:
    """Image files under ``folder`` (recursive, sorted).

    Raises:
        FileNotFoundError: ``folder`` is missing or holds no image.
    """
    if not osp.isdir(folder):
        raise FileNotFoundError(f"--input folder not found: '{folder}'")
    out = sorted(osp.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.lower().endswith(EXTS))
    if not out:
        raise FileNotFoundError(f"no image ({', '.join(EXTS)}) under '{folder}'")
    return out


@torch.no_grad()
def extract(model: torch.nn.Module, paths: Sequence[str], transform, batch_size: int = 64, flip: bool = False,
            normalize: bool = True, device: str = "cpu") -> np.ndarray:
    """Eval-mode features ``[N, D]`` of ``paths`` (``f(x) + f(flip(x))`` with ``flip``)."""
    model = model.to(device).eval()
    feats = []
    for s in progress(range(0, len(paths), batch_size), desc="extract"):
        x = torch.stack([transform(read_image(p)) for p in paths[s: s + batch_size]]).to(device)
        f = model(x)
        if flip:
            f = f + model(torch.flip(x, dims=[3]))
        feats.append(f.float().cpu())
    out = torch.cat(feats)
    if normalize:
        out = torch.nn.functional.normalize(out, dim=1)
    return out.numpy()


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = CLIParser(description="Extract features of a folder of images into .npy.")
    p.add_argument("--config-file", default="")
    p.add_argument("--weights", default="", help="checkpoint (model.pth.tar-N / model-best.pth.tar)")
    p.add_argument("--input", required=True, help="folder of images (searched recursively)")
    p.add_argument("--output", required=True, help="output .npy; the path list goes next to it as .txt")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--flip", action="store_true", help="add the horizontally flipped image's feature")
    p.add_argument("--no-normalize", action="store_true")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_overrides(p)
    args = p.parse_args(argv)

    start_cli()
    device = str(resolve_device(args.device))  # before the model is built: a bad --device fails at once
    paths = list_images(args.input)
    cfg, model = load_student(args.config_file, args.opts, args.weights)
    feats = extract(model, paths, eval_transform(cfg), args.batch_size, args.flip, not args.no_normalize, device)
    os.makedirs(osp.dirname(osp.abspath(args.output)), exist_ok=True)
    np.save(args.output, feats)
    with open(osp.splitext(args.output)[0] + ".txt", "w", encoding="utf-8") as f:
        f.writelines(pth + "\n" for pth in paths)
    logger.info("wrote %s (%d x %d)", args.output, *feats.shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())

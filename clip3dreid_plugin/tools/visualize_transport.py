"""Transport-plan heatmaps over the image (paper Fig. 3), ``clip3dreid-visualize-transport``.

For one image the student gives local features ``F`` on an ``h x w`` grid; the teacher labels the
image's 16 descriptors and ``Psi`` projects their text features. The entropic OT plan ``T* [N, M]``
between the two says how much of each descriptor's mass each patch carries; column ``m`` reshaped to
``h x w`` and upsampled is the heatmap of descriptor ``m``.

Usage::

    clip3dreid-visualize-transport --config-file CFG --weights CKPT --image IMG --output out.png \
        [--descriptor 3] [KEY VALUE ...]          # teacher.* keys pick the CLIP teacher that labels the image
"""
from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

import numpy as np
import torch

from clip3dreid_plugin.tools.common import CLIParser, add_overrides

logger = logging.getLogger(__name__)

__all__ = ["transport_heatmaps", "overlay", "main"]


@torch.no_grad()
def transport_heatmaps(model: torch.nn.Module, image: torch.Tensor, text_feats: torch.Tensor, reg: float = 1.0,
                       max_iter: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """Per-descriptor transport mass on the student's feature grid.

    Args:
        model: the CLIP3DReID student.
        image: one normalised image ``[3, H, W]``.
        text_feats: teacher text features of the chosen phrases ``[M, d]``.
        reg, max_iter, tol: Sinkhorn settings (``cfg.ot``).

    Returns:
        ``[M, h, w]``: plan columns; each sums to ``1/M`` over the grid.
    """
    from clip3dreid_plugin.losses import transport_plan

    model = model.eval()
    fmap = model.local_proj(model.backbone(image[None]))  # [1, d', h, w]
    h, w = fmap.shape[-2:]
    local = fmap.flatten(2).transpose(1, 2)
    text = model.text_head(text_feats[None])
    plan = transport_plan(local, text, reg=reg, max_iter=max_iter, tol=tol)[0]  # [N, M]
    return plan.T.reshape(-1, h, w)


def overlay(image_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends a jet-coloured, min-max scaled ``heat [h, w]`` over ``image_rgb [H, W, 3]`` (uint8)."""
    import cv2

    H, W = image_rgb.shape[:2]
    h = cv2.resize(heat.astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
    h = (h - h.min()) / max(float(h.max() - h.min()), 1e-12)
    colour = cv2.cvtColor(cv2.applyColorMap((h * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return (alpha * colour + (1 - alpha) * image_rgb).clip(0, 255).astype(np.uint8)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = CLIParser(description="Overlay the OT plan of body-shape descriptors on an image.")
    p.add_argument("--config-file", default="")
    p.add_argument("--weights", default="", help="student checkpoint")
    p.add_argument("--image", required=True)
    p.add_argument("--output", required=True, help="PNG: the image followed by one panel per descriptor")
    p.add_argument("--descriptor", type=int, default=None, help="only this descriptor pair index (0-15)")
    add_overrides(p)
    args = p.parse_args(argv)
    from PIL import Image

    from clip3dreid_plugin.config import ConfigError
    from clip3dreid_plugin.teacher.source import build_teacher
    from clip3dreid_plugin.tools.common import eval_transform, load_student, start_cli
    from datasets_ext.image_io import ImageReadError, read_image

    start_cli()
    try:
        cfg, model = load_student(args.config_file, ["model.name", "clip3dreid", *args.opts], args.weights)
        pil = read_image(args.image)
        teacher = build_teacher(cfg)
    except (ConfigError, ImageReadError, FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    x = eval_transform(cfg)(pil)
    with torch.no_grad():
        labels = teacher.label(teacher.encode_images(x[None]))
        text = teacher.gather_text_features(labels)[0]
    heat = transport_heatmaps(model, x, text, cfg.ot.reg, cfg.ot.max_iter, cfg.ot.tol).numpy()
    rgb = np.asarray(pil.resize((cfg.data.width, cfg.data.height)))
    idx = [args.descriptor] if args.descriptor is not None else list(range(heat.shape[0]))
    if any(i < 0 or i >= heat.shape[0] for i in idx):
        print(f"error: --descriptor must be in 0..{heat.shape[0] - 1}", file=sys.stderr)
        return 2
    panels = [rgb] + [overlay(rgb, heat[i]) for i in idx]
    Image.fromarray(np.concatenate(panels, axis=1)).save(args.output)
    for i in idx:
        logger.info("descriptor %d: %s", i, teacher.pairs[i][int(labels[0, i])])
    return 0


if __name__ == "__main__":
    sys.exit(main())

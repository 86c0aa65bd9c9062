"""Transport-plan heatmaps over the image (paper Fig. 3), ``clip3dreid-visualize-transport``.

For one image the student gives local features ``F`` on an ``h x w`` grid; each of the 16 descriptors contributes
the text feature of its chosen phrase, projected by ``Psi``. The entropic OT plan ``T* [N, M]`` between the two says
how much of each descriptor's mass each grid cell carries; column ``m`` on the ``h x w`` grid is the map of
descriptor ``m``.

The figure cannot show structure that is not there: the image, then one panel per descriptor with one block per
grid cell (no smoothing), every panel on the same absolute scale as the colour bar at the right. The scale is the
uniform share: 1 means the descriptor's mass spread evenly over the grid, 0 none of it. Under each panel stand the
phrase and the column's max/min ratio, so a uniform plan shows flat panels of one colour and ``max/min 1.00``.

Text features: the ones the checkpoint was trained against (``teacher_text``, which ``CLIP3DReIDEngine`` stores in
every checkpoint); for an older checkpoint, those of the run's teacher (its cache file, the ideal teacher, or CLIP
weights in ``teacher.pretrained``). A randomly initialised CLIP is never used. Which phrase of each pair: the CLIP
teacher's choice when ``teacher.pretrained`` names weights, else the teacher cache's or synthcc's ground truth when
they hold the image, else the student's own reading (the phrase nearer its local features). The tool logs where
both came from.

Usage::

    clip3dreid-visualize-transport --weights RUN/model/model-best.pth.tar --image IMG --output out.png \\
        [--descriptor 3] [--config-file CFG] [KEY VALUE ...]     # the config defaults to RUN/config.yaml
"""
from __future__ import annotations

import logging
import sys
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from clip3dreid_plugin.tools.common import CLIParser, add_overrides, cli_main

logger = logging.getLogger(__name__)

__all__ = ["PhraseFeatures", "colourise", "phrase_features", "descriptor_labels_for", "transport_figure",
           "transport_heatmaps", "uniform_share", "main"]

MIN_PANEL_WIDTH = 128  # px: room for the longest phrase ("Narrow-Shouldered") under a panel
CAPTION_HEIGHT = 30  # px: two lines of text under each panel
GAP = 4  # px of white between panels, so that two flat panels do not read as one
BAR_WIDTH = 16  # px: the colour bar; its tick labels take LABEL_WIDTH more
LABEL_WIDTH = 44


class PhraseFeatures(NamedTuple):
    """The text side of the plan: ``features [M, 2, d]``, the ``M`` phrase pairs and where they came from."""

    features: torch.Tensor
    pairs: List[Tuple[str, str]]
    source: str


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


def uniform_share(heat: np.ndarray) -> np.ndarray:
    """Plan columns ``[M, h, w]`` (each summing to ``1/M``) in units of the uniform share: 1 = an even spread."""
    m, h, w = heat.shape
    return heat * (m * h * w)


def colourise(values: np.ndarray, vmax: float) -> np.ndarray:
    """Viridis colours ``[..., 3]`` (uint8 RGB) of ``values`` on the absolute scale ``[0, vmax]``."""
    import cv2

    level = np.clip(np.rint(255 * np.asarray(values, np.float64) / max(vmax, 1e-12)), 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(level.reshape(-1, 1), cv2.COLORMAP_VIRIDIS).reshape(*level.shape, 3)
    return bgr[..., ::-1].copy()


def transport_figure(image_rgb: np.ndarray, heat: np.ndarray,
                     captions: Sequence[str]) -> Tuple[np.ndarray, List[Tuple[int, int, int, int]], float]:
    """The image, one panel per plan column on one shared scale, and the colour bar.

    Args:
        image_rgb: ``[H, W, 3]`` uint8, the image as the student saw it.
        heat: ``[K, h, w]`` the plan columns to show in units of the uniform share (:func:`uniform_share`); the
            colour scale runs from 0 to their common maximum.
        captions: one phrase per panel; the column's max/min ratio is added under it.

    Returns:
        ``(figure [H', W', 3] uint8, panel boxes (x0, y0, x1, y1) of the maps only, vmax)``.
    """
    from PIL import Image, ImageDraw

    H, W = image_rgb.shape[:2]
    k, h, w = heat.shape
    scale = max(1, -(-MIN_PANEL_WIDTH // W))
    ph, pw = H * scale, W * scale
    step = pw + GAP
    vmax = float(heat.max()) if heat.size else 1.0
    fig = np.full((ph + CAPTION_HEIGHT, step * (k + 1) + BAR_WIDTH + LABEL_WIDTH, 3), 255, np.uint8)
    fig[:ph, :pw] = np.asarray(Image.fromarray(image_rgb).resize((pw, ph), Image.NEAREST))
    boxes = []
    ys = (np.arange(ph) * h // ph)[:, None]
    xs = (np.arange(pw) * w // pw)[None, :]
    for i in range(k):
        x0 = step * (i + 1)
        fig[:ph, x0:x0 + pw] = colourise(heat[i][ys, xs], vmax)  # nearest: one block per grid cell
        boxes.append((x0, 0, x0 + pw, ph))
    bar_x = step * (k + 1)
    fig[:ph, bar_x:bar_x + BAR_WIDTH] = colourise(np.linspace(vmax, 0, ph)[:, None].repeat(BAR_WIDTH, 1), vmax)
    canvas = Image.fromarray(fig)
    draw = ImageDraw.Draw(canvas)
    for i, caption in enumerate(captions):
        lo, hi = float(heat[i].min()), float(heat[i].max())
        ratio = f"max/min {hi / lo:.3f}" if lo > 0 else "max/min inf"
        draw.text((step * (i + 1) + 2, ph + 2), caption, fill=(0, 0, 0))
        draw.text((step * (i + 1) + 2, ph + 15), ratio, fill=(0, 0, 0))
    for frac in (0.0, 0.5, 1.0):
        y = min(ph - 10, int(round((1 - frac) * (ph - 1))))
        draw.text((bar_x + BAR_WIDTH + 3, max(0, y - 5)), f"{frac * vmax:.2f}", fill=(0, 0, 0))
    draw.text((bar_x, ph + 2), "x uniform", fill=(0, 0, 0))
    draw.text((bar_x, ph + 15), "share", fill=(0, 0, 0))
    return np.asarray(canvas), boxes, vmax


def _run_cache_path(cfg) -> str:
    """The teacher-cache file of the run's first training dataset (``teacher.cache_dir``, name and weights), or
    the stand-in teacher's cache."""
    from clip3dreid_plugin.teacher.cache import cache_file_path
    from clip3dreid_plugin.teacher.weights import weights_label_for

    t = cfg.teacher
    if t.mode == "stand-in":  # its own file, apart from the teacher's
        from clip3dreid_plugin.study.standin_teacher import standin_cache_path

        return standin_cache_path(cfg)
    return cache_file_path(t.cache_dir, cfg.data.sources[0], t.name, weights_label_for(t.pretrained or None, t.name))


def phrase_features(cfg, checkpoint: dict) -> PhraseFeatures:
    """The phrase features the student was trained against (see the module docstring for the order tried).

    Raises:
        ConfigError: none can be found without a randomly initialised CLIP (the message says what to give).
    """
    from clip3dreid_plugin.config import ConfigError
    from clip3dreid_plugin.teacher.cache import TeacherCache
    from clip3dreid_plugin.teacher.descriptors import DESCRIPTOR_PAIRS, parse_pairs

    stored = checkpoint.get("teacher_text")
    if stored:
        return PhraseFeatures(stored["features"].float(), [tuple(p) for p in stored["pairs"]],
                              f"stored in the checkpoint: {stored['teacher']}")
    t = cfg.teacher
    if t.mode == "ideal":
        from clip3dreid_plugin.study.ideal_teacher import orthonormal_phrase_features

        return PhraseFeatures(orthonormal_phrase_features(len(DESCRIPTOR_PAIRS), cfg.clip3dreid.teacher_dim,
                                                          t.ideal_seed), list(DESCRIPTOR_PAIRS),
                              f"the ideal teacher of the config (teacher.ideal_seed {t.ideal_seed})")
    if t.mode in ("cache", "stand-in"):
        path = _run_cache_path(cfg)
        try:
            cache = TeacherCache.load(path)
        except FileNotFoundError:
            pass
        else:
            return PhraseFeatures(cache.text_features.float(), cache.pairs, f"the run's teacher cache {path}")
    if t.pretrained:
        from clip3dreid_plugin.teacher.source import build_teacher

        teacher = build_teacher(cfg)
        return PhraseFeatures(teacher.descriptor_text_features().float(), list(parse_pairs(t.descriptor_pairs)),
                              f"CLIP {t.name} with {t.pretrained}")
    raise ConfigError("no phrase features for the transport plan: the checkpoint stores none (it predates "
                      "teacher_text), the config's teacher cache is missing and teacher.pretrained names no CLIP "
                      "weights; give the run's config (--config-file) or teacher.pretrained (a randomly initialised "
                      "CLIP is not used)")


@torch.no_grad()
def descriptor_labels_for(cfg, model: torch.nn.Module, image_path: str, x: torch.Tensor,
                          phrases: PhraseFeatures) -> Tuple[torch.Tensor, str]:
    """Which phrase of each pair describes the image: ``(labels [M] long, where they came from)``.

    Args:
        cfg: the run's config.
        model: the student (eval mode).
        image_path: the image file (looked up in the teacher cache / synthcc's ground truth).
        x: the normalised image ``[3, H, W]``.
        phrases: from :func:`phrase_features`.
    """
    import os.path as osp

    from clip3dreid_plugin.losses.ot import cosine_cost

    t = cfg.teacher
    if t.pretrained:
        from clip3dreid_plugin.teacher.source import build_teacher

        teacher = build_teacher(cfg)
        return teacher.label(teacher.encode_images(x[None]))[0], f"the CLIP teacher {t.name} ({t.pretrained})"
    if t.mode == "ideal":
        from clip3dreid_plugin.body.synthcc import SynthCCError, synthcc_labels_by_path

        try:
            truth = synthcc_labels_by_path(cfg.data.root, ("train", "query", "gallery"))
        except SynthCCError:
            truth = {}
        if osp.abspath(image_path) in truth:
            return torch.tensor(truth[osp.abspath(image_path)]), "synthcc's ground truth (the ideal teacher's)"
    if t.mode in ("cache", "stand-in"):
        from clip3dreid_plugin.teacher.cache import TeacherCache, TeacherCacheMissError

        path = _run_cache_path(cfg)
        if osp.isfile(path):
            try:
                return TeacherCache.load(path).lookup([image_path])[1][0], f"the teacher cache {path}"
            except TeacherCacheMissError:
                pass
    # No teacher can label this image: the student's own reading, the phrase of each pair whose projection lies
    # nearer (lower mean cosine cost) to its local features.
    local = model.local_features(x[None])  # [1, N, d']
    m = phrases.features.size(0)
    text = model.text_head(phrases.features.reshape(1, 2 * m, -1))  # [1, 2M, d']
    cost = cosine_cost(local, text).mean(1).view(m, 2)
    return cost.argmin(1), "the student's own reading (no teacher labels this image)"


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; a user error ends in one line and exit code 2."""
    p = CLIParser(description="Overlay the OT plan of body-shape descriptors on an image.")
    p.add_argument("--config-file", default="", help="student config (default: the config.yaml of the run)")
    p.add_argument("--weights", default="", help="student checkpoint")
    p.add_argument("--image", required=True)
    p.add_argument("--output", required=True, help="PNG: the image, one panel per descriptor, the colour bar")
    p.add_argument("--descriptor", type=int, default=None, help="only this descriptor pair index (0-15)")
    add_overrides(p)
    args = p.parse_args(argv)
    from clip3dreid_plugin.tools.common import eval_transform, load_student, start_cli

    start_cli()  # before torchreid's first import, whose warnings it silences
    from PIL import Image

    from clip3dreid_plugin import compat
    from clip3dreid_plugin.config import ConfigError
    from datasets_ext.image_io import read_image

    cfg, model = load_student(args.config_file, ["model.name", "clip3dreid", *args.opts], args.weights)
    phrases = phrase_features(cfg, compat.load_checkpoint(args.weights) if args.weights else {})
    pil = read_image(args.image)
    x = eval_transform(cfg)(pil)
    labels, labelled_by = descriptor_labels_for(cfg, model, args.image, x, phrases)
    m = phrases.features.size(0)
    idx = [args.descriptor] if args.descriptor is not None else list(range(m))
    if any(i < 0 or i >= m for i in idx):
        raise ConfigError(f"--descriptor must be in 0..{m - 1}")
    logger.info("phrase features: %s", phrases.source)
    logger.info("phrases chosen by %s", labelled_by)
    text = phrases.features[torch.arange(m), labels]  # [M, d]
    share = uniform_share(transport_heatmaps(model, x, text, cfg.ot.reg, cfg.ot.max_iter, cfg.ot.tol).numpy())
    rgb = np.asarray(pil.convert("RGB").resize((cfg.data.width, cfg.data.height)))
    names = [phrases.pairs[i][int(labels[i])] for i in idx]
    figure, _, vmax = transport_figure(rgb, share[idx], names)
    Image.fromarray(figure).save(args.output)
    for i, name in zip(idx, names):
        logger.info("descriptor %d: %s, max/min over the grid %.3f", i, name, share[i].max() / share[i].min())
    logger.info("wrote %s (one colour scale, 0 to %.3f x the uniform share)", args.output, vmax)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ranked-result strips (torchreid's ``visrank``) under a clothes-aware protocol.

torchreid's ``visualize_ranked_results`` only knows the general protocol (it hides same-pid same-camera items) and
draws bare tiles. Here every protocol's junk items (the query's other same-id items that are not good matches:
same camera, or the other clothes condition) leave the ranking, queries without a valid match are dropped, and each
strip says what the protocol judges by: the query tile with its id, camera and clothes id, then the top-k gallery
items, each with its rank among the scored items, its distance, id, camera and clothes id, framed green for a good
match and red for another identity. A tracklet is shown by its first frame.

A strip shows each query's first ``topk`` scored items only, so they are found a block of queries at a time
(:func:`ranked_gallery`, on the distances' device): no ``[Q, G]`` matrix or mask is built, whatever the gallery's
size.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from datasets_ext.image_io import read_image

logger = logging.getLogger(__name__)

__all__ = ["PROTOCOL_RULES", "draw_ranked_strip", "protocol_masks", "ranked_entries", "ranked_gallery",
           "visualize_ranked_results_protocol", "write_ranked_strips"]

# Distances ranked per block of queries: ~32 MB of float64 per temporary.
_RANK_BLOCK_ELEMS = 1 << 22


def protocol_masks(q: Sequence[tuple], g: Sequence[tuple], mode: str):
    """Boolean ``good`` and ``junk`` matrices ``[Q, G]`` for items ``(path, pid, camid, dsetid, clothes)``."""
    qp, qc, ql = (np.asarray([it[i] for it in q]) for i in (1, 2, 4))
    gp, gc, gl = (np.asarray([it[i] for it in g]) for i in (1, 2, 4))
    return _good_and_junk(qp[:, None] == gp[None], qc[:, None] == gc[None], ql[:, None] == gl[None], mode)


def _good_and_junk(same_pid, same_cam, same_clothes, mode: str):
    """The protocol's ``good`` and ``junk`` masks from the pairwise equalities (numpy arrays or tensors)."""
    if mode == "general":
        good, junk = same_pid & ~same_cam, same_pid & same_cam
    elif mode == "cc":
        good, junk = same_pid & ~same_cam & ~same_clothes, same_pid & (same_cam | same_clothes)
    elif mode == "sc":
        good, junk = same_pid & ~same_cam & same_clothes, same_pid & (same_cam | ~same_clothes)
    else:
        raise ValueError(f"mode must be general, cc or sc, got '{mode}'")
    return good, junk


def _item_fields(items: Sequence[tuple], device: torch.device) -> Tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(np.asarray([it[i] for it in items]), device=device) for i in (1, 2, 4))


def ranked_gallery(distmat, query: Sequence[tuple], gallery: Sequence[tuple], mode: str,
                   topk: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each valid query's first ``topk`` scored gallery items under ``mode``, found a block of queries at a time.

    Junk items are not scored, so they take no rank; equal distances keep the gallery order.

    Args:
        distmat: ``[Q, G]`` distances: a :class:`~clip3dreid_plugin.evaluation.distance.FeatureDistances`, a tensor
            or an array; only blocks of rows are read, on its device.
        query: query items ``(path, pid, camid, dsetid, clothes_id)``.
        gallery: gallery items, same layout.
        mode: ``general`` | ``cc`` | ``sc``.
        topk: items per strip.

    Returns:
        ``(queries [Qv], items [Qv, k], distances [Qv, k], good [Qv, k])`` for the queries with a valid match, in
        order (``k = min(topk, G)``): each one's gallery indices in rank order (``-1`` pads a query with fewer
        scored items), their distances and whether each is a good match.
    """
    dev = torch.device(getattr(distmat, "device", "cpu"))  # numpy arrays say "cpu"
    qp, qc, ql = _item_fields(query, dev)
    gp, gc, gl = _item_fields(gallery, dev)
    num_q, num_g = len(query), len(gallery)
    k = min(topk, num_g)
    block = max(1, _RANK_BLOCK_ELEMS // max(1, num_g))
    out: List[List[torch.Tensor]] = [[], [], [], []]
    for r0 in range(0, num_q, block):
        r1 = min(num_q, r0 + block)
        d = torch.as_tensor(distmat[r0:r1]).to(dev, torch.float64)
        good, junk = _good_and_junk(qp[r0:r1, None] == gp[None], qc[r0:r1, None] == gc[None],
                                    ql[r0:r1, None] == gl[None], mode)
        key = d.masked_fill(junk, float("inf"))
        # a stable sort, so that the gallery index breaks ties (torch.topk leaves their order open)
        idx = torch.argsort(key, dim=1, stable=True)[:, :k]
        vals = key.gather(1, idx)
        idx = idx.masked_fill(torch.isinf(vals), -1)
        valid = good.any(dim=1)
        out[0].append(torch.nonzero(valid).flatten() + r0)
        out[1].append(idx[valid])
        out[2].append(vals[valid])
        out[3].append(good.gather(1, idx.clamp(min=0))[valid] & (idx[valid] >= 0))
    if not out[0]:  # no query at all; blocks without a valid query concatenate to empty arrays
        return (np.zeros(0, dtype=np.int64), np.zeros((0, k), dtype=np.int64), np.zeros((0, k)),
                np.zeros((0, k), dtype=bool))
    return tuple(torch.cat(x).cpu().numpy() for x in out)  # type: ignore[return-value]


def ranked_entries(items: np.ndarray, distances: np.ndarray, good: np.ndarray) -> List[tuple]:
    """One query's row of :func:`ranked_gallery` as ``(rank, gallery index, distance, good)`` entries."""
    return [(r + 1, int(j), float(dist), bool(ok)) for r, (j, dist, ok) in enumerate(zip(items, distances, good))
            if j >= 0]


#: What each protocol scores, printed above every strip.
PROTOCOL_RULES = {
    "general": "general: green = same id, other camera",
    "cc": "cc: green = same id, other camera, other clothes",
    "sc": "sc: green = same id, other camera, same clothes",
}
_GREEN, _RED = (0, 170, 0), (220, 0, 0)
_MIN_TILE_WIDTH = 96  # px: room for "#10 d=1.234" under a tile
_BORDER, _GAP, _HEADER, _CAPTION = 3, 4, 14, 40


def _tile(path, width: int, height: int, frame) -> np.ndarray:
    img = read_image(path[0] if isinstance(path, (tuple, list)) else path).convert("RGB").resize((width, height))
    out = np.full((height + 2 * _BORDER, width + 2 * _BORDER, 3), frame, np.uint8)
    out[_BORDER:-_BORDER, _BORDER:-_BORDER] = np.asarray(img)
    return out


def draw_ranked_strip(query_item: tuple, gallery: Sequence[tuple], entries: Sequence[tuple], mode: str, width: int,
                      height: int) -> np.ndarray:
    """One strip: the query, then each entry of :func:`ranked_entries` with its annotations.

    Args:
        query_item: ``(path, pid, camid, dsetid, clothes_id)``.
        gallery: gallery items, same layout.
        entries: ``(rank, gallery index, distance, good)`` rows.
        mode: the protocol, for the header.
        width, height: tile size before the upscaling to at least ``_MIN_TILE_WIDTH`` px wide.

    Returns:
        ``[H', W', 3]`` uint8 RGB.
    """
    scale = max(1, -(-_MIN_TILE_WIDTH // width))
    tw, th = width * scale + 2 * _BORDER, height * scale + 2 * _BORDER
    step = tw + _GAP
    strip = np.full((_HEADER + th + _CAPTION, step * (len(entries) + 1) + _GAP, 3), 255, np.uint8)
    tiles = [(query_item, (0, 0, 0), ["query", f"id {query_item[1]} cam {query_item[2]}", f"clothes {query_item[4]}"])]
    for rank, j, dist, good in entries:
        g = gallery[j]
        tiles.append((g, _GREEN if good else _RED, [f"#{rank} d={dist:.3f}", f"id {g[1]} cam {g[2]}",
                                                    f"clothes {g[4]}"]))
    for i, (item, frame, _) in enumerate(tiles):
        x0 = i * step + (_GAP if i else 0)
        strip[_HEADER:_HEADER + th, x0:x0 + tw] = _tile(item[0], tw - 2 * _BORDER, th - 2 * _BORDER, frame)
    canvas = Image.fromarray(strip)
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), PROTOCOL_RULES[mode] + "; red = another id", fill=(0, 0, 0))
    for i, (_, _, lines) in enumerate(tiles):
        x0 = i * step + (_GAP if i else 0)
        for k, line in enumerate(lines):
            draw.text((x0 + 1, _HEADER + th + 1 + 12 * k), line, fill=(0, 0, 0))
    return np.asarray(canvas)


def write_ranked_strips(query: Sequence[tuple], gallery: Sequence[tuple], entries: Sequence[Sequence[tuple]],
                        mode: str, save_dir: str, width: int, height: int) -> List[str]:
    """Writes ``save_dir/<query file stem>.jpg`` for every query; returns the paths.

    Args:
        query, gallery: their items ``(path, pid, camid, dsetid, clothes_id)``.
        entries: per query, its :func:`ranked_entries`.
        mode, width, height: see :func:`visualize_ranked_results_protocol`.
    """
    os.makedirs(save_dir, exist_ok=True)
    paths = []
    for item, row in zip(query, entries):
        stem = osp.splitext(osp.basename(item[0][0] if isinstance(item[0], (tuple, list)) else item[0]))[0]
        paths.append(osp.join(save_dir, stem + ".jpg"))
        Image.fromarray(draw_ranked_strip(item, gallery, row, mode, width, height)).save(paths[-1], quality=95)
    return paths


def visualize_ranked_results_protocol(distmat, query: Sequence[tuple], gallery: Sequence[tuple],
                                      mode: str, save_dir: str, data_type: str = "image", width: int = 128,
                                      height: int = 256, topk: int = 10) -> int:
    """Writes one ranked strip per valid query of ``mode`` to ``save_dir``; returns how many.

    Args:
        distmat: ``[Q, G]`` distances (see :func:`ranked_gallery`: a ``FeatureDistances``, a tensor or an array).
        query: query items ``(path, pid, camid, dsetid, clothes_id)``.
        gallery: gallery items, same layout.
        mode: ``general`` | ``cc`` | ``sc``.
        save_dir: output folder.
        data_type: ``image`` or ``video`` (a tracklet is shown by its first frame).
        width: tile width.
        height: tile height.
        topk: gallery items shown per query.
    """
    keep, items, dists, good = ranked_gallery(distmat, query, gallery, mode, topk)
    logger.info("visrank %s: %d of %d queries have a valid match -> %s", mode, len(keep), len(query), save_dir)
    if len(keep):
        write_ranked_strips([query[i] for i in keep], list(gallery),
                            [ranked_entries(*row) for row in zip(items, dists, good)], mode, save_dir, width, height)
    return len(keep)

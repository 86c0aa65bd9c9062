"""Ranked-result strips (torchreid's ``visrank``) under a clothes-aware protocol.

torchreid's ``visualize_ranked_results`` only knows the general protocol (it hides same-pid same-camera items) and
draws bare tiles. Here every protocol's junk items (the query's other same-id items that are not good matches:
same camera, or the other clothes condition) leave the ranking, queries without a valid match are dropped, and each
strip says what the protocol judges by: the query tile with its id, camera and clothes id, then the top-k gallery
items, each with its rank among the scored items, its distance, id, camera and clothes id, framed green for a good
match and red for another identity. A tracklet is shown by its first frame.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
from typing import List, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["PROTOCOL_RULES", "draw_ranked_strip", "protocol_masks", "ranked_entries", "visualize_ranked_results_protocol",
           "write_ranked_strips"]


def protocol_masks(q: Sequence[tuple], g: Sequence[tuple], mode: str):
    """Boolean ``good`` and ``junk`` matrices ``[Q, G]`` for items ``(path, pid, camid, dsetid, clothes)``."""
    qp, qc, ql = (np.asarray([it[i] for it in q]) for i in (1, 2, 4))
    gp, gc, gl = (np.asarray([it[i] for it in g]) for i in (1, 2, 4))
    same_pid = qp[:, None] == gp[None]
    same_cam = qc[:, None] == gc[None]
    same_clothes = ql[:, None] == gl[None]
    if mode == "general":
        good, junk = same_pid & ~same_cam, same_pid & same_cam
    elif mode == "cc":
        good, junk = same_pid & ~same_cam & ~same_clothes, same_pid & (same_cam | same_clothes)
    elif mode == "sc":
        good, junk = same_pid & ~same_cam & same_clothes, same_pid & (same_cam | ~same_clothes)
    else:
        raise ValueError(f"mode must be general, cc or sc, got '{mode}'")
    return good, junk


def visualize_ranked_results_protocol(distmat: np.ndarray, query: Sequence[tuple], gallery: Sequence[tuple],
                                      mode: str, save_dir: str, data_type: str = "image", width: int = 128,
                                      height: int = 256, topk: int = 10) -> int:
    """Writes one ranked grid per valid query of ``mode`` to ``save_dir``; returns how many.

    Args:
        distmat: ``[Q, G]`` distances.
        query: query items ``(path, pid, camid, dsetid, clothes_id)``.
        gallery: gallery items, same layout.
        mode: ``general`` | ``cc`` | ``sc``.
        save_dir: output folder.
        data_type: ``image`` or ``video`` (a tracklet is shown by its first frame).
        width: tile width.
        height: tile height.
        topk: gallery items shown per query.
    """
    good, junk = protocol_masks(query, gallery, mode)
    keep = np.flatnonzero(good.any(1))
    d = np.asarray(distmat, dtype=np.float64)[keep]  # junk items are skipped when the strips are drawn
    q = [query[i] for i in keep]
    logger.info("visrank %s: %d of %d queries have a valid match -> %s", mode, len(q), len(query), save_dir)
    if len(q):
        write_ranked_strips(d, q, list(gallery), good[keep], junk[keep], mode, save_dir, width, height, topk)
    return len(q)


#: What each protocol scores, printed above every strip.
PROTOCOL_RULES = {
    "general": "general: green = same id, other camera",
    "cc": "cc: green = same id, other camera, other clothes",
    "sc": "sc: green = same id, other camera, same clothes",
}
_GREEN, _RED = (0, 170, 0), (220, 0, 0)
_MIN_TILE_WIDTH = 96  # px: room for "#10 d=1.234" under a tile
_BORDER, _GAP, _HEADER, _CAPTION = 3, 4, 14, 40


def ranked_entries(dist_row: np.ndarray, good_row: np.ndarray, junk_row: np.ndarray, topk: int) -> List[tuple]:
    """The first ``topk`` scored gallery items of one query: ``(rank, gallery index, distance, good)``.

    Junk items are not scored, so they take no rank; ties keep the gallery order.
    """
    order = [int(j) for j in np.argsort(dist_row, kind="stable") if not junk_row[j]][:topk]
    return [(r + 1, j, float(dist_row[j]), bool(good_row[j])) for r, j in enumerate(order)]


def _tile(path, width: int, height: int, frame) -> np.ndarray:
    from PIL import Image

    from datasets_ext.image_io import read_image

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
    from PIL import Image, ImageDraw

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


def write_ranked_strips(distmat: np.ndarray, query: Sequence[tuple], gallery: Sequence[tuple], good: np.ndarray,
                        junk: np.ndarray, mode: str, save_dir: str, width: int, height: int, topk: int) -> List[str]:
    """Writes ``save_dir/<query file stem>.jpg`` for every query row; returns the paths.

    Args:
        distmat: ``[Q, G]`` distances of these queries.
        query, gallery: their items ``(path, pid, camid, dsetid, clothes_id)``.
        good, junk: ``[Q, G]`` masks of :func:`protocol_masks`.
        mode, width, height, topk: see :func:`visualize_ranked_results_protocol`.
    """
    from PIL import Image

    os.makedirs(save_dir, exist_ok=True)
    paths = []
    for i, item in enumerate(query):
        entries = ranked_entries(distmat[i], good[i], junk[i], topk)
        stem = osp.splitext(osp.basename(item[0][0] if isinstance(item[0], (tuple, list)) else item[0]))[0]
        paths.append(osp.join(save_dir, stem + ".jpg"))
        Image.fromarray(draw_ranked_strip(item, gallery, entries, mode, width, height)).save(paths[-1], quality=95)
    return paths

"""Ranked-result visualisation (torchreid's ``visrank``) under a clothes-aware protocol.

torchreid's ``visualize_ranked_results`` only knows the general protocol (it hides same-pid
same-camera items). For ``cc``/``sc`` this module pushes the protocol's junk items (same pid and
same camera or same/different clothes) to the end of every ranking and drops queries without a
valid match, then hands the result to torchreid's own visualiser, so the top-k grids show what the
protocol scores: green = a valid match, red = another identity.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torchreid

logger = logging.getLogger(__name__)

__all__ = ["protocol_masks", "visualize_ranked_results_protocol"]


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
        data_type: ``image`` or ``video``.
        width: tile width.
        height: tile height.
        topk: gallery items shown per query.
    """
    good, junk = protocol_masks(query, gallery, mode)
    keep = np.flatnonzero(good.any(1))
    d = np.array(distmat, dtype=np.float64, copy=True)
    d[junk] = d.max() + 1.0  # junk leaves the visible top-k but stays in the list torchreid expects
    d = d[keep]
    q = [query[i] for i in keep]
    logger.info("visrank %s: %d of %d queries have a valid match -> %s", mode, len(q), len(query), save_dir)
    if len(q):
        torchreid.utils.visualize_ranked_results(d, (q, list(gallery)), data_type, width=width, height=height,
                                                 save_dir=save_dir, topk=topk)
    return len(q)

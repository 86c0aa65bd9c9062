"""Ranked-result visualisation (torchreid's ``visrank``) under a clothes-aware protocol.

torchreid's ``visualize_ranked_results`` only knows the general protocol (it hides same-pid
same-camera items). For ``cc``/``sc`` this module pushes the protocol's junk items (same pid and
same camera or same/different clothes) to the end of every ranking and drops queries without a
valid match, then hands the result to torchreid's own visualiser, so the top-k grids show what the
protocol scores: green = a valid match, red = another identity.

A grid shows each query's first ``topk`` items only, so they are found a block of queries at a time
(:func:`ranked_gallery`, on the distances' device) and torchreid draws each block from a matrix over just the
items its queries show: no ``[Q, G]`` matrix or mask is built, whatever the gallery's size.
"""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Sequence, Tuple

import numpy as np
import torch
import torchreid

logger = logging.getLogger(__name__)

__all__ = ["protocol_masks", "ranked_gallery", "visualize_ranked_results_protocol"]

# Distances ranked per block of queries: ~32 MB of float64 per temporary.
_RANK_BLOCK_ELEMS = 1 << 22
# Queries handed to torchreid's visualiser per call (its matrix is queries x the items they show).
_DRAW_BLOCK = 512


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
                   topk: int) -> Tuple[np.ndarray, np.ndarray]:
    """The gallery items each ranked grid of ``mode`` shows, found a block of queries at a time.

    A grid shows, in ascending distance, the items that are not junk, then (when fewer than ``topk``) the junk items
    torchreid's visualiser does not hide itself (it hides same identity and camera), as the ranking that puts junk
    last gives them. Equal distances are ordered as ``torch.topk`` orders them (torchreid's ``argsort`` leaves that
    order open too).

    Args:
        distmat: ``[Q, G]`` distances: a :class:`~clip3dreid_plugin.evaluation.distance.FeatureDistances`, a tensor
            or an array; only blocks of rows are read, on its device.
        query: query items ``(path, pid, camid, dsetid, clothes_id)``.
        gallery: gallery items, same layout.
        mode: ``general`` | ``cc`` | ``sc``.
        topk: items per grid.

    Returns:
        ``(queries [Qv], items [Qv, k])``: the queries with a valid match, in order, and each one's shown gallery
        indices (``k = min(topk, G)``; ``-1`` pads a query that has fewer items to show).
    """
    dev = torch.device(getattr(distmat, "device", "cpu"))  # numpy arrays say "cpu"
    qp, qc, ql = _item_fields(query, dev)
    gp, gc, gl = _item_fields(gallery, dev)
    num_q, num_g = len(query), len(gallery)
    k = min(topk, num_g)
    block = max(1, _RANK_BLOCK_ELEMS // max(1, num_g))
    keep, shown = [], []
    for r0 in range(0, num_q, block):
        r1 = min(num_q, r0 + block)
        d = torch.as_tensor(distmat[r0:r1]).to(dev, torch.float64)
        same_pid, same_cam = qp[r0:r1, None] == gp[None], qc[r0:r1, None] == gc[None]
        good, junk = _good_and_junk(same_pid, same_cam, ql[r0:r1, None] == gl[None], mode)
        # Junk sorts after every other item of its row; what torchreid would hide never shows.
        key = torch.where(junk, d + (d.max() - d.min() + 1.0), d).masked_fill(same_pid & same_cam, float("inf"))
        vals, idx = key.topk(k, dim=1, largest=False, sorted=True)
        idx = idx.masked_fill(torch.isinf(vals), -1)
        valid = good.any(dim=1)
        keep.append(torch.nonzero(valid).flatten() + r0)
        shown.append(idx[valid])
    return (torch.cat(keep).cpu().numpy() if keep else np.zeros(0, dtype=np.int64),
            torch.cat(shown).cpu().numpy() if shown else np.zeros((0, k), dtype=np.int64))


def _block_matrix(shown: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A small distance matrix whose ranking gives each row's shown items in order.

    Returns:
        ``(items, distmat)``: the sorted union of the block's shown gallery indices, and ``[rows, len(items)]``
        distances: ``r`` for a row's ``r``-th shown item, distinct values above ``topk`` for the other columns (the
        rest of a row that shows fewer than ``topk`` items are items torchreid hides for it, so it draws none).
    """
    items = np.unique(shown[shown >= 0])
    k = shown.shape[1]
    dm = np.tile(k + 1.0 + np.arange(len(items), dtype=np.float64), (len(shown), 1))
    rows, ranks = np.nonzero(shown >= 0)
    dm[rows, np.searchsorted(items, shown[rows, ranks])] = ranks
    return items, dm


def visualize_ranked_results_protocol(distmat, query: Sequence[tuple], gallery: Sequence[tuple],
                                      mode: str, save_dir: str, data_type: str = "image", width: int = 128,
                                      height: int = 256, topk: int = 10) -> int:
    """Writes one ranked grid per valid query of ``mode`` to ``save_dir``; returns how many.

    Args:
        distmat: ``[Q, G]`` distances (see :func:`ranked_gallery`: a ``FeatureDistances``, a tensor or an array).
        query: query items ``(path, pid, camid, dsetid, clothes_id)``.
        gallery: gallery items, same layout.
        mode: ``general`` | ``cc`` | ``sc``.
        save_dir: output folder.
        data_type: ``image`` or ``video``.
        width: tile width.
        height: tile height.
        topk: gallery items shown per query.
    """
    keep, shown = ranked_gallery(distmat, query, gallery, mode, topk)
    logger.info("visrank %s: %d of %d queries have a valid match -> %s", mode, len(keep), len(query), save_dir)
    for b0 in range(0, len(keep), _DRAW_BLOCK):
        items, dm = _block_matrix(shown[b0:b0 + _DRAW_BLOCK])
        q = [query[i] for i in keep[b0:b0 + _DRAW_BLOCK]]
        # torchreid prints the sizes of each block's small matrix, which would mislead: the log line above counts.
        with contextlib.redirect_stdout(io.StringIO()):
            torchreid.utils.visualize_ranked_results(dm, (q, [gallery[j] for j in items]), data_type, width=width,
                                                     height=height, save_dir=save_dir, topk=topk)
    return len(keep)

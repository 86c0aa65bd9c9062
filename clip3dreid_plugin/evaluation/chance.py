"""The exact expected CMC of a random ranking: the floor every evaluation records (``chance_cmc`` in metrics.json).

The Monte Carlo chance level of mAP and rank-1 (a research instrument) is
:func:`clip3dreid_plugin.study.chance.chance_level`.
"""
from __future__ import annotations

from typing import List

import numpy as np

__all__ = ["chance_cmc"]


def chance_cmc(q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray,
               q_clothes: np.ndarray, g_clothes: np.ndarray, mode: str, max_rank: int) -> List[float]:
    """The exact expected CMC of a random ranking under ``mode``, the curve a model that learned nothing follows.

    A query keeps the same good and junk items as in :mod:`clip3dreid_plugin.evaluation.rank` (good: same id,
    another camera, and other / the same clothes for ``cc`` / ``sc``; junk: the query's other same-id items, removed
    from the ranking). With ``n`` items left and ``g`` of them good, a uniformly random order puts no good item in
    the first ``k`` with probability ``C(n - g, k) / C(n, k)``. Queries without a good item are skipped, as the
    evaluator does.

    Args:
        q_pids, q_camids, q_clothes: ``[Q]`` labels of the queries.
        g_pids, g_camids, g_clothes: ``[G]`` labels of the gallery.
        mode: ``general`` | ``sc`` | ``cc``.
        max_rank: length of the curve.

    Returns:
        ``max_rank`` fractions, the mean over valid queries of P(first good match at rank <= k).
    """
    if mode not in ("general", "sc", "cc"):
        raise ValueError(f"mode must be general, sc or cc, got '{mode}'")
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    n_good = np.zeros(len(q_pids), np.int64)
    n_junk = np.zeros(len(q_pids), np.int64)
    for pid in np.unique(q_pids):
        qi, gi = np.flatnonzero(q_pids == pid), np.flatnonzero(g_pids == pid)
        good = np.asarray(g_camids)[gi][None] != np.asarray(q_camids)[qi][:, None]
        same_clothes = np.asarray(g_clothes)[gi][None] == np.asarray(q_clothes)[qi][:, None]
        if mode == "cc":
            good &= ~same_clothes
        elif mode == "sc":
            good &= same_clothes
        n_good[qi] = good.sum(1)
        n_junk[qi] = len(gi) - n_good[qi]
    keep = n_good > 0
    if not keep.any():
        return [0.0] * max_rank
    n = (len(g_pids) - n_junk[keep]).astype(np.float64)[:, None]
    g = n_good[keep].astype(np.float64)[:, None]
    i = np.arange(max_rank, dtype=np.float64)[None]
    # prod_{i<k} (n - g - i) / (n - i): no good item among the first k; a factor <= 0 means one must be there.
    miss = np.cumprod(np.clip((n - g - i) / np.maximum(n - i, 1.0), 0.0, None), axis=1)
    return [float(v) for v in (1.0 - miss).mean(0)]

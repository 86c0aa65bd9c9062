"""Chance level: what a model that learned nothing scores on a dataset's own split and protocols."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from clip3dreid_plugin.evaluation.rank import evaluate_all
from datasets_ext.base import to_clothes_items

__all__ = ["chance_cmc", "chance_level"]


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


def chance_level(ds, protocols: Sequence[str], draws: int, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Mean mAP and rank-1 (and the rank-1 standard deviation) of ``draws`` random rankings, per protocol.

    Each draw ranks the gallery by i.i.d. uniform distances and is scored by the plugin's evaluator with the
    dataset's own camera and clothes rules, so the numbers are those of a model that learned nothing.

    Args:
        ds: a dataset with ``query`` and ``gallery`` item lists (``(path, pid, camid, ...)``, clothes optional).
        protocols: e.g. ``("general", "cc")``.
        draws: random rankings to average.
        seed: seed of the random distances.

    Returns:
        ``{protocol: {"mAP", "rank1", "rank1_sd"}}`` as fractions.
    """
    q, g = to_clothes_items(ds.query), to_clothes_items(ds.gallery)
    # pid, camid, clothes of the (path, pid, camid, dsetid, clothes) items, query then gallery (evaluate_all's order)
    labels = [np.array([it[i] for it in items]) for i in (1, 2, 4) for items in (q, g)]
    rng = np.random.default_rng(seed)
    per = {m: [] for m in protocols}
    for _ in range(draws):
        out = evaluate_all(rng.random((len(q), len(g))), *labels, modes=protocols, max_rank=1)
        for m, (cmc, mAP) in out.items():
            per[m].append((mAP, cmc[0]))
    res = {}
    for m, v in per.items():
        a = np.array(v)
        res[m] = {"mAP": float(a[:, 0].mean()), "rank1": float(a[:, 1].mean()), "rank1_sd": float(a[:, 1].std())}
    return res

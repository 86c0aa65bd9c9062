"""Chance level: what a model that learned nothing scores on a dataset's own split and protocols, by drawing
random rankings (the exact expected CMC the evaluator records is :mod:`clip3dreid_plugin.evaluation.chance`)."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from clip3dreid_plugin.evaluation.rank import evaluate_all
from datasets_ext.base import to_clothes_items

__all__ = ["chance_level"]


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

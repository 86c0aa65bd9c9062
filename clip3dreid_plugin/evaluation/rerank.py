"""k-reciprocal re-ranking (``test.rerank``): torchreid's ``re_ranking``, its memory checked before a run starts.

torchreid's ``re_ranking`` (Zhong et al., CVPR 2017) needs the query-query, gallery-gallery and query-gallery
distances as numpy arrays and holds several ``(Q+G)^2`` arrays at once: about
:data:`RERANK_BYTES_PER_PAIR` bytes per pair at its peak, inputs included (:func:`rerank_memory_bytes`; a test
checks it against ``tracemalloc``). At LaST's size (10k queries, 125k gallery images) that is over 400 GB, so a run
asking for it is stopped before training with the figure, not at its first evaluation. The distances are computed a
block of rows at a time on the features' device and written into host arrays, so the GPU never holds a full matrix.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from clip3dreid_plugin.evaluation.distance import FeatureDistances

logger = logging.getLogger(__name__)

__all__ = ["RERANK_BYTES_PER_PAIR", "rerank_memory_bytes", "available_memory_bytes", "rerank_memory_error",
           "rerank_distances"]

#: Bytes per pair of the (Q+G) items that torchreid's ``re_ranking`` holds while it argsorts (its float32 matrix and
#: weights, the int64 and int32 ranks, and the inputs): what bounds its peak unless queries outnumber the gallery.
#: NumPy 1 promotes ``1. * float32`` to float64, four bytes more.
RERANK_BYTES_PER_PAIR = 24 if int(np.__version__.split(".")[0]) >= 2 else 28
# The same accounting for its last stage, where [Q, Q+G] temporaries join the matrix and the weights.
_FINAL_BYTES_PER_PAIR, _FINAL_BYTES_PER_QUERY_PAIR = (12, 18) if RERANK_BYTES_PER_PAIR == 24 else (20, 26)
# Per-item allowance for the index lists it builds (a few hundred bytes an item, measured).
_BYTES_PER_ITEM = 1024

# Distances per block when writing a matrix into host memory: ~64 MB of float32 on the device.
_BLOCK_ELEMS = 1 << 24


def rerank_memory_bytes(num_query: int, num_gallery: int) -> int:
    """Host memory torchreid's re-ranking of ``num_query`` x ``num_gallery`` needs at its peak, in bytes.

    The larger of its two heavy stages, counted from its code and checked against ``tracemalloc`` in the tests
    (within a few percent): the argsort of the whole ``(Q+G)^2`` matrix, and the last stage's ``[Q, Q+G]`` arrays.
    The inputs (``Q^2 + G^2 + QG`` float32 distances) are included.
    """
    q, g = int(num_query), int(num_gallery)
    n = q + g
    argsort = RERANK_BYTES_PER_PAIR * n * n - 4 * q * g
    final = _FINAL_BYTES_PER_PAIR * n * n - 4 * q * g + _FINAL_BYTES_PER_QUERY_PAIR * q * n
    return max(argsort, final) + _BYTES_PER_ITEM * n


def available_memory_bytes() -> Optional[int]:
    """The host memory available now (Linux ``MemAvailable``), else the physical memory; None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def rerank_memory_error(sizes: Dict[str, Tuple[int, int]], available: Optional[int] = None) -> Optional[str]:
    """The one-line refusal of ``test.rerank`` for the first target that does not fit, or None when all fit.

    Args:
        sizes: ``{target: (num_query, num_gallery)}``.
        available: host bytes available; default :func:`available_memory_bytes` (unknown: nothing is refused).
    """
    if available is None:
        available = available_memory_bytes()
    if available is None:
        return None
    for name, (nq, ng) in sizes.items():
        need = rerank_memory_bytes(nq, ng)
        if need > available:
            return (f"test.rerank True: re-ranking {name}'s {nq} queries x {ng} gallery items needs about "
                    f"{need / 1e9:.1f} GB of host memory (about {RERANK_BYTES_PER_PAIR} bytes per pair of its "
                    f"{nq + ng} items), but {available / 1e9:.1f} GB are available: set test.rerank False")
    return None


def _host_matrix(a: torch.Tensor, b: torch.Tensor, metric: str) -> np.ndarray:
    """``[len(a), len(b)]`` float32 distances in host memory, computed a block of rows at a time on ``a``'s device."""
    d = FeatureDistances(a, b, metric)
    out = np.empty(d.shape, dtype=np.float32)
    step = max(1, _BLOCK_ELEMS // max(1, d.shape[1]))
    for r0 in range(0, d.shape[0], step):
        out[r0:r0 + step] = d[r0:r0 + step].float().cpu().numpy()
    return out


def rerank_distances(qf: torch.Tensor, gf: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """torchreid's k-reciprocal re-ranked query-gallery distances.

    Args:
        qf: ``[Q, D]`` query features (any device).
        gf: ``[G, D]`` gallery features.
        metric: ``euclidean`` (squared, torchreid's) or ``cosine``.

    Returns:
        ``[Q, G]`` distances on the CPU, in ``re_ranking``'s dtype (float32 under NumPy 2, float64 under 1).
    """
    import torchreid  # slow to import: only a re-ranked evaluation pays for it

    qq, gg, qg = (_host_matrix(a, b, metric) for a, b in ((qf, qf), (gf, gf), (qf, gf)))
    logger.info("re-ranking %d queries x %d gallery items (about %.1f GB of host memory)", qf.size(0), gf.size(0),
                rerank_memory_bytes(qf.size(0), gf.size(0)) / 1e9)
    return torch.as_tensor(torchreid.utils.re_ranking(qg, qq, gg))

"""Query-gallery distances computed a block of query rows at a time, on the features' device.

The full ``[Q, G]`` matrix costs ``4 Q G`` bytes (about 4.4 GB for DeepChange's 17.5k x 63k); the evaluator only ever
needs a block of rows at once (see :func:`~clip3dreid_plugin.evaluation.rank.evaluate_all`), so
:class:`FeatureDistances` hands it blocks and the matrix is never built; ranked-result images and re-ranking read
it a block at a time too. :func:`chunked_distmat` builds the whole matrix, when a caller needs one, with temporaries
of one block only.

The formulas are torchreid's ``compute_distance_matrix``: ``|q|^2 + |g|^2 - 2 q.g`` (squared euclidean, not clamped
at 0) and ``1 - cos(q, g)``.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["FeatureDistances", "chunked_distmat", "DIST_METRICS"]

DIST_METRICS: Tuple[str, ...] = ("euclidean", "cosine")

# Distances per block when the caller gives no block size: ~64 MB of float32 temporaries.
_BLOCK_ELEMS = 1 << 24


class FeatureDistances:
    """A ``[Q, G]`` distance matrix held as its features; indexing a block of rows computes that block.

    Args:
        qf: ``[Q, D]`` query features.
        gf: ``[G, D]`` gallery features (same device and dtype as ``qf``).
        metric: ``euclidean`` (squared) or ``cosine``.

    Example::

        d = FeatureDistances(qf, gf, "cosine")
        d.shape          # (Q, G)
        d[0:128]         # [128, G] tensor, computed now
    """

    def __init__(self, qf: torch.Tensor, gf: torch.Tensor, metric: str = "euclidean"):
        if metric not in DIST_METRICS:
            raise ValueError(f"dist_metric must be one of {DIST_METRICS}, got {metric!r}")
        if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
            raise ValueError(f"features must be [Q, D] and [G, D] with the same D, got {tuple(qf.shape)} and "
                             f"{tuple(gf.shape)}")
        self.metric = metric
        self.qf = qf
        # Gallery-side terms once, not once per block: [G] squared norms or [G, D] unit rows.
        self._g = F.normalize(gf, dim=1) if metric == "cosine" else gf
        self._g_sq = gf.pow(2).sum(1) if metric == "euclidean" else None

    @property
    def shape(self) -> Tuple[int, int]:
        return self.qf.shape[0], self._g.shape[0]

    @property
    def device(self) -> torch.device:
        return self.qf.device

    @property
    def dtype(self) -> torch.dtype:
        return self.qf.dtype

    def to(self, device: Union[str, torch.device]) -> "FeatureDistances":
        """The same distances computed on ``device`` (``self`` when already there)."""
        device = torch.device(device)
        if device == self.qf.device:
            return self
        out = FeatureDistances.__new__(FeatureDistances)
        out.metric, out.qf, out._g = self.metric, self.qf.to(device), self._g.to(device)
        out._g_sq = None if self._g_sq is None else self._g_sq.to(device)
        return out

    def __getitem__(self, rows: slice) -> torch.Tensor:
        """Distances of the query rows ``rows`` (a slice with step 1) to every gallery item: ``[r, G]``."""
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("FeatureDistances takes a block of rows, e.g. d[r0:r1]")
        q = self.qf[rows]
        if self.metric == "cosine":
            return 1 - F.normalize(q, dim=1) @ self._g.t()
        block = q.pow(2).sum(1, keepdim=True) + self._g_sq[None, :]
        return block.addmm_(q, self._g.t(), beta=1, alpha=-2)


def chunked_distmat(qf: torch.Tensor, gf: torch.Tensor, metric: str = "euclidean",
                    chunk: Optional[int] = None) -> torch.Tensor:
    """The full ``[Q, G]`` distance matrix, computed ``chunk`` query rows at a time on ``qf``'s device.

    Besides the result, memory holds one block's temporaries (``O(chunk * G)``) and the gallery terms
    (``O(G * D)``), never a second ``[Q, G]`` matrix.

    Args:
        qf: ``[Q, D]`` query features.
        gf: ``[G, D]`` gallery features.
        metric: ``euclidean`` (squared, torchreid's) or ``cosine``.
        chunk: query rows per block; None: about 16M distances per block.

    Returns:
        ``[Q, G]`` distances, dtype of the features.
    """
    d = FeatureDistances(qf, gf, metric)
    num_q, num_g = d.shape
    if chunk is None:
        chunk = max(1, _BLOCK_ELEMS // max(1, num_g))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out = torch.empty((num_q, num_g), dtype=qf.dtype, device=qf.device)
    for r0 in range(0, num_q, chunk):
        out[r0:r0 + chunk] = d[r0:r0 + chunk]
    return out

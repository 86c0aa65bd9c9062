"""Collapse diagnostics of the student's distillation features, readable on the epoch line and in TensorBoard.

The OT loss has a trivial minimiser: when the projected text features Psi(H) and every local feature point one way,
the transport cost is small whatever the image shows. The numbers below tell that apart from learning:

* ``psi_cos``: mean pairwise cosine of one image's M projected descriptor rows Psi(H) (1 = all rows alike);
* ``local_cos``: mean pairwise cosine of one image's N local features (1 = the map carries one vector);
* ``fid_erank``: effective rank of ``f_id`` over the batch (1 = every image gets the same feature, up to scale);
* ``fid_norm``: mean L2 norm of ``f_id``. The effective rank cannot see a collapse of scale: ``L_global`` has a
  trivial minimiser too, ``f_id`` and Phi(g) shrinking together, which leaves the classifier's logits flat.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = ["CollapseMonitor", "effective_rank", "mean_pairwise_cosine"]

#: Above this mean cosine a set of vectors is counted as collapsed onto one direction.
COSINE_COLLAPSE = 0.95
#: At or below this effective rank a batch of identity features is counted as collapsed.
ERANK_COLLAPSE = 1.5
#: Below this fraction of its first measured value the mean norm of ``f_id`` is counted as collapsed.
NORM_COLLAPSE = 0.05


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    """Mean cosine over the distinct pairs of each row set, averaged over the batch.

    Args:
        x: ``[B, K, d]`` (``K >= 2`` vectors per item).

    Returns:
        A float in [-1, 1].
    """
    if x.dim() != 3 or x.size(1) < 2:
        raise ValueError(f"expected [B, K >= 2, d], got {tuple(x.shape)}")
    u = F.normalize(x.detach().float(), dim=-1)
    gram = u @ u.transpose(1, 2)  # [B, K, K]
    k = x.size(1)
    off_diagonal = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)
    return float((off_diagonal / (k * (k - 1))).mean())


def effective_rank(f: torch.Tensor) -> float:
    """Effective rank (Roy & Vetterli, 2007) of a batch of features: ``exp`` of the entropy of its normalised
    singular values.

    Args:
        f: ``[B, D]``.

    Returns:
        A float in [1, min(B, D)]; 1 for rank-one features.
    """
    if f.dim() != 2 or f.size(0) < 2:
        raise ValueError(f"expected [B >= 2, D], got {tuple(f.shape)}")
    s = torch.linalg.svdvals(f.detach().double())
    p = s / s.sum().clamp_min(1e-300)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class CollapseMonitor:
    """Computes the diagnostics every ``every`` steps on the first ``max_items`` images and warns once on collapse.

    Args:
        every: steps between measurements (0 switches the monitor off).
        max_items: images measured per step (the local-feature cosine costs ``N^2 d'`` per image).
    """

    def __init__(self, every: int = 50, max_items: int = 8):
        self.every = every
        self.max_items = max_items
        self._step = 0
        self._warned = False
        self._first_norm: Optional[float] = None

    def __call__(self, f_id: torch.Tensor, local: Optional[torch.Tensor] = None,
                 text_proj: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """Diagnostics of one step's outputs (an empty dict on the steps in between).

        Args:
            f_id: ``[B, d']`` identity features.
            local: ``[B, N, d']`` local features, when the OT term is on.
            text_proj: ``[B, M, d']`` projected descriptor features Psi(H), when the OT term is on.
        """
        step, self._step = self._step, self._step + 1
        if self.every <= 0 or step % self.every:
            return {}
        with torch.no_grad():
            out = {"diag_fid_erank": effective_rank(f_id),
                   "diag_fid_norm": float(f_id.detach().float().norm(dim=1).mean())}
            if local is not None and local.size(1) >= 2:
                out["diag_local_cos"] = mean_pairwise_cosine(local[: self.max_items])
            if text_proj is not None and text_proj.size(1) >= 2:
                out["diag_psi_cos"] = mean_pairwise_cosine(text_proj[: self.max_items])
        if self._first_norm is None:
            self._first_norm = out["diag_fid_norm"]
        collapsed = [k for k, v in out.items() if (k.endswith("_cos") and v > COSINE_COLLAPSE)
                     or (k == "diag_fid_erank" and v <= ERANK_COLLAPSE)
                     or (k == "diag_fid_norm" and v < NORM_COLLAPSE * self._first_norm)]
        if collapsed and not self._warned:
            self._warned = True
            logger.warning("feature collapse at step %d: %s (cosines above %.2f, an effective rank at or below %.1f, "
                           "or f_id's norm below %.0f%% of its first value %.3g); a distillation term may be fitting "
                           "its trivial minimiser (OT: every feature one way; L_global: f_id and Phi(g) shrinking "
                           "together), not body shape", step, ", ".join(f"{k} {out[k]:.3g}" for k in collapsed),
                           COSINE_COLLAPSE, ERANK_COLLAPSE, 100 * NORM_COLLAPSE, self._first_norm)
        return out

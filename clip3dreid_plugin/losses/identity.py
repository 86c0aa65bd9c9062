"""Identity losses computed on the device: torchreid's label-smoothed cross-entropy and batch-hard triplet loss.

torchreid's ``CrossEntropyLoss`` builds its one-hot targets on the CPU (``targets.data.cpu()``, a host-device sync
and a pageable copy back every step) and its ``TripletLoss`` indexes with a boolean mask once per anchor (two
syncs per anchor). These functions compute the same values and gradients with device-side ops only; the tests
compare them with torchreid's classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["TORCHREID_LABEL_SMOOTHING", "cross_entropy", "batch_hard_triplet"]

#: The smoothing torchreid's ``CrossEntropyLoss`` applies with ``label_smooth=True`` (its ``eps``).
TORCHREID_LABEL_SMOOTHING = 0.1


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smooth: bool = True) -> torch.Tensor:
    """torchreid's ``CrossEntropyLoss``: ``-sum_k q_k log softmax(logits)_k`` averaged over the batch, with
    ``q = (1 - eps) onehot + eps / K``.

    Args:
        logits: ``[B, K]``.
        targets: ``[B]`` class indices.
        label_smooth: ``eps`` = :data:`TORCHREID_LABEL_SMOOTHING`, else 0.

    Returns:
        Scalar loss.
    """
    return F.cross_entropy(logits, targets, label_smoothing=TORCHREID_LABEL_SMOOTHING if label_smooth else 0.0)


def batch_hard_triplet(features: torch.Tensor, targets: torch.Tensor, margin: float = 0.3,
                       metric: str = "euclidean") -> torch.Tensor:
    """torchreid's ``TripletLoss``: for every anchor the farthest same-identity and the nearest other-identity
    feature, in a hinge ``mean(max(0, d_ap - d_an + margin))``.

    Args:
        features: ``[B, D]``.
        targets: ``[B]`` identities; every anchor needs another identity in the batch.
        margin: hinge margin.
        metric: ``euclidean`` (torchreid) or ``cosine``: ``1 - cos`` of the L2-normalised features (CAL's pair
            loss).

    Returns:
        Scalar loss.
    """
    if metric == "cosine":
        unit = F.normalize(features, dim=1)
        dist = 1.0 - unit @ unit.t()
    elif metric == "euclidean":
        sq = features.pow(2).sum(dim=1, keepdim=True)
        dist = (sq + sq.t()).addmm_(features, features.t(), beta=1, alpha=-2).clamp(min=1e-12).sqrt()
    else:
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got '{metric}'")
    same = targets.unsqueeze(0) == targets.unsqueeze(1)
    hardest_pos = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(dim=1)
    return F.margin_ranking_loss(hardest_neg, hardest_pos, torch.ones_like(hardest_neg), margin=margin)

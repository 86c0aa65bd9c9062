"""CAL's two clothes losses (Gu et al., CVPR 2022): the clothes classifier's loss and the adversarial term.

Both take the clothes classifier's cosines ``[B, C]`` (``C`` training outfits), not scaled logits: the scale is a
loss option, as in CAL's reference, where the classifier returns cosines and each loss multiplies by ``s``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clothes_adversarial_loss", "clothes_classification_loss"]


def _check(cos_logits: torch.Tensor, clothes_ids: torch.Tensor) -> None:
    if cos_logits.dim() != 2:
        raise ValueError(f"cos_logits must be [B, C], got shape {tuple(cos_logits.shape)}")
    if clothes_ids.shape != cos_logits.shape[:1]:
        raise ValueError(f"clothes_ids must be [B] = [{cos_logits.size(0)}], got shape {tuple(clothes_ids.shape)}")


def clothes_classification_loss(cos_logits: torch.Tensor, clothes_ids: torch.Tensor,
                                scale: float = 16.0) -> torch.Tensor:
    """CosFace with margin 0 (NormFace): cross-entropy of ``scale * cos`` against each sample's own outfit.

    CAL computes it on detached features, so that it trains the clothes classifier only; that is the caller's
    choice (this function differentiates through whatever it is given).

    Args:
        cos_logits: cosines between the L2-normalised features and class weights, ``[B, C]``.
        clothes_ids: each sample's outfit in ``0..C-1``, ``[B]``.
        scale: the logit scale ``s``.

    Returns:
        The mean loss, a 0-dim tensor.
    """
    _check(cos_logits, clothes_ids)
    return F.cross_entropy(scale * cos_logits.float(), clothes_ids)


def clothes_adversarial_loss(cos_logits: torch.Tensor, clothes_ids: torch.Tensor, positive_mask: torch.Tensor,
                             scale: float = 16.0, epsilon: float = 0.1) -> torch.Tensor:
    """The clothes-based adversarial loss: pushes a feature towards every outfit of its own identity at once.

    With ``z = scale * cos``, each class ``j`` competes with the negative classes ``N(i)`` only (the outfits of
    other identities): ``log p_ij = z_ij - log(sum_{k in N(i)} exp z_ik + exp z_ij)``. The target puts
    ``1 - epsilon`` on the sample's own outfit and spreads ``epsilon`` evenly over all outfits of its identity
    (own included); the loss is ``mean_i sum_j -q_ij log p_ij``.

    Args:
        cos_logits: cosines of the live features with the (just updated) clothes classifier, ``[B, C]``.
        clothes_ids: each sample's outfit, ``[B]``.
        positive_mask: True for every outfit of the sample's identity, ``[B, C]`` (bool); it must include the
            sample's own outfit.
        scale: the logit scale ``s``.
        epsilon: the share of the target spread over the identity's outfits.

    Returns:
        The mean loss, a 0-dim tensor.

    Raises:
        ValueError: a shape that does not fit, or (on CPU; on a GPU a device-side assertion) a sample whose own
            outfit is not among its positives.
    """
    _check(cos_logits, clothes_ids)
    if positive_mask.shape != cos_logits.shape:
        raise ValueError(f"positive_mask must have the shape of cos_logits {tuple(cos_logits.shape)}, got "
                         f"{tuple(positive_mask.shape)}")
    positive = positive_mask.bool()
    own = F.one_hot(clothes_ids, cos_logits.size(1)).bool()
    covered = (positive | ~own).all()
    if covered.device.type == "cpu":
        if not bool(covered):
            raise ValueError("positive_mask must include each sample's own outfit")
    else:  # checked on the device: a host read here would stall every training step
        torch._assert_async(covered, "positive_mask must include each sample's own outfit")
    z = scale * cos_logits.float()
    negatives = z.masked_fill(positive, float("-inf")).logsumexp(dim=1, keepdim=True)  # [B, 1]; -inf: none
    log_p = z - torch.logaddexp(negatives, z)
    target = (1.0 - epsilon) * own.float() + epsilon * positive.float() / positive.sum(1, keepdim=True).float()
    return -(target * log_p).sum(1).mean()

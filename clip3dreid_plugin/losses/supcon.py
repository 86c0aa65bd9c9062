"""CLIP-ReID's stage-1 losses: supervised contrastive losses between image and text features (P Eq. 3-5).

For anchors ``A`` ``[N, D]`` and a contrast set ``B`` ``[M, D]``, with identities: ``log p_ij = a_i . b_j / T -
log sum_k exp(a_i . b_k / T)`` and ``L = -mean_i (1 / |P(i)|) sum_{j in P(i)} log p_ij``, where ``P(i)`` are the
``b_j`` of anchor ``i``'s identity. As in the reference, the features are not normalised and ``T`` is 1; both
directions can have several positives per anchor, since a batch's texts are the prompts of its images' identities.
"""
from __future__ import annotations

import torch

__all__ = ["supervised_contrastive_loss", "image_to_text_loss", "text_to_image_loss"]


def supervised_contrastive_loss(anchors: torch.Tensor, contrast: torch.Tensor, anchor_labels: torch.Tensor,
                                contrast_labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The mean over anchors of the average negative log-probability of their positives in the contrast set.

    Args:
        anchors: ``[N, D]``.
        contrast: ``[M, D]``.
        anchor_labels: ``[N]`` identities.
        contrast_labels: ``[M]`` identities; every anchor's identity must be among them.
        temperature: ``T`` of the logits ``a . b / T``.

    Returns:
        Scalar loss.
    """
    if anchors.dim() != 2 or contrast.dim() != 2 or anchors.shape[1] != contrast.shape[1]:
        raise ValueError(f"anchors [N, D] and contrast [M, D] must share D, got {tuple(anchors.shape)} and "
                         f"{tuple(contrast.shape)}")
    if anchor_labels.shape != anchors.shape[:1] or contrast_labels.shape != contrast.shape[:1]:
        raise ValueError(f"anchor_labels must be [{anchors.shape[0]}] and contrast_labels [{contrast.shape[0]}], "
                         f"got {tuple(anchor_labels.shape)} and {tuple(contrast_labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    positive = (anchor_labels.unsqueeze(1) == contrast_labels.unsqueeze(0)).float()
    count = positive.sum(1)
    if bool((count == 0).any()):
        raise ValueError("every anchor needs a positive in the contrast set (an anchor's identity is missing from "
                         "contrast_labels)")
    log_prob = torch.log_softmax(anchors.float() @ contrast.float().t() / temperature, dim=1)
    return -((positive * log_prob).sum(1) / count).mean()


def image_to_text_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor
                       ) -> torch.Tensor:
    """``L_i2t``: image anchors against the batch's text features (``[B, D]`` each, labels ``[B]``)."""
    return supervised_contrastive_loss(image_features, text_features, labels, labels)


def text_to_image_loss(text_features: torch.Tensor, image_features: torch.Tensor, labels: torch.Tensor
                       ) -> torch.Tensor:
    """``L_t2i``: text anchors against the batch's image features (``[B, D]`` each, labels ``[B]``)."""
    return supervised_contrastive_loss(text_features, image_features, labels, labels)

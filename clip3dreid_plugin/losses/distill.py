"""Global distillation: pull the student's identity feature towards the projected teacher image feature."""
from __future__ import annotations

import torch

__all__ = ["REDUCTIONS", "global_distill_loss"]

#: The reductions over the feature dimension that :func:`global_distill_loss` knows.
REDUCTIONS = ("sum", "mean")


def global_distill_loss(projected_teacher: torch.Tensor, f_id: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """``L_global = mean_b || Phi(g_b) - f_id_b ||_2^2`` (paper Sec. 3.2).

    Reduction over the feature dimension: ``sum`` is the paper's squared norm ``||Phi(g) - f_id||^2``; ``mean``
    divides it by d' (what ``nn.MSELoss`` does), which makes the effective beta d' = 2048 times smaller. Either
    way the batch is averaged. Both arguments receive gradients: the projection head ``Phi`` is
    trained with the student, the CLIP teacher behind it is frozen by the caller. fp16/bf16 inputs are
    computed in float32 (a sum of 2048 squares overflows fp16 easily).

    Args:
        projected_teacher: ``Phi(g)`` of shape ``[B, d']``.
        f_id: the student's identity features ``[B, d']``.
        reduction: ``sum`` or ``mean`` over the d' feature dims.

    Returns:
        Scalar loss (float32, or float64 if an input is float64).

    Raises:
        TypeError: an input is not a tensor.
        ValueError: an input is not 2-D, the shapes differ (the message names the argument), or ``reduction`` is
            unknown.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    for name, x in (("projected_teacher", projected_teacher), ("f_id", f_id)):
        if not torch.is_tensor(x):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape [B, d'] (2 dims), got {tuple(x.shape)}")
    if f_id.shape != projected_teacher.shape:
        raise ValueError(f"f_id shape {tuple(f_id.shape)} does not match projected_teacher shape "
                         f"{tuple(projected_teacher.shape)}")
    dtype = torch.promote_types(projected_teacher.dtype, f_id.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    diff = projected_teacher.to(dtype) - f_id.to(dtype)
    per_image = diff.pow(2).sum(dim=1) if reduction == "sum" else diff.pow(2).mean(dim=1)
    return per_image.mean()

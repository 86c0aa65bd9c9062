"""``L_3D``: squared vertex error of the predicted canonical body against the true one (Eq. 10)."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn

from clip3dreid_plugin.body.genders import GENDER_IDS
from clip3dreid_plugin.body.smpl_io import load_body_model

__all__ = ["REDUCTIONS", "ShapeLoss"]

#: The reductions over vertices that :class:`ShapeLoss` knows.
REDUCTIONS = ("sum", "mean")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


class ShapeLoss(nn.Module):
    """``L_3D = mean_b || SMPL(phi(f_id)) - SMPL_gender(P) ||^2`` over the vertex array, in the canonical pose.

    The paper (Sec. 3.4) writes the squared Euclidean norm of the whole vertex array, i.e. a sum over
    vertices (``reduction="sum"``, the default). ``"mean"`` averages over vertices instead, which
    shrinks the term by the vertex count (6890 for SMPL) and, at metre scale, leaves it near zero
    next to ``L_CE``. The batch is averaged in both cases, like every other term of Eq. 10.

    The prediction goes through ``pred_model`` (``body.gender``, neutral by default); each target
    through the model of the gender it was rendered with, since the metadata's betas are gendered.
    All SMPL-format models share one topology, so vertices compare one to one. Every target row goes through every
    gender's model and keeps its own (a few ``[B, 10] x [10, 3V]`` products): choosing the rows instead would read
    the genders back to the host, a sync per step on a GPU. A row whose gender has no model gets a NaN target
    (:meth:`check_genders` refuses such a set beforehand).

    Args:
        pred_model: body model with ``canonical_vertices(betas [B,10]) -> [B,V,3]``.
        target_models: gender id (see ``clip3dreid_plugin.body.genders.GENDER_IDS``) -> body model.
        reduction: ``"sum"`` or ``"mean"`` over vertices; a call can choose another.

    Raises:
        ValueError: ``reduction`` is not one of :data:`REDUCTIONS`.
    """

    def __init__(self, pred_model: nn.Module, target_models: Dict[int, nn.Module], reduction: str = "sum"):
        super().__init__()
        self.reduction = _check_reduction(reduction)
        self.pred_model = pred_model
        self.target_models = target_models

    @classmethod
    def from_body_dir(cls, model_dir: str, pred_gender: str = "neutral", reduction: str = "sum",
                      device="cpu") -> "ShapeLoss":
        """The loss on the SMPL-format models in ``model_dir`` (``smpl/SMPL_{NEUTRAL,MALE,FEMALE}.pkl``).

        Args:
            model_dir: body-model folder (``cfg.body.model_dir``).
            pred_gender: body that turns predicted betas into vertices (``cfg.body.gender``).
            reduction: ``sum`` or ``mean`` over vertices.
            device: where the body models live.
        """
        models = {g: load_body_model(model_dir, gender=g, device=device) for g in GENDER_IDS}
        return cls(models[pred_gender], {GENDER_IDS[g]: m for g, m in models.items()}, reduction=reduction)

    def check_genders(self, genders) -> None:
        """Refuses a synthetic set with a gender id that has no body model here.

        Args:
            genders: the set's gender ids (any iterable of ints, e.g. a tensor).

        Raises:
            KeyError: naming the ids without a model.
        """
        missing = sorted({int(g) for g in genders} - set(self.target_models))
        if missing:
            raise KeyError(f"no body model for synthetic gender id(s) {missing} "
                           f"(models for {sorted(self.target_models)})")

    def forward(self, pred_betas: torch.Tensor, true_betas: torch.Tensor, genders: torch.Tensor,
                reduction: Optional[str] = None) -> torch.Tensor:
        """Args: ``pred_betas [B,10]`` (grad flows to phi), ``true_betas [B,10]``, ``genders [B]``; ``reduction``
        over vertices (None: the one this loss was built with).

        Returns:
            Scalar loss (metres squared).

        Raises:
            ValueError: ``reduction`` is not one of :data:`REDUCTIONS`.
        """
        reduction = self.reduction if reduction is None else _check_reduction(reduction)
        pred = self.pred_model.canonical_vertices(pred_betas.float())
        with torch.no_grad():
            target = torch.full_like(pred, float("nan"))
            rows = genders.view(-1, 1, 1)
            for g, model in self.target_models.items():
                target = torch.where(rows == g, model.canonical_vertices(true_betas.float()), target)
        per_vertex = ((pred - target) ** 2).sum(-1)  # [B, V]
        per_body = per_vertex.sum(1) if reduction == "sum" else per_vertex.mean(1)
        return per_body.mean()

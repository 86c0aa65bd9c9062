"""Losses of CLIP3DReID: local OT distillation, global distillation, and torchreid's ID/triplet losses.

``CrossEntropyLoss`` (label smoothing) and ``TripletLoss`` (batch-hard) are torchreid's own classes,
re-exported here. They are resolved lazily by attribute access on ``torchreid.losses`` (the PyPI wheel keeps them
at ``torchreid.reid.losses``, a source install at ``torchreid.losses``), so importing the OT loss does not import
torchreid. The CLIP3DReID engine uses :func:`cross_entropy` and :func:`batch_hard_triplet` instead: the same values
and gradients without torchreid's host-device syncs (:mod:`clip3dreid_plugin.losses.identity`).
"""
from __future__ import annotations

from typing import Any

from clip3dreid_plugin.losses.distill import global_distill_loss
from clip3dreid_plugin.losses.identity import batch_hard_triplet, cross_entropy
from clip3dreid_plugin.losses.ot import (
    OTLoss,
    cosine_cost,
    ot_distance,
    ot_distance_from_cost,
    sinkhorn_log,
    transport_plan,
)

__all__ = [
    "ot_distance",
    "ot_distance_from_cost",
    "transport_plan",
    "sinkhorn_log",
    "cosine_cost",
    "OTLoss",
    "global_distill_loss",
    "cross_entropy",
    "batch_hard_triplet",
    "CrossEntropyLoss",
    "TripletLoss",
]

_TORCHREID_LOSSES = ("CrossEntropyLoss", "TripletLoss")


def __getattr__(name: str) -> Any:
    if name in _TORCHREID_LOSSES:
        import torchreid  # PEP 562 lazy attribute: torchreid is slow to import and warns about Cython

        return getattr(torchreid.losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

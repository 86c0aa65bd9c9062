"""``CALEngine``: CAL's training step (Gu et al., CVPR 2022), as in its reference (Simple-CCReID ``train_cal``).

Per step: the student's BN feature ``f`` and identity logits; the clothes classifier's loss on ``f.detach()``, and
from ``cal.start_epoch_cc`` a step of the clothes optimiser (that loss trains the clothes classifier only); then,
from ``cal.start_epoch_adv``, the adversarial term on the live ``f`` with the just-updated classifier, added to the
identity loss (label-smoothed cross-entropy, plus a weighted triplet term on the cosine distance when
``cal.triplet_weight`` > 0, as the reference's pair loss). The
main optimiser steps the network; the clothes classifier is never in it.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.distributed as dist
import torchreid

from clip3dreid_plugin.engine.amp import autocast, grad_scaler
from clip3dreid_plugin.engine.base import ClothesAwareEngineMixin
from clip3dreid_plugin.engine.common import unwrap
from clip3dreid_plugin.losses.clothes import clothes_adversarial_loss, clothes_classification_loss
from clip3dreid_plugin.losses.identity import batch_hard_triplet, cross_entropy
from clip3dreid_plugin.utils.distributed import get_world_size, is_distributed

__all__ = ["CALEngine"]


class CALEngine(ClothesAwareEngineMixin, torchreid.engine.Engine):
    """Trains a :class:`~clip3dreid_plugin.models.cal.CAL` model with CAL's two optimisers.

    Args:
        datamanager: a clothes-aware data manager (batches carry ``clothes_id``).
        model: the ``cal`` model with a clothes classifier (possibly DDP-wrapped, the clothes classifier left out).
        optimizer: the main optimiser (network and identity classifier).
        clothes_optimizer: the clothes classifier's optimiser.
        outfits: ``[P, C]`` bool, the outfits of each training identity
            (:func:`~clip3dreid_plugin.data.outfits.identity_outfits`).
        scheduler: the main optimiser's scheduler (the reference schedules only that one).
        use_gpu: train on CUDA.
        label_smooth: label smoothing of the identity loss.
        scale: the clothes logits' scale ``s``.
        epsilon: the adversarial target's share over the identity's outfits.
        start_epoch_cc: first epoch (0-based) whose steps update the clothes classifier.
        start_epoch_adv: first epoch (0-based) whose loss has the adversarial term.
        triplet_weight: weight of a batch-hard triplet term on the cosine distance ``1 - cos`` (0: none).
        triplet_margin: its margin.
        amp: ``none`` | ``bf16`` | ``fp16`` autocast of the network's forward.
        pooling_method: ``avg`` | ``max`` over a tracklet's frame features at test time (video data).
        **kwargs: the evaluation and checkpoint options of :class:`ClothesAwareEngineMixin`.
    """

    def __init__(self, datamanager, model, optimizer, clothes_optimizer, outfits: torch.Tensor, scheduler=None,
                 use_gpu: bool = True, label_smooth: bool = True, scale: float = 16.0, epsilon: float = 0.1,
                 start_epoch_cc: int = 25, start_epoch_adv: int = 25, triplet_weight: float = 0.0,
                 triplet_margin: float = 0.3, amp: str = "none", pooling_method: str = "avg", **kwargs):
        super().__init__(datamanager, use_gpu, **kwargs)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.register_model("model", model, optimizer, scheduler)
        self.clothes_optimizer = clothes_optimizer
        self.outfits = outfits.to(self.device)
        self.label_smooth, self.scale, self.epsilon = label_smooth, scale, epsilon
        self.start_epoch_cc, self.start_epoch_adv = start_epoch_cc, start_epoch_adv
        self.triplet_weight, self.triplet_margin = triplet_weight, triplet_margin
        self.amp = amp
        self.scaler = grad_scaler(amp, self.use_gpu)
        self.pooling_method = pooling_method

    @property
    def clothes_classifier(self) -> torch.nn.Module:
        return unwrap(self.model).clothes_classifier

    def checkpoint_extras(self) -> dict:
        """The clothes optimiser's state (the classifier's weights are in the model's ``state_dict``)."""
        return {"clothes_optimizer": self.clothes_optimizer.state_dict()}

    def restore_extras(self, ckpt: dict) -> None:
        if ckpt.get("clothes_optimizer") is not None:
            self.clothes_optimizer.load_state_dict(ckpt["clothes_optimizer"])

    def _step_clothes_classifier(self, loss: torch.Tensor) -> None:
        self.clothes_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if is_distributed():
            # DDP leaves the classifier out (its backward is this one, outside DDP's forward): average by hand.
            world = get_world_size()
            for p in self.clothes_classifier.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(world)
        self.clothes_optimizer.step()

    def forward_backward(self, data: dict) -> Dict[str, torch.Tensor]:
        """One CAL step; returns every term as a detached 0-dim tensor on the device (``ce``, ``clothes``, and
        ``triplet`` / ``cal`` when on), read back by the loop once per print interval."""
        imgs = data["img"].to(self.device, non_blocking=True)
        pids = data["pid"].to(self.device, non_blocking=True)
        clothes = data["clothes_id"].to(self.device, non_blocking=True)
        if imgs.dim() == 5:
            # Clips [B, S, C, H, W] train as their B*S frames, as torchreid's video engines do.
            seq_len = imgs.size(1)
            imgs = imgs.flatten(0, 1)
            pids, clothes = pids.repeat_interleave(seq_len), clothes.repeat_interleave(seq_len)
        with autocast(self.amp, self.use_gpu):
            out = self.model(imgs, return_dict=True)
        f, logits = out["feature"].float(), out["logits"].float()
        clothes_loss = clothes_classification_loss(self.clothes_classifier(f.detach()), clothes, self.scale)
        if self.epoch >= self.start_epoch_cc:
            self._step_clothes_classifier(clothes_loss)
        terms = {"ce": cross_entropy(logits, pids, self.label_smooth), "clothes": clothes_loss.detach()}
        loss = terms["ce"]
        if self.triplet_weight > 0:
            terms["triplet"] = batch_hard_triplet(f, pids, self.triplet_margin, metric="cosine")
            loss = loss + self.triplet_weight * terms["triplet"]
        if self.epoch >= self.start_epoch_adv:
            # The classifier as just updated, its weights out of the graph: this term trains the features only.
            cos = self.clothes_classifier(f, detach_weight=True)
            terms["cal"] = clothes_adversarial_loss(cos, clothes, self.outfits[pids], self.scale, self.epsilon)
            loss = loss + terms["cal"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: v.detach() for k, v in terms.items()}

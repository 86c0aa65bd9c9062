"""``CLIP3DReIDEngine``: the paper's training objective (Eq. 10) on torchreid's engine.

    L = L_CE(f_id) + alpha * L_OT + beta * L_global + gamma * (L_OT_syn + L_3D)   [+ w_t * L_triplet]

The engine is built from objects, like torchreid's (no config needed)::

    engine = CLIP3DReIDEngine(datamanager, model, optimizer, scheduler=scheduler,
                              teacher="teacher_cache/ltcc__ViT-L-14-quickgelu__ViT-L-14.pt")
    engine.run(save_dir="log/clip3dreid", max_epoch=60, eval_freq=10)

``teacher`` is a teacher-cache file, a :class:`~clip3dreid_plugin.teacher.clip_teacher.CLIPTeacher` (run online)
or a teacher source; ``switches`` (default: CE + L_OT + L_global), ``ot_loss`` and the 3D term's
``synthetic``/``shape_loss`` complete it.

Per step: look up the teacher's image feature g and descriptor labels for each real image (from the
cache, or online), gather the chosen descriptors' text features H, append the synthetic mesh
batch when the 3D term is on, run the student once, then combine the enabled terms. A term that is
switched off is not computed at all, so its head receives no gradient.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Union

import torch
import torchreid

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.data.frames import batch_frame_paths
from clip3dreid_plugin.engine.amp import autocast, grad_scaler
from clip3dreid_plugin.engine.base import ClothesAwareEngineMixin, unwrap
from clip3dreid_plugin.engine.diagnostics import CollapseMonitor
from clip3dreid_plugin.losses import OTLoss, batch_hard_triplet, cross_entropy, global_distill_loss
from clip3dreid_plugin.teacher.source import as_teacher_source

logger = logging.getLogger(__name__)

__all__ = ["CLIP3DReIDEngine", "LossSwitches"]


class LossSwitches:
    """Weights and ablation switches of Eq. 10 (``cfg.loss.clip3dreid``)."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.5, gamma: float = 0.3, use_ce: bool = True,
                 use_ot: bool = True, use_global: bool = True, use_3d: bool = False, triplet_weight: float = 0.0,
                 global_reduction: str = "sum"):
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.use_ce, self.use_ot, self.use_global, self.use_3d = use_ce, use_ot, use_global, use_3d
        self.triplet_weight = triplet_weight
        self.global_reduction = global_reduction

    @classmethod
    def from_cfg(cls, cfg) -> "LossSwitches":
        c = cfg.loss.clip3dreid
        return cls(c.alpha, c.beta, c.gamma, c.use_ce, c.use_ot, c.use_global, c.use_3d, c.triplet_weight,
                   c.global_reduction)

    def weighted(self, terms: Dict[str, Any]) -> Dict[str, Any]:
        """Each term of Eq. 10 times its weight (``w_<term>``), so a log shows which term dominates the total."""
        weights = {"ce": 1.0, "triplet": self.triplet_weight, "ot": self.alpha, "global": self.beta,
                   "ot_syn": self.gamma, "3d": self.gamma}
        return {f"w_{k}": weights[k] * v for k, v in terms.items() if k in weights}


def _fit_teacher_width(model, optimizer, teacher) -> None:
    """Gives a student of torchreid's ``build_model`` (which cannot pass a width) Psi and Phi of the teacher's width.

    Only before the first step, on the plain module: the new heads replace the old ones in the optimizer, which has
    no state yet. Otherwise a width mismatch is a one-line error instead of a bare ``addmm`` shape error later.
    """
    width = getattr(teacher, "embed_dim", None)
    student = unwrap(model)
    if width is None or getattr(student, "teacher_dim", width) == width:
        return
    if student is not model or (optimizer is not None and optimizer.state):
        raise ConfigError(f"the teacher's features are {width}-d but the student's Psi and Phi take "
                          f"{student.teacher_dim}-d inputs: build it with clip3dreid.teacher_dim {width}")
    old = student.teacher_dim
    swap = student.resize_teacher_heads(width)
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["params"] = [swap.get(id(p), p) for p in group["params"]]
    logger.info("clip3dreid: the teacher's features are %d-d, so Psi and Phi now take %d-d inputs (built for %d)",
                width, width, old)


class CLIP3DReIDEngine(ClothesAwareEngineMixin, torchreid.engine.Engine):
    """torchreid ``Engine`` training the CLIP3DReID student.

    Args:
        datamanager: torchreid's ``ImageDataManager`` / ``VideoDataManager`` or the plugin's
            :class:`~clip3dreid_plugin.data.datamanager.ClothesImageDataManager` (clothes-aware protocols).
        model: the student (``clip3dreid``), possibly wrapped in DDP.
        optimizer: torchreid optimizer.
        scheduler: torchreid LR scheduler or None.
        use_gpu: train on CUDA.
        teacher: a teacher-cache file (``clip3dreid-label``), a frozen ``CLIPTeacher`` (run on every
            batch), or a teacher source with ``lookup(paths, imgs) -> (g [B,d], labels [B,M])`` and
            ``gather_text(labels [B,M]) -> H [B,M,d]`` (see ``clip3dreid_plugin.teacher.source``). Needed when
            L_OT, L_global or the 3D term is on.
        switches: loss weights and ablation switches (default: CE + L_OT + L_global, the paper's weights).
        ot_loss: the OT loss module (default ``OTLoss()``: lambda 1, 100 iterations).
        label_smooth: label smoothing of the cross-entropy (torchreid's, eps 0.1).
        triplet_margin: margin of the optional triplet term.
        synthetic: optional iterator of synthetic batches ``{'img', 'labels', 'betas', 'gender'}`` (3D term).
        shape_loss: optional :class:`~clip3dreid_plugin.losses.shape3d.ShapeLoss` (3D term).
        amp: ``none`` | ``bf16`` | ``fp16`` autocast for the student forward.
        separate_synthetic_bn: forward the synthetic rows separately, so that batch norm gives them their own
            batch statistics and the running statistics describe real images only (``cfg.body.separate_bn``).
        channels_last: feed the batches in NHWC layout (with a model converted to ``channels_last``).
        pooling_method: ``avg`` | ``max`` over a tracklet's frame features at test time (video data).
        diagnostics_every: steps between the collapse diagnostics (``diag_*`` on the epoch line and in TensorBoard,
            see :mod:`clip3dreid_plugin.engine.diagnostics`); 0 switches them off.
        **kwargs: the evaluation and checkpoint options of
            :class:`~clip3dreid_plugin.engine.base.ClothesAwareEngineMixin` (``eval_options``, ``ckpt_freq``,
            ``is_main``, ``show_progress``).
    """

    def __init__(self, datamanager, model, optimizer, scheduler=None, use_gpu: bool = True, teacher=None,
                 switches: Optional[LossSwitches] = None, ot_loss: Optional[OTLoss] = None,
                 label_smooth: bool = True, triplet_margin: float = 0.3, synthetic=None, shape_loss=None,
                 amp: str = "none", separate_synthetic_bn: bool = False, channels_last: bool = False,
                 pooling_method: str = "avg", diagnostics_every: int = 50, **kwargs):
        super().__init__(datamanager, use_gpu, **kwargs)
        switches = switches if switches is not None else LossSwitches()
        teacher = as_teacher_source(teacher, datamanager)
        _fit_teacher_width(model, optimizer, teacher)
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.register_model("model", model, optimizer, scheduler)
        self.teacher = teacher  # not registered: never checkpointed, never trained
        self.switches = switches
        self.ot_loss = ot_loss if ot_loss is not None else OTLoss()
        self.label_smooth = label_smooth
        self.triplet_margin = triplet_margin
        self.synthetic = synthetic
        self.separate_synthetic_bn = separate_synthetic_bn
        self.shape_loss = shape_loss
        if switches.use_3d and (synthetic is None or shape_loss is None):
            raise ConfigError("loss.clip3dreid.use_3d needs body.synthetic_dir and body.model_dir")
        if switches.use_3d and hasattr(synthetic, "genders") and hasattr(shape_loss, "check_genders"):
            shape_loss.check_genders(synthetic.genders)  # now: the step itself cannot check without a sync
        if (switches.use_ot or switches.use_global or switches.use_3d) and teacher is None:
            raise ValueError("L_OT, L_global and the 3D term need a teacher (a teacher-cache file, a CLIPTeacher "
                             "or a teacher source): pass teacher=..., or switch them off")
        if not (switches.use_ce or switches.use_ot or switches.use_global or switches.use_3d
                or switches.triplet_weight > 0):
            raise ConfigError("every term of loss.clip3dreid is switched off: nothing to train")
        self.amp = amp
        self.scaler = grad_scaler(amp, self.use_gpu)
        self.channels_last = channels_last
        self.pooling_method = pooling_method
        self.monitor = CollapseMonitor(diagnostics_every)
        self._diagnostics: Dict[str, float] = {}

    def checkpoint_extras(self) -> dict:
        """``teacher_text``: the phrase features ``[M, 2, d]`` the student was trained against, their pairs and the
        teacher's name (a few hundred KB, never the teacher itself), so that inference tools such as
        ``clip3dreid-visualize-transport`` need no teacher. A source of the user's own without ``text_record``
        adds nothing."""
        record = getattr(self.teacher, "text_record", None)
        return {"teacher_text": record()} if callable(record) else {}

    def _autocast(self):
        return autocast(self.amp, self.use_gpu)

    def train(self, *args, **kwargs) -> Dict[str, float]:
        """One epoch (see the mixin), with the synthetic stream re-seeded for it when it can be."""
        if hasattr(self.synthetic, "set_epoch"):
            self.synthetic.set_epoch(self.epoch)
        return super().train(*args, **kwargs)

    def compute_losses(self, data: dict) -> Dict[str, torch.Tensor]:
        """Forward pass and every enabled loss term (no backward).

        Args:
            data: a torchreid batch dict with ``img [B,3,H,W]``, ``pid [B]`` and ``impath``; or a video batch
                with ``img [B,S,3,H,W]`` and ``impath`` as collated by torch (``S`` lists of ``B`` frame paths),
                trained on as ``B*S`` frames.

        Returns:
            ``{'loss': total, 'ce': ..., 'ot': ..., 'global': ..., 'ot_syn': ..., '3d': ..., 'triplet': ...}``
            with only the enabled terms.
        """
        s = self.switches
        dev = self.device
        imgs = data["img"].to(dev, non_blocking=True)
        pids = data["pid"].to(dev, non_blocking=True)
        paths = data["impath"]
        if imgs.dim() == 5:
            # Clips [B, S, C, H, W] train as their B*S frames, each with its clip's identity and its own teacher
            # entry (torchreid's VideoSoftmaxEngine trains the same way); test features average over frames.
            clips, seq_len = imgs.shape[:2]
            imgs = imgs.flatten(0, 1)
            pids = pids.repeat_interleave(seq_len)
            paths = batch_frame_paths(paths, clips, seq_len)
        B = imgs.size(0)
        text_feats = teacher_feats = None
        if s.use_ot or s.use_global:
            g, labels = self.teacher.lookup(list(paths), imgs)
            if s.use_ot:
                text_feats = self.teacher.gather_text(labels.to(dev, non_blocking=True))
            if s.use_global:
                teacher_feats = g.to(dev, non_blocking=True)
        syn = None
        if s.use_3d:
            syn = next(self.synthetic)
            imgs = torch.cat([imgs, syn["img"].to(dev, non_blocking=True)])
            syn_text = self.teacher.gather_text(syn["labels"].to(dev, non_blocking=True))
            text_feats = syn_text if text_feats is None else torch.cat([text_feats, syn_text])
        if self.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.model(imgs, text_feats=text_feats, teacher_feats=teacher_feats,
                             num_real=B if syn is not None and self.separate_synthetic_bn else None, return_dict=True,
                             with_betas=s.use_3d)
        f_id = out["f_id"].float()
        terms: Dict[str, torch.Tensor] = {}
        total = f_id.new_zeros(())
        if s.use_ce:
            terms["ce"] = cross_entropy(out["logits"][:B].float(), pids, self.label_smooth)
            total = total + terms["ce"]
        if s.triplet_weight > 0:
            terms["triplet"] = batch_hard_triplet(f_id[:B], pids, self.triplet_margin)
            total = total + s.triplet_weight * terms["triplet"]
        local = out["local"]
        # Not local[:B] / local[B:]: each slice's backward zero-fills a gradient the size of the whole
        # [B', N, d'] map and autograd adds them; split's backward writes it once.
        local_real, local_syn = (local, local[:0]) if local.size(0) == B else local.split([B, local.size(0) - B])
        if s.use_ot:
            terms["ot"] = self.ot_loss(local_real, out["text_proj"][:B])
            total = total + s.alpha * terms["ot"]
        if s.use_global:
            terms["global"] = global_distill_loss(out["teacher_proj"].float(), f_id[:B], s.global_reduction)
            total = total + s.beta * terms["global"]
        if s.use_3d:
            # text_proj holds [real (only when use_ot); synthetic] rows, in that order.
            text_syn = out["text_proj"][B:] if s.use_ot else out["text_proj"]
            terms["ot_syn"] = self.ot_loss(local_syn, text_syn)
            terms["3d"] = self.shape_loss(out["betas"][B:], syn["betas"].to(dev, non_blocking=True),
                                          syn["gender"].to(dev, non_blocking=True))
            total = total + s.gamma * (terms["ot_syn"] + terms["3d"])
        terms["loss"] = total
        self._diagnostics = self.monitor(f_id[:B], local_real if s.use_ot else None,
                                         out["text_proj"][:B] if s.use_ot else None)
        return terms

    def forward_backward(self, data: dict) -> Dict[str, Union[float, torch.Tensor]]:
        """One training step.

        Returns:
            Every term (and ``w_<term>``, weighted) as a detached 0-dim tensor on the device, not read back: the loop
            reads them once per print interval. The collapse diagnostics, on the steps that compute them, are floats.
        """
        terms = self.compute_losses(data)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        summary: Dict[str, Union[float, torch.Tensor]] = {k: v.detach() for k, v in terms.items()}
        summary.update(self.switches.weighted(summary))
        summary.update(self._diagnostics)
        return summary

"""``CLIP3DReIDEngine``: the paper's training objective (Eq. 10) on torchreid's engine.

    L = L_CE(f_id) + alpha * L_OT + beta * L_global + gamma * (L_OT_syn + L_3D)   [+ w_t * L_triplet]

The engine is built from objects, like torchreid's (no config needed)::

    engine = CLIP3DReIDEngine(datamanager, model, optimizer, scheduler=scheduler,
                              teacher="teacher_cache/ltcc__ViT-L-14-quickgelu__ViT-L-14.pt")
    engine.run(save_dir="log/clip3dreid", max_epoch=60, eval_freq=10)

``teacher`` is a teacher-cache file, a :class:`~clip3dreid_plugin.teacher.clip_teacher.CLIPTeacher` (run online)
or a teacher source; ``switches`` (default: CE + L_OT + L_global), ``ot_loss`` and the 3D term's
``synthetic``/``shape_loss`` complete it.

The terms are those of the table :data:`~clip3dreid_plugin.engine.loss_terms.LOSS_TERMS`, which says for each what
it needs, how it is weighted and how it is computed. Per step, the engine prepares what the terms that are on need
(:meth:`CLIP3DReIDEngine.prepare_batch`: the teacher's image feature g and the text features H of the chosen
descriptors for each real image, from the cache or online; the synthetic mesh batch), runs the student once on the
real and synthetic rows (:meth:`CLIP3DReIDEngine.forward_step`), and hands the outputs, real and synthetic rows by
name, to the table. A term that is switched off is not computed at all, so its head receives no gradient.
"""
from __future__ import annotations

import logging
from typing import Dict, FrozenSet, Optional, Tuple, Union

import torch
import torchreid

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.data.frames import batch_frame_paths
from clip3dreid_plugin.engine.amp import autocast, grad_scaler
from clip3dreid_plugin.engine.base import ClothesAwareEngineMixin, unwrap
from clip3dreid_plugin.engine.diagnostics import CollapseMonitor
from clip3dreid_plugin.engine.loss_terms import (
    LOSS_TERMS,
    LossSwitches,
    LossTable,
    Rows,
    Step,
    StepBatch,
    SyntheticBatch,
)
from clip3dreid_plugin.losses import OTLoss
from clip3dreid_plugin.teacher.source import as_teacher_source

logger = logging.getLogger(__name__)

__all__ = ["CLIP3DReIDEngine", "LossSwitches"]


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
            a term that is on reads the teacher (L_OT, L_global, the 3D term's L_OT_syn).
        switches: loss weights, ablation switches and reductions (default: CE + L_OT + L_global, the paper's
            weights). Read every step: assigning ``engine.switches`` changes the terms of the next step.
        ot_loss: the OT loss module (default ``OTLoss()``: lambda 1, 100 iterations).
        label_smooth: label smoothing of the cross-entropy (torchreid's, eps 0.1).
        triplet_margin: margin of the optional triplet term.
        synthetic: optional iterator of synthetic batches ``{'img', 'labels', 'betas', 'gender'}`` (3D term).
        shape_loss: optional :class:`~clip3dreid_plugin.losses.shape3d.ShapeLoss` (3D term), called with the
            switches' ``shape_reduction``.
        amp: ``none`` | ``bf16`` | ``fp16`` autocast for the student forward.
        separate_synthetic_bn: forward the synthetic rows separately, so that batch norm gives them their own
            batch statistics and the running statistics describe real images only (``cfg.body.separate_bn``).
        channels_last: feed the batches in NHWC layout (with a model converted to ``channels_last``).
        pooling_method: ``avg`` | ``max`` over a tracklet's frame features at test time (video data).
        diagnostics_every: steps between the collapse diagnostics (``diag_*`` on the epoch line and in TensorBoard,
            see :mod:`clip3dreid_plugin.engine.diagnostics`); 0 switches them off.
        terms: the table of loss terms (default :data:`~clip3dreid_plugin.engine.loss_terms.LOSS_TERMS`); a table
            extended with a term of one's own trains it with no other change.
        **kwargs: the evaluation and checkpoint options of
            :class:`~clip3dreid_plugin.engine.base.ClothesAwareEngineMixin` (``eval_options``, ``ckpt_freq``,
            ``is_main``, ``show_progress``).
    """

    def __init__(self, datamanager, model, optimizer, scheduler=None, use_gpu: bool = True, teacher=None,
                 switches: Optional[LossSwitches] = None, ot_loss: Optional[OTLoss] = None,
                 label_smooth: bool = True, triplet_margin: float = 0.3, synthetic=None, shape_loss=None,
                 amp: str = "none", separate_synthetic_bn: bool = False, channels_last: bool = False,
                 pooling_method: str = "avg", diagnostics_every: int = 50, terms: Optional[LossTable] = None,
                 **kwargs):
        super().__init__(datamanager, use_gpu, **kwargs)
        switches = switches if switches is not None else LossSwitches()
        self.terms = terms if terms is not None else LOSS_TERMS
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
        self.terms.check(switches, teacher=teacher, synthetic=synthetic, shape_loss=shape_loss)
        if (self.terms.uses("shape_loss", switches) and hasattr(synthetic, "genders")
                and hasattr(shape_loss, "check_genders")):
            shape_loss.check_genders(synthetic.genders)  # now: the step itself cannot check without a sync
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
        """Forward pass and every term that is on (no backward).

        Args:
            data: a torchreid batch dict with ``img [B,3,H,W]``, ``pid [B]`` and ``impath``; or a video batch
                with ``img [B,S,3,H,W]`` and ``impath`` as collated by torch (``S`` lists of ``B`` frame paths),
                trained on as ``B*S`` frames.

        Returns:
            ``{'ce': ..., 'triplet': ..., 'ot': ..., 'global': ..., 'ot_syn': ..., '3d': ..., 'loss': total}`` with
            only the terms that are on (see ``self.terms``).
        """
        needs = self.terms.needs(self.switches)
        step = self.forward_step(self.prepare_batch(data, needs), needs)
        values = self.terms.compute(self, step, self.switches)
        real = step.real
        self._diagnostics = self.monitor(real.f_id, real.local if real.text_proj is not None else None,
                                         real.text_proj)
        return values

    def prepare_batch(self, data: dict, needs: FrozenSet[str]) -> StepBatch:
        """The step's inputs on the device: the real rows, the teacher targets and the synthetic rows that
        ``needs`` (keys of :data:`~clip3dreid_plugin.engine.loss_terms.NEEDS`) asks for."""
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
        teacher_image = teacher_text = None
        if "teacher_image" in needs or "teacher_text" in needs:
            g, labels = self.teacher.lookup(list(paths), imgs)
            if "teacher_text" in needs:
                teacher_text = self.teacher.gather_text(labels.to(dev, non_blocking=True))
            if "teacher_image" in needs:
                teacher_image = g.to(dev, non_blocking=True)
        synthetic = None
        if "synthetic" in needs or "synthetic_text" in needs:
            syn = next(self.synthetic)
            syn_imgs = syn["img"].to(dev, non_blocking=True)
            text = None
            if "synthetic_text" in needs:
                text = self.teacher.gather_text(syn["labels"].to(dev, non_blocking=True))
            synthetic = SyntheticBatch(syn_imgs, syn["betas"].to(dev, non_blocking=True),
                                       syn["gender"].to(dev, non_blocking=True), text)
        return StepBatch(imgs, pids, teacher_image, teacher_text, synthetic)

    def forward_step(self, batch: StepBatch, needs: FrozenSet[str]) -> Step:
        """One student forward over the real rows followed by the synthetic rows; its outputs split into the two."""
        syn = batch.synthetic
        num_real = batch.imgs.size(0)
        imgs = batch.imgs if syn is None else torch.cat([batch.imgs, syn.imgs])
        texts = [t for t in (batch.teacher_text, syn.text if syn is not None else None) if t is not None]
        text_feats = None if not texts else texts[0] if len(texts) == 1 else torch.cat(texts)
        if self.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.model(imgs, text_feats=text_feats, teacher_feats=batch.teacher_image,
                             num_real=num_real if syn is not None and self.separate_synthetic_bn else None,
                             return_dict=True, with_betas="shapes" in needs)

        def split(x: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
            # One split, not x[:B] / x[B:]: each slice's backward zero-fills a gradient the size of the whole
            # tensor (for the [B', N, d'] local map, a large one) and autograd adds them; split's writes it once.
            if x is None or syn is None:
                return x, None
            real, synthetic = x.split([num_real, x.size(0) - num_real])
            return real, synthetic

        f_id, f_id_syn = split(out["f_id"].float())
        logits, logits_syn = split(out["logits"])
        local, local_syn = split(out["local"])
        betas, betas_syn = split(out.get("betas"))
        # text_proj holds the rows that were given text features: [real (teacher_text); synthetic (synthetic_text)].
        text_proj = text_syn = None
        if batch.teacher_text is not None and syn is not None and syn.text is not None:
            text_proj, text_syn = out["text_proj"].split([num_real, syn.text.size(0)])
        elif batch.teacher_text is not None:
            text_proj = out["text_proj"]
        elif syn is not None and syn.text is not None:
            text_syn = out["text_proj"]
        real = Rows(f_id, logits, local, text_proj, out.get("teacher_proj"), betas)
        synthetic = None if syn is None else Rows(f_id_syn, logits_syn, local_syn, text_syn, None, betas_syn)
        return Step(batch, real, synthetic)

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
        summary.update(self.terms.weighted(summary, self.switches))
        summary.update(self._diagnostics)
        return summary

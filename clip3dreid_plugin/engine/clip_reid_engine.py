"""``CLIPReIDEngine``: CLIP-ReID's two training stages (Li et al., AAAI 2023), as in its reference.

Epochs count stage 1 first: epochs ``0 .. clip_reid.stage1_epochs - 1`` are stage 1, the ``train.max_epoch`` after
them stage 2, and checkpoints, resume and ``model.pth.tar-<N>`` use that one count (a checkpoint also records its
stage).

* **Stage 1** (prompts): the image features ``f_proj`` of every training image (every frame of a tracklet) are
  computed once, with the test transform (no augmentation), the encoder in eval mode and no SIE; then only the
  identity prompts train, with the image-to-text plus text-to-image supervised contrastive losses, over a fresh
  permutation of the cached features each epoch, with their own Adam and warm-up cosine schedule.
* **Stage 2** (image encoder): the text features of every identity are computed once and frozen; the image encoder,
  SIE, necks and classifiers train with ``id_weight`` x the label-smoothed ID loss of both classifiers,
  ``triplet_weight`` x batch-hard triplet on ``f_last``, ``f`` and ``f_proj``, and ``i2t_weight`` x the
  label-smoothed cross-entropy of ``f_proj`` against every identity's text feature; Adam with the biases at
  ``bias_lr_factor`` x the learning rate, warm-up then multi-step.
"""
from __future__ import annotations

import bisect
import logging
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
import torchreid

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.engine.amp import autocast, grad_scaler
from clip3dreid_plugin.engine.base import ClothesAwareEngineMixin
from clip3dreid_plugin.engine.common import unwrap
from clip3dreid_plugin.losses.identity import batch_hard_triplet, cross_entropy
from clip3dreid_plugin.losses.supcon import image_to_text_loss, text_to_image_loss
from clip3dreid_plugin.utils.distributed import all_gather_ordered, get_rank, get_world_size, is_distributed
from clip3dreid_plugin.utils.progress import progress

logger = logging.getLogger(__name__)

__all__ = ["CLIPReIDEngine", "stage1_lr_factor", "stage2_lr_factor", "stage2_param_groups"]


def stage1_lr_factor(epoch: int, epochs: int, base_lr: float, warmup_epochs: int, warmup_lr: float,
                     min_lr: float) -> float:
    """Stage 1's learning rate over ``base_lr`` in 1-based ``epoch`` (the reference steps its scheduler with the
    epoch number before each epoch): linear from ``warmup_lr`` during ``warmup_epochs``, then a cosine from
    ``base_lr`` to ``min_lr`` over ``epochs``."""
    if epoch < warmup_epochs:
        lr = warmup_lr + epoch * (base_lr - warmup_lr) / warmup_epochs
    else:
        lr = min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs))
    return lr / base_lr


def stage2_lr_factor(epoch: int, milestones: Sequence[int], gamma: float, warmup_factor: float,
                     warmup_epochs: int) -> float:
    """Stage 2's learning rate over ``train.lr`` in 1-based stage-2 ``epoch``: linear warm-up from
    ``warmup_factor`` over ``warmup_epochs``, times ``gamma`` per milestone passed."""
    warm = 1.0
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        warm = warmup_factor * (1 - alpha) + alpha
    return warm * gamma ** bisect.bisect_right(sorted(milestones), epoch)


def stage2_param_groups(model: torch.nn.Module, lr: float, weight_decay: float, bias_lr_factor: float,
                        weight_decay_bias: float) -> List[dict]:
    """Stage 2's Adam groups: every parameter outside the text side, those named ``*bias*`` at ``lr *
    bias_lr_factor`` with ``weight_decay_bias``."""
    skip = tuple(f"{name}." for name in getattr(model, "engine_optimised", ()))
    weights, biases = [], []
    for name, p in model.named_parameters():
        if not name.startswith(skip):
            (biases if "bias" in name else weights).append(p)
    return [{"params": weights, "lr": lr, "weight_decay": weight_decay},
            {"params": biases, "lr": lr * bias_lr_factor, "weight_decay": weight_decay_bias}]


class _TrainImages(torch.utils.data.Dataset):
    """Every training image (every frame of a tracklet) with its identity, through the test transform."""

    def __init__(self, items: Sequence[tuple], transform):
        from datasets_ext.image_io import read_image

        self.read, self.transform = read_image, transform
        self.rows: List[Tuple[str, int]] = []
        for item in items:
            paths = [item[0]] if isinstance(item[0], str) else list(item[0])
            self.rows.extend((p, int(item[1])) for p in paths)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        path, pid = self.rows[i]
        return self.transform(self.read(path)), pid


class CLIPReIDEngine(ClothesAwareEngineMixin, torchreid.engine.Engine):
    """Trains a :class:`~clip3dreid_plugin.models.clip_reid.CLIPReID` model in CLIP-ReID's two stages.

    Args:
        datamanager: a clothes-aware data manager.
        model: the ``clip_reid`` model (possibly DDP-wrapped, its text side left out).
        optimizer: stage 2's optimiser (:func:`stage2_param_groups`).
        prompt_optimizer: stage 1's optimiser over the prompts.
        scheduler: stage 2's scheduler, stepped after each stage-2 epoch.
        prompt_scheduler: stage 1's, stepped after each stage-1 epoch.
        use_gpu: train on CUDA.
        stage1_epochs: prompt-learning epochs (0: stage 2 only, with the untrained prompts' text features).
        stage1_batch_size: cached features per stage-1 step.
        id_weight, triplet_weight, i2t_weight: stage 2's loss weights.
        label_smooth: label smoothing of the ID and image-to-text losses.
        triplet_margin: the triplet hinge's margin.
        amp: ``none`` | ``bf16`` | ``fp16`` autocast.
        seed: seed of stage 1's permutations (``seed + epoch``: the same on every rank and on resume).
        pooling_method: ``avg`` | ``max`` over a tracklet's frame features at test time (video data).
        **kwargs: the evaluation and checkpoint options of :class:`ClothesAwareEngineMixin`.
    """

    def __init__(self, datamanager, model, optimizer, prompt_optimizer, scheduler=None, prompt_scheduler=None,
                 use_gpu: bool = True, stage1_epochs: int = 120, stage1_batch_size: int = 64,
                 id_weight: float = 0.25, triplet_weight: float = 1.0, i2t_weight: float = 1.0,
                 label_smooth: bool = True, triplet_margin: float = 0.3, amp: str = "none", seed: int = 0,
                 pooling_method: str = "avg", **kwargs):
        super().__init__(datamanager, use_gpu, **kwargs)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.register_model("model", model, optimizer, scheduler)
        self.prompt_optimizer, self.prompt_scheduler = prompt_optimizer, prompt_scheduler
        self.stage1_epochs, self.stage1_batch_size = int(stage1_epochs), int(stage1_batch_size)
        self.id_weight, self.triplet_weight, self.i2t_weight = id_weight, triplet_weight, i2t_weight
        self.label_smooth, self.triplet_margin = label_smooth, triplet_margin
        self.amp, self.seed = amp, int(seed)
        self.scaler = grad_scaler(amp, self.use_gpu)
        self.pooling_method = pooling_method
        self.epoch = 0
        # Stage 1's cached image features and identities, and stage 2's frozen text features (never checkpointed:
        # both are recomputed from frozen weights and the prompts, which are).
        self.stage1_features: Tuple[torch.Tensor, torch.Tensor] = None
        self.text_bank: torch.Tensor = None
        self._eval_cams = None

    @property
    def net(self) -> torch.nn.Module:
        return unwrap(self.model)

    def stage_of(self, epoch: int) -> int:
        """1 or 2: the stage that 0-based ``epoch`` belongs to."""
        return 1 if epoch < self.stage1_epochs else 2

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_extras(self) -> dict:
        """The stage of the epoch just finished, stage 1's length and its optimiser and schedule."""
        return {"clip_reid_stage": self.stage_of(self.epoch), "clip_reid_stage1_epochs": self.stage1_epochs,
                "prompt_optimizer": self.prompt_optimizer.state_dict(),
                "prompt_scheduler": self.prompt_scheduler.state_dict() if self.prompt_scheduler else None}

    def restore_extras(self, ckpt: dict) -> None:
        saved = ckpt.get("clip_reid_stage1_epochs")
        if saved is not None and int(saved) != self.stage1_epochs:
            raise ConfigError(f"clip_reid.stage1_epochs is {self.stage1_epochs} but the resumed checkpoint was "
                              f"written with {saved}; epochs count stage 1 first, so set it back to {saved}")
        if ckpt.get("prompt_optimizer") is not None:
            self.prompt_optimizer.load_state_dict(ckpt["prompt_optimizer"])
        if ckpt.get("prompt_scheduler") is not None and self.prompt_scheduler is not None:
            self.prompt_scheduler.load_state_dict(ckpt["prompt_scheduler"])
        self.stage1_features, self.text_bank = None, None
        logger.info("resumed a stage-%s checkpoint after epoch %s", ckpt.get("clip_reid_stage", "?"),
                    ckpt.get("epoch"))

    # ------------------------------------------------------------------ the loop
    def run(self, save_dir: str = "log", max_epoch: int = 0, start_epoch: int = 0, print_freq: int = 10,
            fixbase_epoch: int = 0, open_layers=None, start_eval: int = 0, eval_freq: int = -1,
            test_only: bool = False, **eval_kwargs) -> Dict[str, Dict[str, float]]:
        """torchreid's ``run`` with ``max_epoch`` stage-2 epochs after ``stage1_epochs`` prompt epochs; periodic
        evaluations start in stage 2 (``start_eval`` counts stage-2 epochs)."""
        if test_only:
            return super().run(save_dir=save_dir, test_only=True, **eval_kwargs)
        return super().run(save_dir=save_dir, max_epoch=self.stage1_epochs + max_epoch, start_epoch=start_epoch,
                           print_freq=print_freq, fixbase_epoch=fixbase_epoch, open_layers=open_layers,
                           start_eval=self.stage1_epochs + max(start_eval, 1), eval_freq=eval_freq,
                           **eval_kwargs)

    def train(self, print_freq: int = 10, fixbase_epoch: int = 0, open_layers=None) -> Dict[str, float]:
        if self.epoch < self.stage1_epochs:
            return self._train_prompts()
        if self.text_bank is None:
            self.stage1_features = None  # stage 1 is over
            self.text_bank = self.identity_text_features()
        return super().train(print_freq=print_freq, fixbase_epoch=fixbase_epoch, open_layers=open_layers)

    # ------------------------------------------------------------------ stage 1
    @torch.no_grad()
    def train_image_features(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``f_proj`` ``[N, D]`` (float, on the device) and identities ``[N]`` of every training image, with the
        test transform, the encoder in eval mode and no SIE; each rank computes its share, all get all."""
        from clip3dreid_plugin.data.samplers import ShardSampler

        dm = self.datamanager
        data = _TrainImages(dm.train_set.train, dm.transform_te)
        world = get_world_size()
        loader = torch.utils.data.DataLoader(
            data, batch_size=self.stage1_batch_size, shuffle=False, num_workers=getattr(dm, "workers", 0),
            sampler=ShardSampler(len(data), get_rank(), world) if world > 1 else None)
        net = self.net
        net.eval()
        feats, pids = [], []
        # A resumed run computes the features again, so they must leave the global RNG as they found it (a
        # DataLoader draws its base seed from it): stage 2 then draws what the uninterrupted run drew.
        with torch.random.fork_rng(devices=[]):
            for imgs, pid in progress(loader, total=len(loader), desc="stage 1: training-set image features",
                                      enabled=self.show_progress and self.is_main):
                with autocast(self.amp, self.use_gpu):
                    feats.append(net.image_projection(imgs.to(self.device, non_blocking=True)).float())
                pids.append(pid.to(self.device))
        feats, pids = torch.cat(feats), torch.cat(pids)
        if world > 1:
            feats, pids = all_gather_ordered(feats, len(data)), all_gather_ordered(pids, len(data))
        logger.info("stage 1: %d training images, %d-d features, cached once", feats.shape[0], feats.shape[1])
        return feats, pids

    def _average_prompt_grads(self) -> None:
        if is_distributed():
            # The prompts train outside DDP (no DDP forward in stage 1): average their gradients by hand.
            for p in self.net.prompt_learner.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(get_world_size())

    def _train_prompts(self) -> Dict[str, float]:
        net = self.net
        net.eval()  # the reference leaves the encoders in eval mode through stage 1; only the prompts train
        if self.stage1_features is None:
            self.stage1_features = self.train_image_features()
        feats, labels = self.stage1_features
        perm = torch.randperm(feats.shape[0], generator=torch.Generator().manual_seed(self.seed + self.epoch))
        starts = range(0, feats.shape[0], self.stage1_batch_size)
        sums = torch.zeros(2, device=self.device)
        bar = progress(starts, total=len(starts), desc=f"stage 1 epoch {self.epoch + 1}/{self.stage1_epochs}",
                       enabled=self.show_progress and self.is_main)
        for start in bar:
            idx = perm[start:start + self.stage1_batch_size].to(self.device)
            img, y = feats[idx], labels[idx]
            with autocast(self.amp, self.use_gpu):
                txt = net.text_features(y)
            txt = txt.float()
            i2t, t2i = image_to_text_loss(img, txt, y), text_to_image_loss(txt, img, y)
            self.prompt_optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(i2t + t2i).backward()
            self._average_prompt_grads()
            self.scaler.step(self.prompt_optimizer)
            self.scaler.update()
            sums += torch.stack([i2t.detach(), t2i.detach()])
        lr = self.prompt_optimizer.param_groups[0]["lr"]
        if self.prompt_scheduler is not None:
            self.prompt_scheduler.step()
        means = dict(zip(("i2t", "t2i"), (sums / max(1, len(starts))).tolist()))
        if self.writer is not None:
            for k, v in means.items():
                self.writer.add_scalar(f"Train/stage1_{k}", v, self.epoch)
        logger.info("stage 1 epoch %d/%d | i2t %.4f t2i %.4f | lr %.2e", self.epoch + 1, self.stage1_epochs,
                    means["i2t"], means["t2i"], lr)
        return means

    # ------------------------------------------------------------------ stage 2
    @torch.no_grad()
    def identity_text_features(self, chunk: int = 64) -> torch.Tensor:
        """The text features ``[P, D]`` of every training identity's prompt (float, on the device)."""
        net = self.net
        num = net.prompt_learner.cls_ctx.shape[0]
        out = []
        for start in range(0, num, chunk):
            labels = torch.arange(start, min(num, start + chunk), device=self.device)
            with autocast(self.amp, self.use_gpu):
                out.append(net.text_features(labels).float())
        logger.info("stage 2: text features of the %d identities computed once, frozen", num)
        return torch.cat(out)

    def forward_backward(self, data: dict) -> Dict[str, torch.Tensor]:
        """One stage-2 step; returns ``id``, ``triplet`` and ``i2t`` as detached 0-dim tensors on the device."""
        imgs = data["img"].to(self.device, non_blocking=True)
        pids = data["pid"].to(self.device, non_blocking=True)
        cams = torch.as_tensor(data["camid"]).to(self.device, non_blocking=True)
        if imgs.dim() == 5:
            # Clips [B, S, C, H, W] train as their B*S frames, as torchreid's video engines do.
            seq_len = imgs.size(1)
            imgs = imgs.flatten(0, 1)
            pids, cams = pids.repeat_interleave(seq_len), cams.repeat_interleave(seq_len)
        sie = cams if self.net.cv_embed is not None else None
        with autocast(self.amp, self.use_gpu):
            out = self.model(imgs, cam_label=sie, return_dict=True)
        feats = [f.float() for f in out["features"]]
        logits = [lg.float() for lg in out["logits"]]
        terms = {
            "id": sum(cross_entropy(lg, pids, self.label_smooth) for lg in logits),
            "triplet": sum(batch_hard_triplet(f, pids, self.triplet_margin) for f in feats),
            "i2t": cross_entropy(feats[2] @ self.text_bank.t(), pids, self.label_smooth),
        }
        loss = self.id_weight * terms["id"] + self.triplet_weight * terms["triplet"] + self.i2t_weight * terms["i2t"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: v.detach() for k, v in terms.items()}

    # ------------------------------------------------------------------ evaluation with SIE
    def parse_data_for_eval(self, data):
        # With SIE the test feature needs each image's camera, which extract_features is not given: keep the batch's.
        self._eval_cams = data["camid"]
        return super().parse_data_for_eval(data)

    def extract_features(self, imgs: torch.Tensor) -> torch.Tensor:
        net = self.net
        if net.cv_embed is None:
            return super().extract_features(imgs)
        cams = torch.as_tensor(self._eval_cams).to(imgs.device)
        if imgs.dim() == 5:
            b, t = imgs.shape[:2]
            frames = net(imgs.flatten(0, 1), cam_label=cams.repeat_interleave(t)).view(b, t, -1)
            return frames.max(1)[0] if self.pooling_method == "max" else frames.mean(1)
        return net(imgs, cam_label=cams)

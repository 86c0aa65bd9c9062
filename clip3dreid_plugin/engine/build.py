"""Config -> engine. Plugin models that need their own engine register a builder here."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from yacs.config import CfgNode as CN

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.data.frames import item_image_paths
from clip3dreid_plugin.data.meshset import build_synthetic_stream
from clip3dreid_plugin.data.outfits import check_clothes_labels, identity_outfits
from clip3dreid_plugin.engine.cal_engine import CALEngine
from clip3dreid_plugin.engine.clip3dreid_engine import CLIP3DReIDEngine
from clip3dreid_plugin.engine.clip_reid_engine import (CLIPReIDEngine, stage1_lr_factor, stage2_lr_factor,
                                                       stage2_param_groups)
from clip3dreid_plugin.engine.common import unwrap
from clip3dreid_plugin.engine.evaluator import EvalOptions
from clip3dreid_plugin.engine.loss_terms import LOSS_TERMS, LossSwitches
from clip3dreid_plugin.engine.standard import ClothesSoftmaxEngine, ClothesTripletEngine, ClothesVideoSoftmaxEngine
from clip3dreid_plugin.losses import OTLoss
from clip3dreid_plugin.losses.shape3d import ShapeLoss
from clip3dreid_plugin.teacher.source import build_teacher_source

__all__ = ["build_engine", "ENGINE_BUILDERS"]

def _train_paths_per_source(datamanager) -> list:
    """``(dataset name, training image or frame paths)`` per source; the manager gives source i dataset id i."""
    train = datamanager.train_set.train
    return [(name, item_image_paths([it for it in train if it[3] == i])) for i, name in enumerate(datamanager.sources)]


def _clip3dreid_engine(cfg: CN, datamanager, model, optimizer, scheduler, use_gpu: bool, **common):
    terms, switches = LOSS_TERMS, LossSwitches.from_cfg(cfg)
    if cfg.test.evaluate:
        # Inference uses the student alone (as in the paper): evaluating needs no teacher, no teacher cache, no
        # synthetic bodies and no body model, so none is built.
        switches = terms.only(["ce"], switches)
    terms.check(switches)  # the options themselves, before anything is loaded
    # What to build is what the terms that are on need (the table's rule, which the engine checks again).
    teacher = synthetic = shape_loss = None
    if terms.uses("teacher", switches):
        teacher = build_teacher_source(cfg, _train_paths_per_source(datamanager), device=common["device"])
        terms.require(switches, "teacher", teacher)  # teacher.mode none
        if teacher.embed_dim != cfg.clip3dreid.teacher_dim:
            raise ConfigError(f"clip3dreid.teacher_dim is {cfg.clip3dreid.teacher_dim} but teacher "
                              f"'{cfg.teacher.name}' gives {teacher.embed_dim}-d features; set them equal")
    if terms.uses("shape_loss", switches):
        shape_loss = ShapeLoss.from_body_dir(cfg.body.model_dir, cfg.body.gender, device=common["device"])
    if terms.uses("synthetic", switches):
        synthetic = build_synthetic_stream(cfg, datamanager)
    engine = CLIP3DReIDEngine(datamanager, model, optimizer, teacher=teacher, switches=switches, terms=terms,
                              ot_loss=OTLoss.from_cfg(cfg), scheduler=scheduler, use_gpu=use_gpu,
                              label_smooth=cfg.loss.softmax.label_smooth, triplet_margin=cfg.loss.triplet.margin,
                              synthetic=synthetic, shape_loss=shape_loss, amp=cfg.runtime.amp,
                              separate_synthetic_bn=cfg.body.separate_bn, channels_last=cfg.runtime.channels_last,
                              pooling_method=cfg.video.pooling_method, diagnostics_every=cfg.runtime.diag_freq,
                              **common)
    return engine


def _cal_engine(cfg: CN, datamanager, model, optimizer, scheduler, use_gpu: bool, **common):
    train = datamanager.train_set.train
    if not cfg.test.evaluate:  # an evaluation trains nothing and needs no clothes labels
        check_clothes_labels(train, list(datamanager.sources), "model.name cal")
    classifier = unwrap(model).clothes_classifier
    if classifier is None:
        raise ConfigError("model.name cal was built without a clothes classifier (num_clothes 0); build it through "
                          "the plugin's trainer, which passes the training split's outfits")
    clothes_optimizer = torch.optim.Adam(classifier.parameters(), lr=cfg.cal.clothes_lr,
                                         weight_decay=cfg.cal.clothes_weight_decay)
    outfits = identity_outfits(train, datamanager.num_train_pids, datamanager.num_train_clothes)
    c = cfg.cal
    return CALEngine(datamanager, model, optimizer, clothes_optimizer, outfits, scheduler=scheduler, use_gpu=use_gpu,
                     label_smooth=cfg.loss.softmax.label_smooth, scale=c.scale, epsilon=c.epsilon,
                     start_epoch_cc=c.start_epoch_cc, start_epoch_adv=c.start_epoch_adv,
                     triplet_weight=c.triplet_weight, triplet_margin=c.triplet_margin, amp=cfg.runtime.amp,
                     pooling_method=cfg.video.pooling_method, **common)


def _clip_reid_engine(cfg: CN, datamanager, model, optimizer, scheduler, use_gpu: bool, **common):
    c = cfg.clip_reid
    if not c.two_stage:
        # CLIP-ReID's one-stage baseline: torchreid's engine and optimiser of train.* over the image side.
        return _standard_engine(cfg, datamanager, model, optimizer, scheduler, use_gpu, **common)
    if cfg.train.optim != "adam":
        raise ConfigError(f"model.name clip_reid trains with the reference's Adam; train.optim is "
                          f"'{cfg.train.optim}': set it to adam")
    if c.stage1_epochs < 0 or c.stage1_batch_size < 1:
        raise ConfigError(f"clip_reid.stage1_epochs must be >= 0 and clip_reid.stage1_batch_size >= 1, got "
                          f"{c.stage1_epochs} and {c.stage1_batch_size}")
    if c.sie_cameras > 0:
        # Checked before training: a camera beyond the embeddings would otherwise stop the first evaluation.
        sets = [datamanager.train_set.train] + [items for by_mode in getattr(datamanager, "test_dataset", {}).values()
                                                for items in by_mode.values()]
        top = max((int(it[2]) for items in sets for it in items), default=-1)
        if top >= c.sie_cameras:
            raise ConfigError(f"clip_reid.sie_cameras is {c.sie_cameras} but the data has camera id {top}; set it "
                              f"to at least {top + 1}")
    net = unwrap(model)
    # The reference's optimisers and schedules replace torchreid's of train.* (built by the trainer, unused here).
    optimizer = torch.optim.Adam(stage2_param_groups(net, cfg.train.lr, cfg.train.weight_decay, c.bias_lr_factor,
                                                     c.weight_decay_bias))
    milestones, gamma = list(cfg.train.stepsize), cfg.train.gamma
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: stage2_lr_factor(e + 1, milestones, gamma, c.warmup_factor, c.warmup_epochs))
    prompt_optimizer = torch.optim.Adam(net.prompt_learner.parameters(), lr=c.stage1_lr,
                                        weight_decay=c.stage1_weight_decay)
    prompt_scheduler = torch.optim.lr_scheduler.LambdaLR(
        prompt_optimizer, lambda e: stage1_lr_factor(e + 1, max(1, c.stage1_epochs), c.stage1_lr,
                                                     c.stage1_warmup_epochs, c.stage1_warmup_lr, c.stage1_min_lr))
    return CLIPReIDEngine(datamanager, model, optimizer, prompt_optimizer, scheduler=scheduler,
                          prompt_scheduler=prompt_scheduler, use_gpu=use_gpu, stage1_epochs=c.stage1_epochs,
                          stage1_batch_size=c.stage1_batch_size, id_weight=c.id_weight,
                          triplet_weight=c.triplet_weight, i2t_weight=c.i2t_weight,
                          label_smooth=cfg.loss.softmax.label_smooth, triplet_margin=cfg.loss.triplet.margin,
                          amp=cfg.runtime.amp, seed=cfg.train.seed, pooling_method=cfg.video.pooling_method,
                          **common)


# model name -> fn(cfg, datamanager, model, optimizer, scheduler, use_gpu, **common) -> engine, where common holds
# the evaluation and checkpoint options every plugin engine takes (ClothesAwareEngineMixin) and the run's resolved
# ``device`` (a torch.device: pass it to whatever the builder places on the GPU). The study's models
# (``shape_probe``, :mod:`clip3dreid_plugin.study`) sit above this package: ``register()`` adds their builders.
ENGINE_BUILDERS: Dict[str, Callable] = {"clip3dreid": _clip3dreid_engine, "cal": _cal_engine,
                                        "clip_reid": _clip_reid_engine}


def _standard_engine(cfg: CN, datamanager, model, optimizer, scheduler, use_gpu: bool, **common):
    if cfg.runtime.amp != "none":
        # torchreid's engines call the model and optimizer themselves; ignoring the option would hide that the
        # baseline trained in float32 while the user asked for mixed precision.
        raise ConfigError(f"runtime.amp {cfg.runtime.amp} (--amp) applies to model.name clip3dreid, cal, "
                          f"clip_reid and shape_probe only; torchreid's engines train '{cfg.model.name}' in float32: "
                          "set runtime.amp none")
    if cfg.data.type == "video":
        if cfg.loss.name != "softmax":
            raise ConfigError("video training supports loss.name softmax only")
        return ClothesVideoSoftmaxEngine(datamanager, model, optimizer=optimizer, scheduler=scheduler,
                                         use_gpu=use_gpu, label_smooth=cfg.loss.softmax.label_smooth,
                                         pooling_method=cfg.video.pooling_method, **common)
    if cfg.loss.name == "softmax":
        return ClothesSoftmaxEngine(datamanager, model, optimizer=optimizer, scheduler=scheduler, use_gpu=use_gpu,
                                    label_smooth=cfg.loss.softmax.label_smooth, **common)
    if cfg.loss.name == "triplet":
        return ClothesTripletEngine(datamanager, model, optimizer=optimizer, margin=cfg.loss.triplet.margin,
                                    weight_t=cfg.loss.triplet.weight_t, weight_x=cfg.loss.triplet.weight_x,
                                    scheduler=scheduler, use_gpu=use_gpu, label_smooth=cfg.loss.softmax.label_smooth,
                                    **common)
    raise ConfigError(f"loss.name must be softmax or triplet, got '{cfg.loss.name}'")


def build_engine(cfg: CN, datamanager, model, optimizer, scheduler, use_gpu: bool, is_main: bool = True,
                 device: Optional[torch.device] = None):
    """Builds the engine for ``cfg.model.name`` with the plugin's evaluation and checkpoint settings.

    Args:
        device: the run's resolved device (``cuda:N`` or ``cpu``); None: current CUDA device if ``use_gpu``.
    """
    builder = ENGINE_BUILDERS.get(cfg.model.name, _standard_engine)
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
    return builder(cfg, datamanager, model, optimizer, scheduler, use_gpu, eval_options=EvalOptions.from_cfg(cfg),
                   ckpt_freq=cfg.runtime.ckpt_freq, is_main=is_main, show_progress=cfg.runtime.progress,
                   device=device, keep_checkpoints=cfg.runtime.keep_checkpoints)

"""Config -> engine. Plugin models that need their own engine register a builder here."""
from __future__ import annotations

from typing import Callable, Dict

from yacs.config import CfgNode as CN

from clip3dreid_plugin.engine.base import EvalSettings
from clip3dreid_plugin.engine.standard import ClothesSoftmaxEngine, ClothesTripletEngine, ClothesVideoSoftmaxEngine

__all__ = ["build_engine", "ENGINE_BUILDERS"]

# model name -> fn(cfg, datamanager, model, optimizer, scheduler, use_gpu) -> engine
ENGINE_BUILDERS: Dict[str, Callable] = {}


def _standard_engine(cfg: CN, datamanager, model, optimizer, scheduler, use_gpu: bool):
    if cfg.data.type == "video":
        if cfg.loss.name != "softmax":
            raise ValueError("video training supports loss.name softmax only")
        return ClothesVideoSoftmaxEngine(datamanager, model, optimizer=optimizer, scheduler=scheduler,
                                         use_gpu=use_gpu, label_smooth=cfg.loss.softmax.label_smooth,
                                         pooling_method=cfg.video.pooling_method)
    if cfg.loss.name == "softmax":
        return ClothesSoftmaxEngine(datamanager, model, optimizer=optimizer, scheduler=scheduler, use_gpu=use_gpu,
                                    label_smooth=cfg.loss.softmax.label_smooth)
    if cfg.loss.name == "triplet":
        return ClothesTripletEngine(datamanager, model, optimizer=optimizer, margin=cfg.loss.triplet.margin,
                                    weight_t=cfg.loss.triplet.weight_t, weight_x=cfg.loss.triplet.weight_x,
                                    scheduler=scheduler, use_gpu=use_gpu, label_smooth=cfg.loss.softmax.label_smooth)
    raise ValueError(f"loss.name must be softmax or triplet, got '{cfg.loss.name}'")


def build_engine(cfg: CN, datamanager, model, optimizer, scheduler, use_gpu: bool, is_main: bool = True):
    """Builds the engine for ``cfg.model.name`` and applies the plugin's evaluation settings."""
    builder = ENGINE_BUILDERS.get(cfg.model.name, _standard_engine)
    engine = builder(cfg, datamanager, model, optimizer, scheduler, use_gpu)
    engine.setup_plugin(EvalSettings.from_cfg(cfg), ckpt_freq=cfg.runtime.ckpt_freq, is_main=is_main,
                        show_progress=cfg.runtime.progress)
    return engine

"""Config -> data manager."""
from __future__ import annotations

from yacs.config import CfgNode as CN

from clip3dreid_plugin.config.kwargs import imagedata_kwargs
from clip3dreid_plugin.data.datamanager import ClothesImageDataManager

__all__ = ["build_datamanager"]


def build_datamanager(cfg: CN, use_gpu: bool, train_sampler_fn=None) -> ClothesImageDataManager:
    """Builds the clothes-aware image data manager (video datasets are not wired into training yet)."""
    if cfg.data.type != "image":
        raise ValueError(f"data.type '{cfg.data.type}' is not supported by scripts/train.py yet (use image)")
    return ClothesImageDataManager(
        use_gpu=use_gpu,
        pin_memory=cfg.runtime.pin_memory,
        persistent_workers=cfg.runtime.persistent_workers,
        train_sampler_fn=train_sampler_fn,
        **imagedata_kwargs(cfg),
    )

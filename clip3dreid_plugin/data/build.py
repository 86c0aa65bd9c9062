"""Config -> data manager."""
from __future__ import annotations

from yacs.config import CfgNode as CN

from clip3dreid_plugin.config.kwargs import imagedata_kwargs
from clip3dreid_plugin.data.datamanager import ClothesImageDataManager, ClothesVideoDataManager

__all__ = ["build_datamanager"]


def build_datamanager(cfg: CN, use_gpu: bool, train_sampler_fn=None, eval_shard=(0, 1)) -> ClothesImageDataManager:
    """Builds the clothes-aware image or video (``data.type video``) data manager."""
    cls, extra = ClothesImageDataManager, {}
    if cfg.data.type == "video":
        cls, extra = ClothesVideoDataManager, dict(seq_len=cfg.video.seq_len, sample_method=cfg.video.sample_method)
    elif cfg.data.type != "image":
        raise ValueError(f"data.type must be image or video, got '{cfg.data.type}'")
    return cls(
        **extra,
        use_gpu=use_gpu,
        pin_memory=cfg.runtime.pin_memory,
        persistent_workers=cfg.runtime.persistent_workers,
        train_sampler_fn=train_sampler_fn,
        eval_shard=eval_shard,
        **imagedata_kwargs(cfg),
    )

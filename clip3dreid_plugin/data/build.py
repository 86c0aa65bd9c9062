"""Config -> data manager; a registered dataset's training split by name."""
from __future__ import annotations

from typing import Any, Tuple

import torchreid
from yacs.config import CfgNode as CN

from clip3dreid_plugin import compat
from clip3dreid_plugin.config.kwargs import imagedata_kwargs
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.data.datamanager import ClothesImageDataManager, ClothesVideoDataManager

__all__ = ["build_datamanager", "build_train_split"]


def build_datamanager(cfg: CN, use_gpu: bool, train_sampler_fn=None, eval_shard=(0, 1)) -> ClothesImageDataManager:
    """Builds the clothes-aware image or video (``data.type video``) data manager."""
    cls, extra = ClothesImageDataManager, {}
    if cfg.data.type == "video":
        cls, extra = ClothesVideoDataManager, dict(seq_len=cfg.video.seq_len, sample_method=cfg.video.sample_method)
    elif cfg.data.type != "image":
        raise ConfigError(f"data.type must be image or video, got '{cfg.data.type}'")
    return cls(
        **extra,
        use_gpu=use_gpu,
        pin_memory=cfg.runtime.pin_memory,
        persistent_workers=cfg.runtime.persistent_workers,
        train_sampler_fn=train_sampler_fn,
        eval_shard=eval_shard,
        **imagedata_kwargs(cfg),
    )


def _identity(img):
    return img


def build_train_split(name: str, root: str, **kwargs) -> Tuple[Any, bool]:
    """Builds dataset ``name``'s training split through torchreid's registries (call ``register()`` first).

    No image is read: this is for listing and checking items. Video datasets are recognised by their
    registry, so the caller need not know the kind.

    Args:
        name: registered image or video dataset name.
        root: dataset root.
        **kwargs: passed to the dataset (e.g. ``combineall``, ``seq_len``).

    Returns:
        ``(dataset, is_video)``.

    Raises:
        ValueError: ``name`` is not a registered image or video dataset.
    """
    kw = dict(root=root, mode="train", verbose=False, **kwargs)
    if name in compat.video_dataset_registry():
        # torchreid's VideoDataset refuses transform=None; frames are not read here anyway.
        return torchreid.data.datasets.init_video_dataset(name, transform=_identity, **kw), True
    if name in compat.image_dataset_registry():
        return torchreid.data.datasets.init_image_dataset(name, **kw), False
    known = sorted(compat.image_dataset_registry()) + sorted(compat.video_dataset_registry())
    raise ConfigError(f"unknown dataset '{name}'; registered: {', '.join(known)}")

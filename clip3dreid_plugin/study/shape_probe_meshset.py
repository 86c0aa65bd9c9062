"""``model.name shape_probe_meshset``: the shape probe trained on the synthetic mesh set only.

The same ResNet-50 regressor as ``shape_probe`` (:mod:`~clip3dreid_plugin.study.shape_probe_model`), but its targets
are the true betas of the untextured renders of ``body.synthetic_dir`` (the set ``L_OT_syn`` and ``L_3D`` train on),
never synthcc's training images: those are only evaluated on, by ranking the test split by predicted shape through the
normal evaluator. It answers whether shape read from untextured bodies carries over to clothed ones, which is what
Design 3's mesh set is for. Each epoch takes as many steps as the datamanager's training loader (the same budget as
``shape_probe``), its batches drawn from the mesh set's :class:`~clip3dreid_plugin.data.meshset.SyntheticStream`.
"""
from __future__ import annotations

from typing import Dict, Iterator

import torch
from yacs.config import CfgNode as CN

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.data.meshset import SyntheticStream, check_synthetic_set, synthetic_stream
from clip3dreid_plugin.study.shape_probe_engine import ShapeProbeEngine
from clip3dreid_plugin.utils.distributed import get_rank

__all__ = ["MeshSetSteps", "MeshsetShapeProbeEngine", "build_meshset_probe_engine"]


class MeshSetSteps:
    """``steps`` batches of a mesh-set stream per pass: the training loader of one epoch.

    Args:
        stream: the set's endless, per-epoch seeded stream.
        steps: batches per epoch.
    """

    def __init__(self, stream: SyntheticStream, steps: int):
        self.stream, self.steps = stream, int(steps)

    def set_epoch(self, epoch: int) -> None:
        """Re-seeds the stream's shuffle for ``epoch`` (a resumed run draws what an uninterrupted one would)."""
        self.stream.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        for _ in range(self.steps):
            yield next(self.stream)


class MeshsetShapeProbeEngine(ShapeProbeEngine):
    """Mean squared error between predicted and true betas of mesh-set renders; evaluated as any engine.

    Args:
        datamanager: torchreid data manager (its test loaders are evaluated; its training images are never read).
        model: the probe.
        optimizer: torchreid optimizer.
        train_batches: the mesh-set batches of one epoch (``{'img': [B,3,H,W], 'betas': [B,10], ...}``).
        **kwargs: as :class:`ShapeProbeEngine` (scheduler, use_gpu, amp and the evaluation options).
    """

    def __init__(self, datamanager, model, optimizer, train_batches: MeshSetSteps, **kwargs):
        super().__init__(datamanager, model, optimizer, {}, **kwargs)
        self.train_loader = train_batches  # replaces the datamanager's: synthcc's training images are not trained on

    def batch_targets(self, data: dict) -> torch.Tensor:
        return data["betas"].float()

    def train(self, *args, **kwargs) -> Dict[str, float]:
        self.train_loader.set_epoch(self.epoch)
        return super().train(*args, **kwargs)


def build_meshset_probe_engine(cfg: CN, datamanager, model, optimizer, scheduler, use_gpu: bool,
                               **common) -> MeshsetShapeProbeEngine:
    """The engine of ``model.name shape_probe_meshset``: batches of ``train.batch_size`` renders of
    ``body.synthetic_dir``, ``len(datamanager.train_loader)`` of them per epoch.

    Raises:
        ConfigError: no ``body.synthetic_dir``, or (``body.check_set``) a set other than the ``body.*`` keys name.
    """
    folder = cfg.body.synthetic_dir
    if not folder:
        raise ConfigError("model.name shape_probe_meshset trains on body.synthetic_dir, which is empty (render a set "
                          "with clip3dreid-render-meshset)")
    if cfg.body.check_set:
        check_synthetic_set(cfg, folder)
    pin = bool(cfg.runtime.pin_memory and getattr(datamanager, "use_gpu", False))
    stream = synthetic_stream(folder, datamanager.transform_tr, cfg.train.batch_size, seed=cfg.train.seed,
                              workers=cfg.data.workers, rank=get_rank(), pin_memory=pin,
                              persistent_workers=cfg.runtime.persistent_workers)
    return MeshsetShapeProbeEngine(datamanager, model, optimizer, MeshSetSteps(stream, len(datamanager.train_loader)),
                                   scheduler=scheduler, use_gpu=use_gpu, amp=cfg.runtime.amp, **common)

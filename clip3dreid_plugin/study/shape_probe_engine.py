"""``ShapeProbeEngine``: trains :class:`~clip3dreid_plugin.study.shape_probe_model.ShapeProbe` to regress true
shapes; :func:`build_shape_probe_engine` is its entry of ``engine.build.ENGINE_BUILDERS``."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
import torchreid
from yacs.config import CfgNode as CN

from clip3dreid_plugin.engine.amp import autocast, grad_scaler
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.engine.base import ClothesAwareEngineMixin

__all__ = ["ShapeProbeEngine", "build_shape_probe_engine"]


class ShapeProbeEngine(ClothesAwareEngineMixin, torchreid.engine.Engine):
    """Mean squared error between the predicted and the true shape coefficients of each training image.

    Args:
        datamanager: torchreid data manager whose training images all have a known shape.
        model: the probe (possibly DDP-wrapped).
        optimizer: torchreid optimizer.
        shapes_by_path: absolute image path -> the identity's shape coefficients.
        scheduler: torchreid LR scheduler or None.
        use_gpu: train on CUDA.
        amp: ``none`` | ``bf16`` | ``fp16`` autocast of the forward (fp16 on CUDA with a gradient scaler).
        **kwargs: the evaluation and checkpoint options of :class:`ClothesAwareEngineMixin`.
    """

    def __init__(self, datamanager, model, optimizer, shapes_by_path: Dict[str, Sequence[float]], scheduler=None,
                 use_gpu: bool = True, amp: str = "none", **kwargs):
        super().__init__(datamanager, use_gpu, **kwargs)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.register_model("model", model, optimizer, scheduler)
        self.shapes = {k: torch.tensor(v, dtype=torch.float32) for k, v in shapes_by_path.items()}
        self.amp = amp
        self.scaler = grad_scaler(amp, self.use_gpu)

    def targets(self, paths: Sequence[str]) -> torch.Tensor:
        """True shapes ``[B, num_coeffs]`` of the batch's images.

        Raises:
            KeyError: an image without a known shape (named).
        """
        missing = [p for p in paths if p not in self.shapes]
        if missing:
            raise KeyError(f"no true shape for '{missing[0]}' ({len(missing)} images of the batch); the shape probe "
                           "trains on synthcc only")
        return torch.stack([self.shapes[p] for p in paths])

    def batch_targets(self, data: dict) -> torch.Tensor:
        """True shapes ``[B, num_coeffs]`` of a training batch (here looked up by image path)."""
        return self.targets(list(data["impath"]))

    def forward_backward(self, data: dict) -> Dict[str, torch.Tensor]:
        imgs = data["img"].to(self.device, non_blocking=True)
        target = self.batch_targets(data).to(self.device)
        with autocast(self.amp, self.use_gpu):
            pred = self.model(imgs)
        loss = F.mse_loss(pred.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"shape_mse": loss.detach()}  # read by the loop once per print interval, not here


def build_shape_probe_engine(cfg: CN, datamanager, model, optimizer, scheduler, use_gpu: bool,
                             **common) -> ShapeProbeEngine:
    """The engine of ``model.name shape_probe``, with synthcc's true shapes as targets.

    Raises:
        ConfigError: a source dataset other than synthcc (no other dataset knows its shapes).
    """
    from clip3dreid_plugin.body.synthcc import synthcc_shapes_by_path

    others = [name for name in datamanager.sources if name != "synthcc"]
    if others:
        raise ConfigError(f"model.name shape_probe needs true body shapes, which only synthcc has; data.sources "
                          f"has {others}")
    return ShapeProbeEngine(datamanager, model, optimizer, synthcc_shapes_by_path(cfg.data.root),
                            scheduler=scheduler, use_gpu=use_gpu, amp=cfg.runtime.amp, **common)

"""Config -> model, through torchreid's model table (so baselines and plugin models share one path)."""
from __future__ import annotations

import inspect
import logging
from typing import Any, Dict

import torch.nn as nn
from yacs.config import CfgNode as CN

from clip3dreid_plugin import compat
from clip3dreid_plugin.config.loader import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["build_model", "build_inference_model", "model_kwargs_from_cfg"]


def model_kwargs_from_cfg(cfg: CN) -> Dict[str, Any]:
    """Extra keyword arguments that plugin factories accept (ignored by torchreid's own models)."""
    return {"cfg": cfg}


def build_model(cfg: CN, num_classes: int, use_gpu: bool) -> nn.Module:
    """Builds ``cfg.model.name`` from torchreid's registry (call ``register()`` first).

    Raises:
        ConfigError: the name is not a registered model.
    """
    table = compat.model_factory()
    name = cfg.model.name
    if name not in table:
        raise ConfigError(
            f"unknown model.name '{name}'; registered models include: "
            + ", ".join(sorted(table)[:12]) + ", ... (see torchreid.models.show_avai_models())"
        )
    factory = table[name]
    kwargs = dict(num_classes=num_classes, loss=cfg.loss.name, pretrained=cfg.model.pretrained, use_gpu=use_gpu)
    params = inspect.signature(factory).parameters
    if "cfg" in params:
        kwargs.update(model_kwargs_from_cfg(cfg))
    model = factory(**kwargs)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    logger.info("model %s: %.2f M parameters (%d classes)", name, n_params, num_classes)
    return model


def build_inference_model(cfg: CN, weights: str = "") -> nn.Module:
    """Eval-mode model of ``cfg.model.name`` with ``weights`` loaded (classifier size read from the file).

    Raises:
        FileNotFoundError: ``weights`` does not exist.
    """
    num_classes = 1
    if weights:
        state = compat.load_checkpoint(weights)
        state = state.get("state_dict", state)
        for k, v in state.items():
            if k.endswith("classifier.weight"):
                num_classes = v.shape[0]
    model = build_model(cfg, num_classes, use_gpu=False)
    if weights:
        compat.load_pretrained_weights(model, weights)
    return model.eval()

"""What the command-line tools share: logging set-up, and for the inference tools the student and its transform."""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch
from yacs.config import CfgNode

__all__ = ["start_cli", "load_student", "eval_transform"]


def start_cli(stream=None) -> None:
    """Console logging (to ``stream``, default stdout), and torchreid's import-time warnings silenced (they are not
    the user's problem). Every command of the plugin starts with it or with ``setup_logging`` and a log file."""
    from clip3dreid_plugin.utils.runtime import quiet_torchreid_warnings, setup_logging

    quiet_torchreid_warnings()
    setup_logging(stream=stream)


def load_student(config_file: str, opts: Sequence[str], weights: str) -> Tuple[CfgNode, torch.nn.Module]:
    """Merges the config, registers the plugin and builds the eval-mode model from a checkpoint.

    Args:
        config_file: YAML recipe; empty for the defaults.
        opts: ``KEY VALUE`` overrides.
        weights: checkpoint path; empty keeps the initialised weights.

    Returns:
        ``(cfg, model)``.

    Raises:
        ConfigError: a bad key or value (named in the message).
        FileNotFoundError: the checkpoint is missing.
        RuntimeError: the checkpoint does not fit the model.
    """
    import clip3dreid_plugin
    from clip3dreid_plugin.config import load_config
    from clip3dreid_plugin.models.build import build_inference_model

    cfg = load_config(config_file or None, list(opts))
    clip3dreid_plugin.register()
    return cfg, build_inference_model(cfg, weights)


def eval_transform(cfg: CfgNode) -> Callable:
    """torchreid's test transform for ``cfg.data``: resize, to tensor, normalise (PIL image -> ``[3, H, W]``)."""
    import torchreid

    _, transform = torchreid.data.transforms.build_transforms(
        cfg.data.height, cfg.data.width, transforms=None, norm_mean=list(cfg.data.norm_mean),
        norm_std=list(cfg.data.norm_std))
    return transform

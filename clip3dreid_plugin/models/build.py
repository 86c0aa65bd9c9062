"""Config -> model, through torchreid's model table (so baselines and plugin models share one path)."""
from __future__ import annotations

import inspect
import logging
import os.path as osp
import urllib.error
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from clip3dreid_plugin import compat
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.models import PRETRAINED_OUTSIDE_CHECKPOINT
from clip3dreid_plugin.models.imagenet import PretrainedWeightsError, ensure_pretrained_file, torchreid_pretrained_url

logger = logging.getLogger(__name__)

__all__ = ["build_model", "build_inference_model", "model_kwargs_from_cfg"]


def model_kwargs_from_cfg(cfg: CN) -> Dict[str, Any]:
    """Extra keyword arguments that plugin factories accept (ignored by torchreid's own models)."""
    return {"cfg": cfg}


def build_model(cfg: CN, num_classes: int, use_gpu: bool, checkpoint: str = "",
                num_clothes: Optional[int] = None) -> nn.Module:
    """Builds ``cfg.model.name`` from torchreid's registry (call ``register()`` first).

    With ``model.pretrained True``, a torchreid model's ImageNet file is put in torch's model-zoo cache first (or a
    one-line error names it), so that torchreid's own loader never meets a dead network.

    Args:
        cfg: the merged config.
        num_classes: classifier size.
        use_gpu: torchreid's flag.
        checkpoint: a checkpoint the caller loads into the model next. Its weights replace the ImageNet ones, so
            those are neither loaded nor asked for (an evaluation needs no ImageNet file); the frozen CLIP of
            ``clip_zeroshot`` / ``clip_linear`` is never in a checkpoint and is still loaded.
        num_clothes: the training split's outfits, passed to a factory that takes ``num_clothes`` (``cal``).

    Raises:
        ConfigError: the name is not a registered model.
        PretrainedWeightsError: ``model.pretrained True`` and the weights are neither cached nor downloadable.
    """
    table = compat.model_factory()
    name = cfg.model.name
    if name not in table:
        raise ConfigError(
            f"unknown model.name '{name}'; registered models include: "
            + ", ".join(sorted(table)[:12]) + ", ... (see torchreid.models.show_avai_models())"
        )
    factory = table[name]
    pretrained = bool(cfg.model.pretrained)
    if pretrained and checkpoint and name not in PRETRAINED_OUTSIDE_CHECKPOINT:
        logger.info("model.pretrained: ImageNet weights not loaded, %s replaces them", checkpoint)
        pretrained = False
    # The plugin's own factories (models/ and the study's, added by register()) find their weights themselves.
    fetches_own = pretrained and not getattr(factory, "__module__", "").startswith("clip3dreid_plugin.")
    if fetches_own:
        url = torchreid_pretrained_url(name, factory)
        if url is not None:
            ensure_pretrained_file(url, f"torchreid's '{name}'")
            fetches_own = False
    kwargs = dict(num_classes=num_classes, loss=cfg.loss.name, pretrained=pretrained, use_gpu=use_gpu)
    params = inspect.signature(factory).parameters
    if "cfg" in params:
        kwargs.update(model_kwargs_from_cfg(cfg))
    if num_clothes is not None and "num_clothes" in params:
        kwargs["num_clothes"] = num_clothes
    try:
        model = factory(**kwargs)
    except (OSError, urllib.error.URLError) as err:
        if not fetches_own:
            raise
        # OSNet and friends download from Google Drive with gdown (a requests.ConnectionError, an OSError).
        raise PretrainedWeightsError(
            f"model.pretrained True: torchreid's '{name}' could not fetch its ImageNet weights "
            f"({str(err).splitlines()[0][:160]}); put its file in "
            f"'{osp.join(osp.dirname(torch.hub.get_dir()), 'checkpoints')}' "
            "or set model.pretrained False") from None
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    logger.info("model %s: %.2f M parameters (%d classes)", name, n_params, num_classes)
    return model


def build_inference_model(cfg: CN, weights: str = "") -> nn.Module:
    """Eval-mode model of ``cfg.model.name`` with ``weights`` loaded (classifier size read from the file).

    With ``weights`` no ImageNet file is needed: the checkpoint replaces those weights (see :func:`build_model`).

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        CheckpointError: ``weights`` leaves tensors of the model (other than the classifier) unfilled.
    """
    num_classes, num_clothes = 1, None
    if weights:
        state = compat.load_checkpoint(weights)
        state = state.get("state_dict", state)
        for k, v in state.items():
            if k.endswith("clothes_classifier.weight"):
                num_clothes = v.shape[0]
            elif k.endswith("classifier.weight"):
                num_classes = v.shape[0]
            # A student trained from objects took its teacher's width, which its config may not say (Phi's input).
            if cfg.model.name == "clip3dreid" and k.endswith(("image_head.0.weight", "image_head.weight")) \
                    and v.shape[1] != cfg.clip3dreid.teacher_dim:
                logger.info("clip3dreid.teacher_dim %d, read from %s (the config says %d)", v.shape[1], weights,
                            cfg.clip3dreid.teacher_dim)
                cfg = cfg.clone()
                cfg.defrost()
                cfg.clip3dreid.teacher_dim = int(v.shape[1])
    model = build_model(cfg, num_classes, use_gpu=False, checkpoint=weights, num_clothes=num_clothes)
    if weights:
        # At inference every tensor matters but the classifier (sized by the number of training identities).
        unfilled = [k for k in compat.load_pretrained_weights(model, weights) if "classifier" not in k]
        if unfilled:
            raise compat.CheckpointError(
                f"'{weights}' does not fit the {cfg.model.name} model its config describes: {len(unfilled)} tensors "
                f"are missing or of another shape (e.g. {unfilled[0]}); use the config the run wrote "
                "(RUN/config.yaml) as --config-file")
    return model.eval()

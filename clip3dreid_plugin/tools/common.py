"""What the command-line tools share: logging set-up, the one-line report of user errors, and for the inference
tools the student and its transform."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from yacs.config import CfgNode

__all__ = ["start_cli", "error_line", "report_error", "user_error_types", "load_student", "eval_transform"]


def start_cli(stream=None) -> None:
    """Console logging (to ``stream``, default stdout), and torchreid's import-time warnings silenced (they are not
    the user's problem). Every command of the plugin starts with it or with ``setup_logging`` and a log file."""
    from clip3dreid_plugin.utils.runtime import quiet_torchreid_warnings, setup_logging

    quiet_torchreid_warnings()
    setup_logging(stream=stream)


def user_error_types() -> tuple:
    """The project's own error types: their message names the cause, so one line is all a user needs.

    Anything else (a shape bug in model code, a failed assertion) keeps its traceback.
    """
    from clip3dreid_plugin.body.poses import PoseFileError
    from clip3dreid_plugin.body.render import HeadlessGLError
    from clip3dreid_plugin.body.smpl_io import BodyModelError
    from clip3dreid_plugin.body.synthcc import SynthCCError
    from clip3dreid_plugin.body.synthetic_set import SyntheticSetError
    from clip3dreid_plugin.config import ConfigError
    from clip3dreid_plugin.teacher.cache import TeacherCacheError, TeacherCacheMissError
    from clip3dreid_plugin.teacher.weights import TeacherLoadError
    from datasets_ext.base import DatasetLayoutError
    from datasets_ext.image_io import ImageReadError

    return (ConfigError, DatasetLayoutError, ImageReadError, TeacherCacheError, TeacherCacheMissError,
            TeacherLoadError, BodyModelError, PoseFileError, HeadlessGLError, SyntheticSetError, SynthCCError,
            FileNotFoundError)


def error_line(err: BaseException) -> Optional[str]:
    """The one-line message for a user error or a CUDA out-of-memory, else None (the traceback is kept)."""
    import torch

    if isinstance(err, torch.OutOfMemoryError):
        first = str(err).strip().splitlines()[0] if str(err).strip() else "out of memory"
        return (f"{first}; lower train.batch_size (and test.batch_size), or train in mixed precision with "
                "runtime.amp bf16|fp16 (--amp)")
    if not isinstance(err, user_error_types()):
        return None
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    # A DataLoader worker re-raises with its traceback in the message; the cause is its last line. Otherwise a
    # message written over several lines (a missing body model and how to get one) is joined into one.
    msg = lines[-1] if "Original Traceback" in str(err) else " ".join(lines)
    return msg.strip("'\"") if isinstance(err, KeyError) else msg




def report_error(err: BaseException) -> int:
    """Prints a user error's one line (``error: ...``) and returns exit code 2; re-raises anything else.

    ``CLIP3DREID_DEBUG=1`` re-raises user errors too, for their traceback. Under ``torchrun`` ranks other than 0
    prefix their line with the rank, since every rank fails alike.
    """
    import os
    import sys

    msg = error_line(err)
    if msg is None or os.environ.get("CLIP3DREID_DEBUG") == "1":
        raise err
    rank = int(os.environ.get("RANK", "0"))
    print(f"error: {msg}" if rank == 0 else f"error (rank {rank}): {msg}", file=sys.stderr)
    return 2


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

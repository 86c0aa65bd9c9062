"""The only module that knows how torchreid is laid out.

PyPI's ``torchreid==0.2.5`` keeps its modules under ``torchreid.reid.*`` and exposes them as
attributes of the top-level package; a source install of upstream deep-person-reid has them at
``torchreid.*``. Attribute access (``torchreid.models``) works for both, ``import
torchreid.models`` does not, so everything here goes through attributes.

It also repairs two reproduced breakages of torchreid under torch >= 2.6 / numpy 2:
checkpoints holding numpy scalars cannot be reloaded with ``weights_only=True``, and
``save_model`` crashes on a scheduler of ``None``.
"""
from __future__ import annotations

import contextlib
import logging
import os.path as osp
from collections import OrderedDict
from typing import Any, Dict, List, Mapping

import numpy as np
import torch
import torchreid

from clip3dreid_plugin.config.check import Accepted
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.utils.io import atomic_write
from clip3dreid_plugin.utils.safe_pickle import weights_only_refusal

logger = logging.getLogger(__name__)

__all__ = [
    "model_factory",
    "image_dataset_registry",
    "video_dataset_registry",
    "accepted_names",
    "save_checkpoint",
    "load_checkpoint",
    "load_pretrained_weights",
    "to_plain",
    "CheckpointError",
]


class CheckpointError(ConfigError):
    """A checkpoint given by the user cannot be read or does not fit the model (a user error, one line)."""


def model_factory() -> Dict[str, Any]:
    """torchreid's model table (``build_model`` has no register function, only this dict)."""
    return getattr(torchreid.models, "__model_factory")


def image_dataset_registry() -> Dict[str, Any]:
    return getattr(torchreid.data.datasets, "__image_datasets")


def video_dataset_registry() -> Dict[str, Any]:
    return getattr(torchreid.data.datasets, "__video_datasets")


def accepted_names() -> Accepted:
    """The dataset, sampler, optimiser and scheduler names torchreid accepts now (registered datasets included)."""
    return Accepted(image_datasets=tuple(image_dataset_registry()), video_datasets=tuple(video_dataset_registry()),
                    samplers=tuple(torchreid.data.sampler.AVAI_SAMPLERS),
                    optimizers=tuple(torchreid.optim.optimizer.AVAI_OPTIMS),
                    schedulers=tuple(torchreid.optim.lr_scheduler.AVAI_SCH))


def to_plain(obj: Any) -> Any:
    """Recursively turns numpy scalars/arrays into Python numbers/lists so ``weights_only`` loads work."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (dict, OrderedDict)):
        return type(obj)((k, to_plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def save_checkpoint(state: Mapping[str, Any], fpath: str) -> str:
    """Atomically writes ``state`` to ``fpath`` (temp file + rename) with plain Python scalars.

    ``None`` entries (e.g. a model trained without scheduler) are kept as ``None``.

    Raises:
        WriteError: the file cannot be written (no space left, permission denied); the previous file is untouched.
    """
    state = {k: (v.state_dict() if hasattr(v, "state_dict") and not torch.is_tensor(v) else v)
             for k, v in state.items()}
    state = {k: (to_plain(v) if k not in ("state_dict", "optimizer", "scheduler") else v)
             for k, v in state.items()}
    atomic_write(fpath, lambda fh: torch.save(state, fh), fsync=True)
    logger.info("Checkpoint saved to %s", fpath)
    return fpath


def _numpy_safe_globals() -> list:
    """Types found in checkpoints written by torchreid's own ``save_model`` (rank1 as a numpy scalar)."""
    out = [np.dtype, np.ndarray]
    core = getattr(np, "_core", None) or getattr(np, "core")
    out.append(core.multiarray.scalar)
    out.append(core.multiarray._reconstruct)
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        dt = getattr(getattr(np, "dtypes", None), name, None)
        if dt is not None:
            out.append(dt)
    return out


def load_checkpoint(fpath: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Loads a checkpoint written by the plugin or by torchreid, under any torch version.

    Raises:
        FileNotFoundError: ``fpath`` does not exist (the message names it).
        CheckpointError: ``fpath`` exists but is not a checkpoint torch can read (truncated, another format).
    """
    fpath = osp.abspath(osp.expanduser(fpath))
    if not osp.isfile(fpath):
        raise FileNotFoundError(f"checkpoint not found: '{fpath}'")
    safe = getattr(torch.serialization, "safe_globals", None)
    # torch < 2.4 cannot allow-list torchreid's numpy scalars, but must not unpickle arbitrary objects either
    with safe(_numpy_safe_globals()) if safe is not None else contextlib.nullcontext():
        try:
            return torch.load(fpath, map_location=map_location, weights_only=True)
        except Exception as err:
            # torch's own message here is its weights_only help text; what the user needs is which file is bad.
            if "GLOBAL" in str(err):
                raise CheckpointError(f"'{fpath}' is not a readable checkpoint: {weights_only_refusal(err)}") from err
            raise CheckpointError(f"'{fpath}' is not a readable checkpoint ({type(err).__name__}); was it truncated, "
                                  "or written by another program?") from err


def load_pretrained_weights(model: torch.nn.Module, fpath: str) -> List[str]:
    """Loads matching weights from ``fpath`` into ``model`` (``module.`` prefixes stripped).

    Returns:
        The model's state keys the file did not fill (they keep their initial values). Those outside the
        classifier (whose size follows the number of training identities) are named in a warning.

    Raises:
        CheckpointError: ``fpath`` is unreadable, or no layer of it matches the model.
    """
    ckpt = load_checkpoint(fpath)
    state = ckpt.get("state_dict", ckpt)
    own = model.state_dict()
    matched = OrderedDict()
    for k, v in state.items():
        k = k[7:] if k.startswith("module.") else k
        if k in own and own[k].shape == v.shape:
            matched[k] = v
    if not matched:
        raise CheckpointError(f"no layer of '{fpath}' matches the model; check the model name")
    own.update(matched)
    model.load_state_dict(own)
    skipped = len(state) - len(matched)
    logger.info("Loaded %d tensors from %s (%d skipped: name or shape mismatch)", len(matched), fpath, skipped)
    unfilled = [k for k in own if k not in matched]
    others = [k for k in unfilled if "classifier" not in k]
    if others:
        logger.warning("%d tensors of the model are not in %s and keep their initial values, e.g. %s", len(others),
                       fpath, ", ".join(others[:3]))
    return unfilled

"""``register()``: the one place that writes to torchreid's model and dataset registries (and that adds the study's
instruments to the plugin's engine and teacher-mode tables)."""
from __future__ import annotations

import logging
import os.path as osp
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing the package stays light: no torch, no torchreid
    from clip3dreid_plugin.config.check import Accepted

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_done = False

__all__ = ["register", "register_manifest_dataset", "accepted_names"]

_manifests: dict = {}  # name -> the dataset class registered for it by register_manifest_dataset


def _put(table: dict, name: str, obj, kind: str, owner: str = "torchreid") -> None:
    current = table.get(name)
    if current is obj:
        return
    if current is not None:
        raise ValueError(
            f"{owner} already has a {kind} named '{name}' ({current!r}); "
            "the plugin will not overwrite it"
        )
    table[name] = obj


def register() -> None:
    """Adds the plugin's models (the study's too) and datasets to torchreid, and the study's engine builders and
    teacher modes to the plugin's tables. Calling it again is a no-op.

    Raises:
        ValueError: torchreid already holds a different object under one of the plugin's names.
    """
    global _done
    with _lock:
        if _done:
            return
        # Imported on the first call: ``import clip3dreid_plugin`` stays light (no torch, no torchreid).
        from clip3dreid_plugin import compat, study
        from clip3dreid_plugin.engine.build import ENGINE_BUILDERS
        from clip3dreid_plugin.models import MODEL_FACTORIES
        from clip3dreid_plugin.teacher.source import TEACHER_MODES
        from datasets_ext import IMAGE_DATASETS, VIDEO_DATASETS

        # The study's instruments sit above engine and teacher, whose tables therefore get them from here.
        for name, fn in study.ENGINE_BUILDERS.items():
            _put(ENGINE_BUILDERS, name, fn, "engine builder", "the plugin")
        for name, fn in study.TEACHER_MODES.items():
            _put(TEACHER_MODES, name, fn, "teacher mode", "the plugin")
        models = {**MODEL_FACTORIES, **study.MODEL_FACTORIES}
        factory = compat.model_factory()
        for name, fn in models.items():
            _put(factory, name, fn, "model")
        image_table = compat.image_dataset_registry()
        for name, cls in IMAGE_DATASETS.items():
            _put(image_table, name, cls, "image dataset")
        video_table = compat.video_dataset_registry()
        for name, cls in VIDEO_DATASETS.items():
            _put(video_table, name, cls, "video dataset")
        _done = True
        logger.debug(
            "registered %d models, %d image and %d video datasets",
            len(models), len(IMAGE_DATASETS), len(VIDEO_DATASETS),
        )


def accepted_names() -> Accepted:
    """:func:`register`, then the names torchreid accepts (:class:`~clip3dreid_plugin.config.check.Accepted`): what
    the config check compares ``data.sources``, the sampler, the optimiser and the scheduler with."""
    register()
    from clip3dreid_plugin import compat  # torchreid's layout; imported late, as in register()

    return compat.accepted_names()


def register_manifest_dataset(name: str, csv_path: str) -> None:
    """Registers the manifest ``csv_path`` (see ``datasets_ext.manifest``) as the image dataset ``name``.

    Several manifests registered under their own names combine like any torchreid datasets
    (``data.sources [mine_a, mine_b]``, ``data.targets [mine_b]``). Calls :func:`register` first; calling it again
    with the same name and file is a no-op.

    Raises:
        ValueError: ``name`` is already taken by another dataset or another manifest.
    """
    from clip3dreid_plugin import compat  # imported late, as in register()
    from datasets_ext.manifest import manifest_dataset_class

    register()
    path = osp.abspath(osp.expanduser(csv_path))
    with _lock:
        cls = _manifests.get(name)
        if cls is not None and cls.csv_path == path:
            return
        cls = manifest_dataset_class(name, path)
        _put(compat.image_dataset_registry(), name, cls, "image dataset")
        _manifests[name] = cls
        logger.debug("registered manifest dataset '%s' from %s", name, path)

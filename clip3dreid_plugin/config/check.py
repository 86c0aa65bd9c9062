"""The options torchreid would reject only once the data, sampler or optimiser are built, checked on the merged config
instead: each failure is a :class:`ConfigError` that names the option, its value and what it takes.

The names torchreid accepts depend on what is registered, so they come in as an :class:`Accepted` (read from
torchreid by :func:`clip3dreid_plugin.registry.accepted_names` after ``register()``); this module reads no
registry itself.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Sequence, Tuple

from yacs.config import CfgNode as CN

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.utils.artefact import STALE_POLICIES

__all__ = ["Accepted", "LOSSES", "IDENTITY_SAMPLERS", "check_config"]

# torchreid's engines: ImageSoftmaxEngine and ImageTripletEngine (the plugin's engines follow the same two names).
LOSSES: Tuple[str, ...] = ("softmax", "triplet")
# Samplers that draw train.batch_size / sampler.num_instances identities per batch.
IDENTITY_SAMPLERS: Tuple[str, ...] = ("RandomIdentitySampler",)


@dataclass(frozen=True)
class Accepted:
    """The names torchreid accepts at the time of the check.

    Attributes:
        image_datasets: registered image datasets (torchreid's and the plugin's).
        video_datasets: registered video datasets.
        samplers: ``sampler.train_sampler`` values (torchreid's ``AVAI_SAMPLERS``).
        optimizers: ``train.optim`` values (``AVAI_OPTIMS``).
        schedulers: ``train.lr_scheduler`` values (``AVAI_SCH``).
    """

    image_datasets: Tuple[str, ...]
    video_datasets: Tuple[str, ...]
    samplers: Tuple[str, ...]
    optimizers: Tuple[str, ...]
    schedulers: Tuple[str, ...]


def _one_of(option: str, value: str, choices: Sequence[str], what: str = "") -> None:
    """Raises a :class:`ConfigError` naming ``option`` unless ``value`` is in ``choices``, with a "did you mean"
    for a near miss (difflib)."""
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(f"{option}: unknown {what or 'value'} '{value}'; {hint}it takes one of "
                      f"{', '.join(sorted(choices))}")


def _positive(option: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{option} must be a positive integer, got {value!r}")


def _datasets(cfg: CN, accepted: Accepted) -> None:
    kind = cfg.data.type
    if kind not in ("image", "video"):
        raise ConfigError(f"data.type must be image or video, got '{kind}'")
    names = accepted.image_datasets if kind == "image" else accepted.video_datasets
    for option in ("data.sources", "data.targets"):
        values = list(cfg.data[option.split(".")[1]])
        if not values:
            raise ConfigError(f"{option} is empty: name at least one {kind} dataset, e.g. [{sorted(names)[0]}]")
        for name in values:
            _one_of(option, name, names, f"{kind} dataset")


def _sampler(cfg: CN, accepted: Accepted) -> None:
    s, batch = cfg.sampler, cfg.train.batch_size
    _positive("train.batch_size", batch)
    checked = [("sampler.train_sampler", s.train_sampler)]
    if cfg.data.load_train_targets:
        checked.append(("sampler.train_sampler_t", s.train_sampler_t))
    for option, name in checked:
        _one_of(option, name, accepted.samplers, "sampler")
        if name in IDENTITY_SAMPLERS:
            _positive("sampler.num_instances", s.num_instances)
            if batch % s.num_instances:
                raise ConfigError(f"train.batch_size ({batch}) must be a multiple of sampler.num_instances "
                                  f"({s.num_instances}): {option} {name} draws batch_size / num_instances "
                                  f"identities of num_instances images each")
        # torchreid's domain and dataset samplers split a batch evenly over sampler.num_cams cameras or
        # sampler.num_datasets datasets (0 or less: all of them, whose number only the data know).
        for sampler, key in (("RandomDomainSampler", "num_cams"), ("RandomDatasetSampler", "num_datasets")):
            if name == sampler and s[key] > 0 and batch % s[key]:
                raise ConfigError(f"train.batch_size ({batch}) must be a multiple of sampler.{key} ({s[key]}) "
                                  f"for {option} {name}")


def check_config(cfg: CN, accepted: Accepted) -> None:
    """Checks the merged config against what torchreid accepts, before anything is built.

    Args:
        cfg: the merged config (frozen or not; it is not changed).
        accepted: the names torchreid accepts now (after ``register()``).

    Raises:
        ConfigError: the first option torchreid would refuse later, named with its value and what it takes:
            a dataset of ``data.sources``/``data.targets`` (with a "did you mean"), the sampler and the batch sizes
            it needs, ``loss.name``, ``train.optim``, ``train.lr_scheduler``, ``data.height``/``data.width``,
            ``teacher.on_stale``.
    """
    _datasets(cfg, accepted)
    _positive("data.height", cfg.data.height)
    _positive("data.width", cfg.data.width)
    _positive("test.batch_size", cfg.test.batch_size)
    _one_of("loss.name", cfg.loss.name, LOSSES, "loss")
    _one_of("train.optim", cfg.train.optim, accepted.optimizers, "optimiser")
    _one_of("train.lr_scheduler", cfg.train.lr_scheduler, accepted.schedulers, "scheduler")
    # Read only when a cache turns out stale, which can be an hour into labelling: refused before anything runs.
    _one_of("teacher.on_stale", cfg.teacher.on_stale, STALE_POLICIES, "stale policy")
    if not cfg.test.evaluate:  # an evaluation-only run draws no training batch (train_net gives it no sampler)
        _sampler(cfg, accepted)

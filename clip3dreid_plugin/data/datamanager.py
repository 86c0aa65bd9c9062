"""A torchreid ``ImageDataManager`` that keeps clothes ids through multi-source training.

torchreid's own manager concatenates sources with ``Dataset.__add__``, which unpacks exactly four
fields and therefore drops (or crashes on) the clothes id. This manager builds every dataset
through torchreid's registry, converts each to :class:`datasets_ext.base.ClothesImageDataset`
and concatenates with the clothes-aware ``__add__``. Everything downstream (transforms,
samplers, loaders, ``test_loader``/``test_dataset`` dicts) is torchreid's.
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import Dict, Tuple

import torch
import torchreid

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.data.samplers import ShardSampler, build_train_sampler
from datasets_ext.base import ClothesImageDataset, DatasetLayoutError

logger = logging.getLogger(__name__)

__all__ = ["ClothesImageDataManager", "ClothesVideoDataManager", "as_clothes_dataset"]


def as_clothes_dataset(ds) -> ClothesImageDataset:
    """Returns ``ds`` as a :class:`ClothesImageDataset` (torchreid datasets get one outfit per id)."""
    if isinstance(ds, ClothesImageDataset):
        return ds
    out = ClothesImageDataset(
        ds.train,
        ds.query,
        ds.gallery,
        transform=ds.transform,
        k_tfm=ds.k_tfm,
        mode=ds.mode,
        combineall=False,
        verbose=False,
    )
    out.eval_protocols = getattr(ds, "eval_protocols", ("general",))
    out.camera_rule = getattr(ds, "camera_rule", "camera index (torchreid loader)")
    return out


class ClothesImageDataManager(torchreid.data.ImageDataManager):
    """Image data manager whose items carry ``clothes_id``.

    Accepts the keyword arguments of ``torchreid.data.ImageDataManager`` plus:

    Args:
        pin_memory: pin host memory when training on CUDA.
        persistent_workers: keep the training loader's workers alive across epochs (only when workers > 0; the
            query and gallery loaders start theirs at each evaluation).
        train_sampler_fn: optional ``fn(data_source, batch_size) -> Sampler`` building the training sampler
            (the trainer's ``build_sampler``: ``train_sampler`` made distributed under ``torchrun``); None: the
            one-process sampler ``train_sampler`` (:func:`~clip3dreid_plugin.data.samplers.build_train_sampler`).
        eval_shard: ``(rank, world_size)``; each rank then extracts features of items
            ``rank::world_size`` of every query/gallery set (gathered back in order by the engine).
    """

    data_type = "image"

    def __init__(
        self,
        root: str = "",
        sources=None,
        targets=None,
        height: int = 256,
        width: int = 128,
        transforms="random_flip",
        k_tfm: int = 1,
        norm_mean=None,
        norm_std=None,
        use_gpu: bool = True,
        split_id: int = 0,
        combineall: bool = False,
        load_train_targets: bool = False,
        batch_size_train: int = 32,
        batch_size_test: int = 32,
        workers: int = 4,
        num_instances: int = 4,
        num_cams: int = 1,
        num_datasets: int = 1,
        train_sampler: str = "RandomSampler",
        train_sampler_t: str = "RandomSampler",
        cuhk03_labeled: bool = False,
        cuhk03_classic_split: bool = False,
        market1501_500k: bool = False,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        train_sampler_fn=None,
        eval_shard: Tuple[int, int] = (0, 1),
    ):
        # Transforms, sources/targets normalisation and use_gpu come from torchreid's base class.
        torchreid.data.datamanager.DataManager.__init__(
            self,
            sources=sources,
            targets=targets,
            height=height,
            width=width,
            transforms=transforms,
            norm_mean=norm_mean,
            norm_std=norm_std,
            use_gpu=use_gpu,
        )
        if load_train_targets:
            raise ConfigError("data.load_train_targets is not supported by the clothes-aware data manager")
        if not osp.isdir(root):
            # torchreid would otherwise try to download some datasets into it and hang offline.
            raise DatasetLayoutError(f"data.root '{root}' does not exist or is not a folder")
        self.batch_size_train = batch_size_train
        self.workers = workers
        self._loader_kw = dict(num_workers=workers, pin_memory=bool(pin_memory and self.use_gpu))
        # Kept alive for the training loader only, which runs every epoch: each query and gallery loader runs once per
        # evaluation, and alive they would hold `workers` processes apiece (per rank) between evaluations.
        self._train_persistent = bool(persistent_workers and workers > 0)
        ds_kw = dict(
            root=root,
            split_id=split_id,
            cuhk03_labeled=cuhk03_labeled,
            cuhk03_classic_split=cuhk03_classic_split,
            market1501_500k=market1501_500k,
        )

        self.k_tfm = k_tfm
        trainsets = [
            self._init_dataset(name, transform=self.transform_tr, mode="train", combineall=combineall, **ds_kw)
            for name in self.sources
        ]
        trainset = trainsets[0]
        for other in trainsets[1:]:
            trainset = trainset + other
        self.train_set = trainset
        self._num_train_pids = trainset.num_train_pids
        self._num_train_cams = trainset.num_train_cams
        self._num_train_clothes = trainset.num_train_clothes

        if train_sampler_fn is not None:
            sampler = train_sampler_fn(trainset.train, batch_size_train)
        else:  # one process: torchreid's sampler of that name
            sampler = build_train_sampler(trainset.train, train_sampler, batch_size_train, num_instances=num_instances,
                                          num_cams=num_cams, num_datasets=num_datasets)
        self.train_loader = torch.utils.data.DataLoader(
            trainset, sampler=sampler, batch_size=batch_size_train, shuffle=False, drop_last=True,
            persistent_workers=self._train_persistent, **self._loader_kw,
        )
        self.train_loader_t = None

        self.test_loader: Dict[str, Dict[str, torch.utils.data.DataLoader]] = {}
        self.test_dataset: Dict[str, Dict[str, list]] = {}
        self.eval_protocols: Dict[str, Tuple[str, ...]] = {}
        self.camera_rules: Dict[str, str] = {}
        for name in self.targets:
            sets = {}
            for mode in ("query", "gallery"):
                sets[mode] = self._init_dataset(name, transform=self.transform_te, mode=mode, combineall=combineall,
                                                test=True, **ds_kw)
            self.test_loader[name] = {
                mode: torch.utils.data.DataLoader(
                    ds, batch_size=batch_size_test, shuffle=False, drop_last=False,
                    sampler=ShardSampler(len(ds), *eval_shard) if eval_shard[1] > 1 else None, **self._loader_kw
                )
                for mode, ds in sets.items()
            }
            self.test_dataset[name] = {"query": sets["query"].query, "gallery": sets["gallery"].gallery}
            self.eval_protocols[name] = tuple(sets["query"].eval_protocols)
            self.camera_rules[name] = sets["query"].camera_rule
        self._log_summary()

    def _init_dataset(self, name: str, test: bool = False, **kw):
        """Builds one split of dataset ``name`` through torchreid's registry, as a clothes-aware dataset."""
        ds = torchreid.data.datasets.init_image_dataset(name, k_tfm=1 if test else self.k_tfm, verbose=False, **kw)
        return as_clothes_dataset(ds)

    @property
    def num_train_clothes(self) -> int:
        """Number of distinct training outfits (after multi-source offsetting)."""
        return self._num_train_clothes

    def _log_summary(self) -> None:
        logger.info(
            "data: sources=%s targets=%s | train ids=%d %s=%d clothes=%d cams=%d | batch=%d",
            self.sources, self.targets, self.num_train_pids, "tracklets" if self.data_type == "video" else "images",
            len(self.train_set), self.num_train_clothes, self.num_train_cams, self.batch_size_train,
        )
        for name in self.targets:
            logger.info(
                "  test %s: query=%d gallery=%d protocols=%s camera rule: %s", name,
                len(self.test_dataset[name]["query"]), len(self.test_dataset[name]["gallery"]),
                ",".join(self.eval_protocols[name]), self.camera_rules[name],
            )


class ClothesVideoDataManager(ClothesImageDataManager):
    """Video counterpart: tracklets of ``seq_len`` frames from a clothes-aware video dataset (CCVID).

    Args:
        seq_len: frames per tracklet sample.
        sample_method: torchreid's frame sampling for training (``evenly``/``random``/``all``); test
            tracklets are always sampled ``evenly``.
        **kwargs: as :class:`ClothesImageDataManager`.
    """

    data_type = "video"

    def __init__(self, seq_len: int = 15, sample_method: str = "evenly", **kwargs):
        self.seq_len, self.sample_method = seq_len, sample_method
        super().__init__(**kwargs)

    def _init_dataset(self, name: str, test: bool = False, **kw):
        for key in ("cuhk03_labeled", "cuhk03_classic_split", "market1501_500k"):
            kw.pop(key, None)
        ds = torchreid.data.datasets.init_video_dataset(
            name, seq_len=self.seq_len, sample_method="evenly" if test else self.sample_method, verbose=False, **kw)
        if not hasattr(ds, "num_train_clothes"):
            raise ConfigError(f"video dataset '{name}' has no clothes-aware loader (use ccvid)")
        return ds

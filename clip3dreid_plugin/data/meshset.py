"""Synthetic body-mesh images for the 3D regularisation term (Design 3).

``SyntheticMeshDataset`` reads a set written by ``clip3dreid-render-meshset`` (images plus one
``meta.npz``). ``build_synthetic_stream`` turns it into an endless iterator of batches sized so that
synthetic images make up ``body.synthetic_ratio`` of every training batch.
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import Dict, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode as CN

from clip3dreid_plugin.body.genders import GENDER_IDS  # re-exported: the old home of the ids
from clip3dreid_plugin.body.meshset_plan import read_synthetic_meta
from clip3dreid_plugin.utils.distributed import get_rank
from clip3dreid_plugin.config.loader import ConfigError
from datasets_ext.image_io import read_image

logger = logging.getLogger(__name__)

__all__ = ["SyntheticMeshDataset", "SyntheticStream", "build_synthetic_stream", "check_synthetic_set",
           "synthetic_batch_size", "synthetic_set_description", "synthetic_stream", "GENDER_IDS"]


class SyntheticMeshDataset(Dataset):
    """Rendered synthetic bodies with their true shape and descriptors.

    Args:
        folder: the set's folder (holds ``meta.npz`` and the images it lists).
        transform: the student's training transform (PIL -> tensor).

    Items: ``{'img': [3,H,W], 'labels': LongTensor [16], 'betas': FloatTensor [10], 'gender': int}``.
    """

    def __init__(self, folder: str, transform=None):
        meta = read_synthetic_meta(folder)
        base = folder if osp.isdir(folder) else osp.dirname(folder)
        self.paths = [osp.join(base, str(f)) for f in meta["files"]]
        if not self.paths:
            raise ConfigError(f"synthetic set '{folder}' lists no images; render it with clip3dreid-render-meshset")
        self.labels = torch.as_tensor(np.asarray(meta["labels"], dtype=np.int64))
        self.betas = torch.as_tensor(np.asarray(meta["betas"], dtype=np.float32))
        self.genders = torch.as_tensor([GENDER_IDS[str(g)] for g in meta["gender"]])
        self.transform = transform
        if not meta.get("complete", True):
            logger.warning("synthetic set %s is incomplete (%d images rendered so far)", folder, len(self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        img = read_image(self.paths[i])
        if self.transform is not None:
            img = self.transform(img)
        return {"img": img, "labels": self.labels[i], "betas": self.betas[i], "gender": self.genders[i]}


def synthetic_set_description(meta: Dict) -> Dict[str, object]:
    """What a set's metadata says it is, under the names of the ``body.*`` keys (``size`` is ``[H, W]``)."""
    subject = np.asarray(meta["subject"]).reshape(-1)
    genders = np.asarray(meta["gender"]).reshape(-1).astype(str)
    subjects, first, per_subject = np.unique(subject, return_index=True, return_counts=True)
    return {"num_female": int((genders[first] == "female").sum()), "num_male": int((genders[first] == "male").sum()),
            "poses_per_subject": int(per_subject.max()) if len(subjects) else 0, "seed": int(meta["seed"]),
            "beta_sigma": float(meta["sigma"]), "size": [int(v) for v in np.asarray(meta["image_size"])]}


def check_synthetic_set(cfg: CN, folder: str) -> None:
    """Refuses a rendered set that is not the one the ``body.*`` keys (and ``data.height/width``) describe.

    A study row naming ``body.synthetic_dir`` of another size would otherwise train on the wrong set and be credited
    with the size it names.

    Raises:
        ConfigError: one line naming the folder and every mismatching key with both values.
    """
    try:
        got = synthetic_set_description(read_synthetic_meta(folder))
    except (FileNotFoundError, KeyError) as err:
        raise ConfigError(f"body.check_set: synthetic set '{folder}' has no readable metadata ({err})") from None
    b = cfg.body
    want = {"num_female": int(b.num_female), "num_male": int(b.num_male),
            "poses_per_subject": int(b.poses_per_subject), "seed": int(b.seed), "beta_sigma": float(b.beta_sigma),
            "size": [int(cfg.data.height), int(cfg.data.width)]}
    bad = [k for k in want if (abs(want[k] - got[k]) > 1e-9 if k == "beta_sigma" else want[k] != got[k])]
    if bad:
        names = ", ".join(f"{'data.height/width' if k == 'size' else 'body.' + k} {want[k]} (set: {got[k]})"
                          for k in bad)
        raise ConfigError(f"body.check_set: synthetic set '{folder}' does not match {names}; render it with these "
                          "keys or set them to the set's")


def synthetic_batch_size(real_batch: int, ratio: float) -> int:
    """Synthetic images per step so that they are ``ratio`` of the mixed batch (at least 1)."""
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"body.synthetic_ratio must be in (0, 1), got {ratio}")
    return max(1, int(round(real_batch * ratio / (1.0 - ratio))))


class SyntheticStream:
    """Endless shuffled batches of a synthetic set, one stream per rank, re-seeded every training epoch.

    The shuffle and the workers' augmentation seeds come from ``(seed, rank, epoch)``: under ``torchrun`` every rank
    draws its own bodies (W ranks would otherwise average W copies of one batch), and a resumed run draws what an
    uninterrupted one would from the epoch it resumes at.

    Args:
        dataset: the :class:`SyntheticMeshDataset`.
        batch_size: synthetic images per step.
        seed: the run's seed.
        rank: this process's rank.
        workers: data-loader workers.
        persistent_workers: keep them alive across passes over the set (the stream feeds every training step).
        pin_memory: pin the batches, so that their copy to a GPU does not wait (``runtime.pin_memory`` on CUDA).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, rank: int = 0, workers: int = 0,
                 pin_memory: bool = False, persistent_workers: bool = True):
        self.seed, self.rank = int(seed), int(rank)
        self._gen = torch.Generator()
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) >= batch_size,
                                 num_workers=workers, generator=self._gen,
                                 persistent_workers=persistent_workers and workers > 0,
                                 pin_memory=pin_memory)
        self.set_epoch(0)

    @property
    def genders(self) -> torch.Tensor:
        """The gender ids of the whole set ``[n]``."""
        return self.loader.dataset.genders

    def set_epoch(self, epoch: int) -> None:
        """Restarts the stream with the shuffle of ``(seed, rank, epoch)``."""
        state = np.random.SeedSequence([self.seed, self.rank, int(epoch)]).generate_state(2, dtype=np.uint32)
        self._gen.manual_seed(int(state[0]) << 32 | int(state[1]))
        self._batches = self._forever()

    def _forever(self) -> Iterator[dict]:
        while True:
            yield from self.loader

    def __iter__(self) -> "SyntheticStream":
        return self

    def __next__(self) -> dict:
        return next(self._batches)


def synthetic_stream(folder: str, transform, batch_size: int, seed: int = 0, workers: int = 0,
                     rank: int = 0, pin_memory: bool = False, persistent_workers: bool = True) -> SyntheticStream:
    """The :class:`SyntheticStream` of the set in ``folder`` (the engine's ``synthetic`` argument).

    Args:
        folder: a set written by ``clip3dreid-render-meshset``.
        transform: the student's training transform (``datamanager.transform_tr``).
        batch_size: synthetic images per step (see :func:`synthetic_batch_size`).
        seed: shuffle seed.
        workers: data-loader workers.
        rank: this process's rank under ``torch.distributed`` (each rank draws its own batches).
        pin_memory: pin the batches (training on CUDA).
        persistent_workers: keep the workers alive across passes (``runtime.persistent_workers``).

    Yields:
        ``{'img': [b,3,H,W], 'labels': [b,16], 'betas': [b,10], 'gender': [b]}``.
    """
    ds = SyntheticMeshDataset(folder, transform=transform)
    logger.info("synthetic meshes: %d images from %s, %d per step", len(ds), folder, batch_size)
    return SyntheticStream(ds, batch_size, seed=seed, rank=rank, workers=workers, pin_memory=pin_memory,
                           persistent_workers=persistent_workers)


def build_synthetic_stream(cfg: CN, datamanager) -> Iterator[dict]:
    """:func:`synthetic_stream` of ``cfg.body.synthetic_dir``, sized by ``cfg.body.synthetic_ratio``, pinned like the
    data manager's loaders (``runtime.pin_memory`` on a CUDA run)."""
    if not cfg.body.synthetic_dir:
        raise ConfigError("loss.clip3dreid.use_3d needs body.synthetic_dir (render one with "
                          "clip3dreid-render-meshset)")
    # Video batches are trained on as their frames, so the real part of a step is batch_size x seq_len images.
    if cfg.body.check_set:
        check_synthetic_set(cfg, cfg.body.synthetic_dir)
    real = cfg.train.batch_size * (cfg.video.seq_len if cfg.data.type == "video" else 1)
    bs = synthetic_batch_size(real, cfg.body.synthetic_ratio)
    logger.info("synthetic ratio %.2f of each step", cfg.body.synthetic_ratio)
    pin = bool(cfg.runtime.pin_memory and getattr(datamanager, "use_gpu", False))
    return synthetic_stream(cfg.body.synthetic_dir, datamanager.transform_tr, bs, seed=cfg.train.seed,
                            workers=cfg.data.workers, rank=get_rank(), pin_memory=pin,
                            persistent_workers=cfg.runtime.persistent_workers)

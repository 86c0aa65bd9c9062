"""Clothes-aware torchreid ``VideoDataset``: items ``(frame_paths, pid, camid, dsetid, clothes_id)``.

torchreid's ``VideoDataset.__getitem__`` and ``Dataset.__add__``/``combine_all`` unpack exactly
four fields, and its frame reader retries forever on a corrupt file. This class re-implements
them for five fields and reads frames with the fail-fast
:func:`datasets_ext.image_io.read_image`.
"""
from __future__ import annotations

import logging
from typing import List, Optional

import numpy as np
import torch
import torchreid

from datasets_ext.base import (ClothesImageDataset, DatasetLayoutError, added_train, keep_test_protocols,
                              to_clothes_items)
from datasets_ext.image_io import read_image

logger = logging.getLogger(__name__)

__all__ = ["ClothesVideoDataset", "sample_frame_indices"]


def sample_frame_indices(num_frames: int, seq_len: int, method: str,
                         rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Indices of the frames fed to the model for one tracklet (torchreid's three methods).

    Args:
        num_frames: frames in the tracklet (>= 1).
        seq_len: frames wanted.
        method: ``'evenly'`` (every ``num_frames // seq_len``-th frame from 0; short tracklets are
            padded with the last frame), ``'random'`` (sorted random subset, with replacement when
            the tracklet is short) or ``'all'`` (every frame; use batch size 1).
        rng: random generator for ``'random'`` (numpy's global state when None).

    Raises:
        ValueError: unknown ``method``.
    """
    if method == "all":
        return np.arange(num_frames)
    if method == "random":
        choice = rng.choice if rng is not None else np.random.choice
        return np.sort(choice(num_frames, size=seq_len, replace=num_frames < seq_len))
    if method == "evenly":
        if num_frames >= seq_len:
            return np.arange(seq_len) * (num_frames // seq_len)
        return np.concatenate([np.arange(num_frames), np.full(seq_len - num_frames, num_frames - 1)])
    raise ValueError(f"unknown sample_method '{method}' (use evenly, random or all)")


class ClothesVideoDataset(torchreid.data.VideoDataset):
    """torchreid ``VideoDataset`` whose items carry a clothes id.

    Subclasses build ``train``/``query``/``gallery`` lists of 5-tuples whose first field is a
    tuple of frame paths and call ``super().__init__(train, query, gallery, **kwargs)``. As in
    torchreid, ``transform`` is required (it must return a tensor per frame).

    Class attributes:
        eval_protocols: protocols the dataset defines, a subset of ``('general', 'sc', 'cc')``.
        camera_rule: one line documenting what the camid field means at test time.
    """

    eval_protocols = ("general",)
    camera_rule = "camera index"

    def __init__(self, train, query, gallery, seq_len: int = 15, sample_method: str = "evenly", **kwargs):
        name = type(self).__name__
        for split, data in (("train", train), ("query", query), ("gallery", gallery)):
            if len(data) == 0:
                raise DatasetLayoutError(f"{name}: the {split} split is empty (no tracklets were found)")
        train, query, gallery = (to_clothes_items(d) for d in (train, query, gallery))
        super().__init__(train, query, gallery, seq_len=seq_len, sample_method=sample_method, **kwargs)
        self.num_train_clothes = self.get_num_clothes(self.train)

    # The five-field logic is the image base class's; only the item type differs.
    get_num_clothes = staticmethod(ClothesImageDataset.get_num_clothes)
    combine_all = ClothesImageDataset.combine_all
    stats = ClothesImageDataset.stats
    stats_table = ClothesImageDataset.stats_table
    show_summary = ClothesImageDataset.show_summary

    def __getitem__(self, index: int) -> dict:
        img_paths, pid, camid, dsetid, clothes_id = self.data[index]
        indices = sample_frame_indices(len(img_paths), self.seq_len, self.sample_method)
        frames: List[torch.Tensor] = []
        for i in indices:
            img = read_image(img_paths[int(i)])
            if self.transform is not None:
                img = self.transform(img)
            frames.append(img)
        return {
            "img": torch.stack(frames, dim=0),
            "pid": pid,
            "camid": camid,
            "dsetid": dsetid,
            "clothes_id": clothes_id,
            # The sampled frames' paths, for the teacher cache (collated as seq_len lists of batch paths).
            "impath": tuple(img_paths[int(i)] for i in indices),
        }

    def __add__(self, other):
        """Concatenates train sets, offsetting pids, cams, dataset ids and clothes ids; keeps this test split."""
        out = ClothesVideoDataset(added_train(self, other), self.query, self.gallery, seq_len=self.seq_len,
                                  sample_method=self.sample_method, transform=self.transform, mode=self.mode,
                                  combineall=False, verbose=False)
        return keep_test_protocols(self, out)


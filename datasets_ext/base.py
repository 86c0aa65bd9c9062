"""Clothes-aware dataset base class shared by every loader in ``datasets_ext``.

Items are ``(img_path, pid, camid, dsetid, clothes_id)``: torchreid's 4-field contract plus a
fifth field. torchreid's own ``Dataset.__add__``/``combine_all`` unpack exactly four fields, so
this class re-implements both for five fields, and ``__getitem__`` adds ``clothes_id`` to the
item dict. torchreid's samplers only read fields 1-3, so they work unchanged.
"""
from __future__ import annotations

import copy
import logging
import os.path as osp
from typing import Iterable, List, Sequence, Tuple

import torchreid

from datasets_ext.errors import DatasetError
from datasets_ext.image_io import read_image

logger = logging.getLogger(__name__)

Item = Tuple[str, int, int, int, int]

__all__ = ["ClothesImageDataset", "DatasetLayoutError", "relabel", "label_splits", "check_dir", "to_clothes_items",
           "added_train", "keep_test_protocols"]


class DatasetLayoutError(DatasetError, RuntimeError):
    """Raised when a dataset root does not match the expected on-disk layout."""


def check_dir(path: str, what: str) -> None:
    """Raises ``DatasetLayoutError`` naming ``path`` when the folder is missing."""
    if not osp.isdir(path):
        raise DatasetLayoutError(f"{what} not found: '{path}' does not exist or is not a folder")


def relabel(values: Iterable) -> dict:
    """Maps sorted unique values to 0..n-1."""
    return {v: i for i, v in enumerate(sorted(set(values)))}


def label_splits(train_raw: Sequence[tuple], query_raw: Sequence[tuple], gallery_raw: Sequence[tuple]):
    """Raw rows ``(path, pid, camid, clothes_key)`` -> 5-field train/query/gallery items.

    Train pids, camids and clothes keys are relabelled to 0..n-1; query and gallery keep raw pids and
    camids, and their clothes keys are relabelled jointly over query + gallery.
    """
    pid2label = relabel(r[1] for r in train_raw)
    cam2label = relabel(r[2] for r in train_raw)
    clothes2label = relabel(r[3] for r in train_raw)
    train = [(p, pid2label[pid], cam2label[cam], 0, clothes2label[c]) for p, pid, cam, c in train_raw]
    test_clothes = relabel(r[3] for r in list(query_raw) + list(gallery_raw))
    query = [(p, pid, cam, 0, test_clothes[c]) for p, pid, cam, c in query_raw]
    gallery = [(p, pid, cam, 0, test_clothes[c]) for p, pid, cam, c in gallery_raw]
    return train, query, gallery


def to_clothes_items(data: Sequence[tuple]) -> List[Item]:
    """Converts torchreid 3/4-field items to 5-field items.

    Datasets without clothes labels (Market-1501, MSMT17, ...) get one outfit per identity,
    the convention of the cloth-changing literature, so CC mode finds no valid query there.
    """
    out = []
    for it in data:
        if len(it) == 5:
            out.append(tuple(it))
        elif len(it) == 4:
            out.append((it[0], it[1], it[2], it[3], it[1]))
        elif len(it) == 3:
            out.append((it[0], it[1], it[2], 0, it[1]))
        else:
            raise ValueError(f"dataset item must have 3-5 fields, got {len(it)}: {it!r}")
    return out


def added_train(first, other) -> List[Item]:
    """``first``'s train items followed by ``other``'s, whose pids, cams, dataset ids and clothes ids are offset.

    The one rule for summing datasets, image or video (torchreid's data manager sums its sources).
    """
    train = copy.deepcopy(first.train)
    n_clothes = ClothesImageDataset.get_num_clothes(first.train)
    for path, pid, camid, dsetid, clothes in to_clothes_items(other.train):
        train.append((path, pid + first.num_train_pids, camid + first.num_train_cams, dsetid + first.num_datasets,
                      clothes + n_clothes))
    return train


def keep_test_protocols(first, out):
    """A sum keeps ``first``'s query and gallery, hence its protocols and camera rule; returns ``out``."""
    out.eval_protocols = first.eval_protocols
    out.camera_rule = first.camera_rule
    return out


class ClothesImageDataset(torchreid.data.ImageDataset):
    """torchreid ``ImageDataset`` whose items carry a clothes id.

    Subclasses build ``train``/``query``/``gallery`` lists of 5-tuples and call
    ``super().__init__(train, query, gallery, **kwargs)``.

    Class attributes:
        eval_protocols: protocols the dataset defines, a subset of ``('general', 'sc', 'cc')``.
        camera_rule: one line documenting what the camid field means at test time.
    """

    eval_protocols: Tuple[str, ...] = ("general",)
    camera_rule: str = "camera index"

    def __init__(self, train, query, gallery, **kwargs):
        name = type(self).__name__
        for split, data in (("train", train), ("query", query), ("gallery", gallery)):
            if len(data) == 0:
                raise DatasetLayoutError(f"{name}: the {split} split is empty (no images were found)")
        train, query, gallery = (to_clothes_items(d) for d in (train, query, gallery))
        super().__init__(train, query, gallery, **kwargs)
        self.num_train_clothes = self.get_num_clothes(self.train)

    # ------------------------------------------------------------------ stats
    @staticmethod
    def get_num_clothes(data: Sequence[Item]) -> int:
        return len({it[4] for it in data})

    # ------------------------------------------------------------- torchreid API
    def __getitem__(self, index: int) -> dict:
        img_path, pid, camid, dsetid, clothes_id = self.data[index]
        img = read_image(img_path)
        if self.transform is not None:
            img = self._transform_image(self.transform, self.k_tfm, img)
        return {
            "img": img,
            "pid": pid,
            "camid": camid,
            "impath": img_path,
            "dsetid": dsetid,
            "clothes_id": clothes_id,
        }

    def __add__(self, other):
        """Concatenates train sets, offsetting pids, cams, dataset ids and clothes ids; keeps this test split."""
        out = ClothesImageDataset(added_train(self, other), self.query, self.gallery, transform=self.transform,
                                  k_tfm=self.k_tfm, mode=self.mode, combineall=False, verbose=False)
        return keep_test_protocols(self, out)

    def combine_all(self) -> None:
        """Adds query and gallery (relabelled) to the train set, keeping clothes ids."""
        if self._train_only:
            return
        combined = copy.deepcopy(self.train)
        test = [it for it in self.query + self.gallery if it[1] not in self._junk_pids]
        pid2label = relabel(it[1] for it in test)
        clothes2label = relabel(it[4] for it in test)
        n_clothes = self.get_num_clothes(self.train)
        for img_path, pid, camid, dsetid, clothes in test:
            combined.append(
                (img_path, pid2label[pid] + self.num_train_pids, camid, dsetid, clothes2label[clothes] + n_clothes)
            )
        self.train = combined
        self.num_train_pids = self.get_num_pids(self.train)
        self.num_train_clothes = self.get_num_clothes(self.train)

    def show_summary(self) -> None:
        logger.info("=> Loaded %s\n%s", type(self).__name__, self.stats_table())

    def stats(self) -> dict:
        """Returns per-split counts: ids, images, clothes and cameras."""
        out = {}
        for split in ("train", "query", "gallery"):
            data = getattr(self, split)
            out[split] = {
                "ids": len({it[1] for it in data}),
                "images": len(data),
                "clothes": len({it[4] for it in data}),
                "cameras": len({it[2] for it in data}),
            }
        return out

    def stats_table(self) -> str:
        rows = ["  subset   | # ids | # images | # clothes | # cameras"]
        for split, s in self.stats().items():
            rows.append(f"  {split:8s} | {s['ids']:5d} | {s['images']:8d} | {s['clothes']:9d} | {s['cameras']:9d}")
        return "\n".join(rows)

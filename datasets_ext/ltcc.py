"""LTCC (Qian et al., ACCV 2020): long-term cloth-changing ReID, 152 ids, 12 cameras."""
from __future__ import annotations

import logging
import os.path as osp
import re
from typing import List, Tuple

from datasets_ext.base import ClothesImageDataset, label_splits
from datasets_ext.common import BadNames, ensure_nonempty, image_files, resolve_dataset_dir, stem

logger = logging.getLogger(__name__)

__all__ = ["LTCC"]

# <pid>_<clothes>_c<cam>_<frame>, matched on the file stem only: a reference loader searched the
# full path and mis-parsed roots such as ``/data/my_c1_sets``.
_NAME = re.compile(r"(\d+)_(\d+)_c(\d+)_(\d+)")

Raw = Tuple[str, int, int, Tuple[int, int]]


class LTCC(ClothesImageDataset):
    """LTCC.

    Layout: ``LTCC_ReID/{train,query,test}/<pid>_<clothes>_c<cam>_<frame>.png`` (``test`` is the
    gallery). The clothes key is ``(pid, clothes)``; camid is ``cam - 1``.

    Train pids, camids and clothes are relabelled to ``0..n-1``; query/gallery keep raw pids and
    ``cam - 1``, and their clothes are relabelled jointly over query + gallery.

    A file whose name does not match the pattern raises :class:`DatasetLayoutError` naming it
    (every released LTCC file follows it).

    Args:
        root: folder holding ``LTCC_ReID/`` (or the ``LTCC_ReID`` folder itself).
        **kwargs: forwarded to torchreid's ``ImageDataset`` (transform, mode, combineall, ...).
    """

    dataset_dir = "LTCC_ReID"
    eval_protocols = ("general", "cc")
    camera_rule = "camid = c<cam> - 1 from the file name (12 cameras)"
    # Layout knobs shared with loaders of the same naming scheme (synthcc).
    display_name = "LTCC"
    gallery_folder = "test"
    name_hint = "'<pid>_<clothes>_c<cam>_<frame>.png'"

    def __init__(self, root: str = "", **kwargs):
        cls = type(self)
        self.dataset_dir = resolve_dataset_dir(root, cls.dataset_dir, ("train", "query", cls.gallery_folder),
                                               cls.display_name)
        self.root = osp.dirname(self.dataset_dir)
        self.train_dir = osp.join(self.dataset_dir, "train")
        self.query_dir = osp.join(self.dataset_dir, "query")
        self.gallery_dir = osp.join(self.dataset_dir, cls.gallery_folder)

        bad = BadNames(cls.display_name, cls.name_hint, policy="raise")
        train_raw = self._parse(self.train_dir, bad)
        query_raw = self._parse(self.query_dir, bad)
        gallery_raw = self._parse(self.gallery_dir, bad)

        train, query, gallery = label_splits(train_raw, query_raw, gallery_raw)
        super().__init__(train, query, gallery, **kwargs)

    @classmethod
    def _parse(cls, folder: str, bad: BadNames) -> List[Raw]:
        out: List[Raw] = []
        paths = image_files(folder, f"{cls.display_name} split folder '{osp.basename(folder)}'")
        for path in paths:
            m = _NAME.fullmatch(stem(path))
            if m is None:
                bad.bad(path)
                continue
            pid, clothes, cam = int(m.group(1)), int(m.group(2)), int(m.group(3))
            out.append((path, pid, cam - 1, (pid, clothes)))
        ensure_nonempty(out, osp.basename(folder), cls.display_name, folder)
        return out

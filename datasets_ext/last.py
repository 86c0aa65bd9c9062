"""LaST (Shu et al., TCSVT 2022): large-scale spatio-temporal ReID from movies, no camera labels."""
from __future__ import annotations

import logging
import os
import os.path as osp
import re
from typing import List, Tuple

from datasets_ext.base import ClothesImageDataset, check_dir, relabel
from datasets_ext.common import BadNames, ensure_nonempty, image_files, resolve_dataset_dir, stem

logger = logging.getLogger(__name__)

__all__ = ["LaST"]

_PID = re.compile(r"-?\d+")

# (path, pid, last name field)
Raw = Tuple[str, int, str]


class LaST(ClothesImageDataset):
    """LaST, test split.

    Layout: ``last/train/<pid>/*.jpg``, ``last/test/query/*.jpg``, ``last/test/gallery/<pid>/*.jpg``
    (``last/val`` is not used). File names split on ``_``: the first field is the pid, the last
    field the outfit index (labelled in train only).

    * Train: pids relabelled; clothes key ``(pid, last field)`` relabelled; camid 0 for every image
      (LaST has no camera labels, and a per-image camera would create ~71k train "cameras").
    * Test: raw pids; every image gets its own camid (query ``0..nq-1``, gallery ``nq..``, in sorted
      path order), so nothing is junk; clothes key = pid (no test clothes labels), relabelled
      jointly over query + gallery. Protocol: general only.

    Files whose names have no numeric first field are skipped and reported in one WARNING per
    folder (count + first example): LaST is a large crawled release and a stray file should not
    block training.

    Args:
        root: folder holding ``last/`` (or that folder itself).
        **kwargs: forwarded to torchreid's ``ImageDataset``.
    """

    dataset_dir = "last"
    eval_protocols = ("general",)
    camera_rule = "no camera labels: train camid 0; every query/gallery image has its own camid (nothing is junk)"

    def __init__(self, root: str = "", **kwargs):
        self.dataset_dir = resolve_dataset_dir(root, type(self).dataset_dir, ("train", "test"), "LaST")
        self.train_dir = osp.join(self.dataset_dir, "train")
        self.query_dir = osp.join(self.dataset_dir, "test", "query")
        self.gallery_dir = osp.join(self.dataset_dir, "test", "gallery")

        bad = BadNames("LaST", "'<pid>_..._<outfit>.jpg'", policy="skip")
        train_raw = self._parse(self._nested_images(self.train_dir, "train"), bad, self.train_dir)
        query_raw = self._parse(image_files(self.query_dir, "LaST test/query folder"), bad, self.query_dir)
        gallery_raw = self._parse(self._nested_images(self.gallery_dir, "test/gallery"), bad, self.gallery_dir)

        pid2label = relabel(r[1] for r in train_raw)
        clothes2label = relabel((pid, field) for _, pid, field in train_raw)
        train = [(p, pid2label[pid], 0, 0, clothes2label[(pid, f)]) for p, pid, f in train_raw]

        test_clothes = relabel(r[1] for r in query_raw + gallery_raw)
        nq = len(query_raw)
        query = [(p, pid, i, 0, test_clothes[pid]) for i, (p, pid, _) in enumerate(query_raw)]
        gallery = [(p, pid, nq + i, 0, test_clothes[pid]) for i, (p, pid, _) in enumerate(gallery_raw)]
        super().__init__(train, query, gallery, **kwargs)

    @staticmethod
    def _nested_images(folder: str, what: str) -> List[str]:
        """Images one level down (``folder/<pid>/*.jpg``), sorted."""
        check_dir(folder, f"LaST {what} folder")
        out: List[str] = []
        for name in sorted(os.listdir(folder)):
            sub = osp.join(folder, name)
            if osp.isdir(sub):
                out.extend(image_files(sub, "LaST identity folder"))
        return out

    @staticmethod
    def _parse(paths: List[str], bad: BadNames, folder: str) -> List[Raw]:
        out: List[Raw] = []
        for path in paths:
            fields = stem(path).split("_")
            if len(fields) < 2 or not _PID.fullmatch(fields[0]):
                bad.bad(path)
                continue
            out.append((path, int(fields[0]), fields[-1]))
        bad.report(folder)
        ensure_nonempty(out, osp.basename(folder), "LaST", folder)
        return out

"""VC-Clothes (Wang et al., CVPRW 2020): synthetic cloth-changing ReID, 4 cameras.

Cameras 2 and 3 see a person in the same outfit, camera 4 in a different one. The reference
protocol (CAL) reports three settings, registered here as three names:

* ``vcclothes``: all cameras; protocols general, SC and CC (clothes-aware evaluator).
* ``vcclothes_sc``: query and gallery restricted to cameras 2 and 3, general protocol.
* ``vcclothes_cc``: query and gallery restricted to cameras 3 and 4, general protocol.

The camera subsets cannot be expressed with one query/gallery pair, hence the extra names.
"""
from __future__ import annotations

import logging
import os.path as osp
import re
from typing import FrozenSet, List, Optional, Tuple

from datasets_ext.base import ClothesImageDataset, relabel
from datasets_ext.common import BadNames, ensure_nonempty, image_files, resolve_dataset_dir, stem

logger = logging.getLogger(__name__)

__all__ = ["VCClothes", "VCClothesSameClothes", "VCClothesClothesChanging"]

_NAME = re.compile(r"(\d+)-(\d+)-(\d+)-(\d+)")

# (path, pid, raw camera 1..4, clothes key)
Raw = Tuple[str, int, int, Tuple[int, int]]


class VCClothes(ClothesImageDataset):
    """VC-Clothes, all cameras.

    Layout: ``VC-Clothes/{train,query,gallery}/<pid>-<cam>-<clothes>-<frame>.jpg``; clothes key
    ``(pid, clothes)``; camid = ``cam - 1``. Train pids, camids and clothes are relabelled; query/
    gallery keep raw pids and ``cam - 1``, clothes relabelled jointly over query + gallery (after
    the camera subset, if any).

    A file whose name does not match the pattern raises :class:`DatasetLayoutError` naming it.

    Args:
        root: folder holding ``VC-Clothes/`` (or that folder itself).
        **kwargs: forwarded to torchreid's ``ImageDataset``.
    """

    dataset_dir = "VC-Clothes"
    eval_protocols = ("general", "sc", "cc")
    camera_rule = "camid = <cam> - 1 from the file name; all 4 cameras"
    # Raw camera numbers (1..4) kept in query/gallery; None keeps all.
    test_cameras: Optional[FrozenSet[int]] = None

    def __init__(self, root: str = "", **kwargs):
        self.dataset_dir = resolve_dataset_dir(root, type(self).dataset_dir, ("train", "query", "gallery"),
                                               "VC-Clothes")
        self.train_dir = osp.join(self.dataset_dir, "train")
        self.query_dir = osp.join(self.dataset_dir, "query")
        self.gallery_dir = osp.join(self.dataset_dir, "gallery")

        bad = BadNames("VC-Clothes", "'<pid>-<cam>-<clothes>-<frame>.jpg'", policy="raise")
        train_raw = self._parse(self.train_dir, bad)
        query_raw = self._subset(self._parse(self.query_dir, bad), self.query_dir)
        gallery_raw = self._subset(self._parse(self.gallery_dir, bad), self.gallery_dir)

        pid2label = relabel(r[1] for r in train_raw)
        cam2label = relabel(r[2] for r in train_raw)
        clothes2label = relabel(r[3] for r in train_raw)
        train = [(p, pid2label[pid], cam2label[cam], 0, clothes2label[c]) for p, pid, cam, c in train_raw]

        test_clothes = relabel(r[3] for r in query_raw + gallery_raw)
        query = [(p, pid, cam - 1, 0, test_clothes[c]) for p, pid, cam, c in query_raw]
        gallery = [(p, pid, cam - 1, 0, test_clothes[c]) for p, pid, cam, c in gallery_raw]
        super().__init__(train, query, gallery, **kwargs)

    def _subset(self, rows: List[Raw], folder: str) -> List[Raw]:
        cams = type(self).test_cameras
        if cams is None:
            return rows
        out = [r for r in rows if r[2] in cams]
        ensure_nonempty(out, f"{osp.basename(folder)} (cameras {sorted(cams)})", "VC-Clothes", folder)
        return out

    @staticmethod
    def _parse(folder: str, bad: BadNames) -> List[Raw]:
        out: List[Raw] = []
        for path in image_files(folder, f"VC-Clothes split folder '{osp.basename(folder)}'"):
            m = _NAME.fullmatch(stem(path))
            if m is None:
                bad.bad(path)
                continue
            pid, cam, clothes = int(m.group(1)), int(m.group(2)), int(m.group(3))
            out.append((path, pid, cam, (pid, clothes)))
        ensure_nonempty(out, osp.basename(folder), "VC-Clothes", folder)
        return out


class VCClothesSameClothes(VCClothes):
    """VC-Clothes SC setting: query and gallery from cameras 2 and 3 only; general protocol."""

    eval_protocols = ("general",)
    camera_rule = "camid = <cam> - 1; query/gallery only cameras 2,3 (same clothes): general = SC setting"
    test_cameras = frozenset({2, 3})


class VCClothesClothesChanging(VCClothes):
    """VC-Clothes CC setting: query and gallery from cameras 3 and 4 only; general protocol."""

    eval_protocols = ("general",)
    camera_rule = "camid = <cam> - 1; query/gallery only cameras 3,4 (changed clothes): general = CC setting"
    test_cameras = frozenset({3, 4})

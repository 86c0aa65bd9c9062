"""DeepChange (Xu & Zhu, ICCV 2023): 1,121 ids, 178,407 boxes, 17 cameras over 12 months."""
from __future__ import annotations

import logging
import os
import os.path as osp
import re
from typing import List, Tuple

from datasets_ext.base import ClothesImageDataset, DatasetLayoutError, check_dir, relabel
from datasets_ext.common import BadNames, ensure_nonempty, read_list, resolve_dataset_dir, stem

logger = logging.getLogger(__name__)

__all__ = ["DeepChange"]

_PID = re.compile(r"P(\d+)")
_CAM = re.compile(r"C(\d+)")

# (path, pid, camera, tracklet id, clothes key)
Raw = Tuple[str, int, int, int, Tuple[int, str]]


class DeepChange(ClothesImageDataset):
    """DeepChange, test split (``test-set-query`` vs ``test-set-gallery``).

    Layout: ``DeepChangeDataset/<split>/<image>`` for split in ``train-set``, ``test-set-query``,
    ``test-set-gallery`` (``val-set-*`` are not used), each with a list
    ``DeepChangeDataset/<split>-bbox.txt`` of lines ``<file name>,<tracklet id>``. The list is
    authoritative: every listed file must exist.

    File names split on ``_`` into ``P<pid>``, ``C<cam>``, then a date-like field; the clothes key
    is ``(pid, date field)`` as in the public loader.

    Cameras: train camids are the ``C<cam>`` field relabelled to ``0..n-1``. For query and gallery
    the camid slot holds the TRACKLET id, as the reference protocol does: a gallery image is junk
    only when it has the query's pid and tracklet, so true matches from the same camera but a
    different tracklet count. Protocol: general only.

    A malformed list line or file name, or a listed file that is missing, raises
    :class:`DatasetLayoutError` naming the list file and line or the file.

    Args:
        root: folder holding ``DeepChangeDataset/`` (or that folder itself).
        **kwargs: forwarded to torchreid's ``ImageDataset``.
    """

    dataset_dir = "DeepChangeDataset"
    eval_protocols = ("general",)
    camera_rule = (
        "train: camid = C<cam> field; query/gallery: camid = tracklet id from the *-bbox.txt list "
        "(junk = same pid & same tracklet)"
    )

    def __init__(self, root: str = "", **kwargs):
        self.dataset_dir = resolve_dataset_dir(
            root, type(self).dataset_dir, ("train-set", "train-set-bbox.txt"), "DeepChange"
        )
        train_raw = self._parse("train-set")
        query_raw = self._parse("test-set-query")
        gallery_raw = self._parse("test-set-gallery")

        pid2label = relabel(r[1] for r in train_raw)
        cam2label = relabel(r[2] for r in train_raw)
        clothes2label = relabel(r[4] for r in train_raw)
        train = [(p, pid2label[pid], cam2label[cam], 0, clothes2label[c]) for p, pid, cam, _, c in train_raw]

        test_clothes = relabel(r[4] for r in query_raw + gallery_raw)
        query = [(p, pid, tid, 0, test_clothes[c]) for p, pid, _, tid, c in query_raw]
        gallery = [(p, pid, tid, 0, test_clothes[c]) for p, pid, _, tid, c in gallery_raw]
        super().__init__(train, query, gallery, **kwargs)

    def _parse(self, split: str) -> List[Raw]:
        folder = osp.join(self.dataset_dir, split)
        list_path = osp.join(self.dataset_dir, f"{split}-bbox.txt")
        check_dir(folder, f"DeepChange split folder '{split}'")
        lines = read_list(list_path, f"DeepChange list of '{split}'")
        present = set(os.listdir(folder))
        bad = BadNames("DeepChange", "'P<pid>_C<cam>_<date>_....jpg'", policy="raise")
        out: List[Raw] = []
        missing: List[str] = []
        for lineno, line in lines:
            parts = line.split(",")
            if len(parts) != 2 or not parts[1].strip().lstrip("-").isdigit():
                raise DatasetLayoutError(
                    f"DeepChange: {list_path}:{lineno}: expected '<file name>,<tracklet id>', got {line!r}"
                )
            fname, tracklet = osp.basename(parts[0].strip()), int(parts[1])
            path = osp.join(folder, fname)
            fields = stem(fname).split("_")
            if len(fields) < 3 or not _PID.fullmatch(fields[0]) or not _CAM.fullmatch(fields[1]) or not fields[2]:
                bad.bad(f"{path} (listed at {list_path}:{lineno})")
                continue
            if fname not in present:
                missing.append(path)
                continue
            pid, cam = int(fields[0][1:]), int(fields[1][1:])
            out.append((path, pid, cam, tracklet, (pid, fields[2])))
        if missing:
            raise DatasetLayoutError(
                f"DeepChange: {len(missing)} file(s) listed in '{list_path}' are missing; first: '{missing[0]}'"
            )
        ensure_nonempty(out, split, "DeepChange", list_path)
        return out

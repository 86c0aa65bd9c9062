"""PRCC (Yang et al., TPAMI 2019): 221 ids, cameras A/B/C, moderate clothes change (A/B vs C)."""
from __future__ import annotations

import logging
import os
import os.path as osp
from typing import List, Tuple

from datasets_ext.base import ClothesImageDataset, DatasetLayoutError, check_dir, relabel
from datasets_ext.common import BadNames, ensure_nonempty, image_files, resolve_dataset_dir

logger = logging.getLogger(__name__)

__all__ = ["PRCC"]

_CAMS = {"A": 0, "B": 1, "C": 2}

Raw = Tuple[str, int, int, Tuple[int, str]]


def _clothes_key(pid: int, cam_letter: str) -> Tuple[int, str]:
    # Cameras A and B see the same outfit of a person, camera C a different one.
    return (pid, "AB" if cam_letter in ("A", "B") else "C")


def _pid_dirs(folder: str) -> List[Tuple[int, str]]:
    """``(pid, path)`` for every identity folder of ``folder``; a non-numeric folder name raises."""
    out = []
    for name in sorted(os.listdir(folder)):
        path = osp.join(folder, name)
        if not osp.isdir(path):
            continue
        if not name.isdigit():
            raise DatasetLayoutError(f"PRCC: identity folder name is not a number: '{path}'")
        out.append((int(name), path))
    return out


class PRCC(ClothesImageDataset):
    """PRCC, with the same-clothes and clothes-changing queries in ONE query set.

    Layout: ``prcc/rgb/train/<pid>/<A|B|C>_*.jpg`` (camera = first letter of the file name) and
    ``prcc/rgb/test/{A,B,C}/<pid>/*.jpg`` (camera = folder). ``rgb/val`` is not used.

    Test mapping (``camid`` 0/1/2 = A/B/C, raw pids):

    * gallery = test A;
    * query = test B (same clothes id as A) + test C (a different clothes id).

    Query and gallery never share a camera, so with the clothes-aware evaluator
    ``SC`` mode (good = same pid & same clothes, junk = same pid & different clothes) scores exactly
    the B-vs-A protocol (C queries have no valid match and are skipped), and ``CC`` mode scores
    exactly C-vs-A (B queries have only same-clothes matches, which are junk, and are skipped).
    ``general`` mixes B and C queries; the paper numbers are ``SC``/``CC``.

    A train file whose name does not start with A/B/C, or a non-numeric identity folder, raises
    :class:`DatasetLayoutError` naming it.

    Args:
        root: folder holding ``prcc/`` (or the ``prcc`` folder itself).
        **kwargs: forwarded to torchreid's ``ImageDataset``.
    """

    dataset_dir = "prcc"
    eval_protocols = ("general", "sc", "cc")
    camera_rule = "camid 0/1/2 = camera A/B/C; gallery = A, query = B (same clothes) + C (changed clothes)"

    def __init__(self, root: str = "", **kwargs):
        self.dataset_dir = resolve_dataset_dir(root, type(self).dataset_dir, ("rgb",), "PRCC")
        self.train_dir = osp.join(self.dataset_dir, "rgb", "train")
        self.test_dir = osp.join(self.dataset_dir, "rgb", "test")
        check_dir(self.train_dir, "PRCC train folder")
        check_dir(self.test_dir, "PRCC test folder")

        train_raw = self._parse_train(self.train_dir)
        test_raw = {cam: self._parse_test(osp.join(self.test_dir, cam), cam) for cam in ("A", "B", "C")}

        pid2label = relabel(r[1] for r in train_raw)
        cam2label = relabel(r[2] for r in train_raw)
        clothes2label = relabel(r[3] for r in train_raw)
        train = [(p, pid2label[pid], cam2label[cam], 0, clothes2label[c]) for p, pid, cam, c in train_raw]

        test_clothes = relabel(r[3] for rows in test_raw.values() for r in rows)

        def items(rows: List[Raw]) -> list:
            return [(p, pid, cam, 0, test_clothes[c]) for p, pid, cam, c in rows]

        query = items(test_raw["B"]) + items(test_raw["C"])
        gallery = items(test_raw["A"])
        super().__init__(train, query, gallery, **kwargs)

    @staticmethod
    def _parse_train(folder: str) -> List[Raw]:
        bad = BadNames("PRCC", "'<A|B|C>_*.jpg' (first letter = camera)", policy="raise")
        out: List[Raw] = []
        for pid, pdir in _pid_dirs(folder):
            for path in image_files(pdir, "PRCC identity folder"):
                letter = osp.basename(path)[0]
                if letter not in _CAMS:
                    bad.bad(path, "first letter is not a camera A/B/C")
                    continue
                out.append((path, pid, _CAMS[letter], _clothes_key(pid, letter)))
        ensure_nonempty(out, "train", "PRCC", folder)
        return out

    @staticmethod
    def _parse_test(folder: str, cam: str) -> List[Raw]:
        check_dir(folder, f"PRCC test camera folder '{cam}'")
        out: List[Raw] = [
            (path, pid, _CAMS[cam], _clothes_key(pid, cam))
            for pid, pdir in _pid_dirs(folder)
            for path in image_files(pdir, "PRCC identity folder")
        ]
        ensure_nonempty(out, f"test {cam}", "PRCC", folder)
        return out

"""CCVID (Gu et al., CVPR 2022): cloth-changing video ReID, 226 ids, 2,856 tracklets."""
from __future__ import annotations

import logging
import os.path as osp
import re
from typing import List, Tuple

from datasets_ext.base import DatasetLayoutError, check_dir, label_splits
from datasets_ext.common import ensure_nonempty, image_files, read_list, resolve_dataset_dir
from datasets_ext.video_base import ClothesVideoDataset

logger = logging.getLogger(__name__)

__all__ = ["CCVID"]

_SESSION = re.compile(r"session(\d+)")
_TRACKLET = re.compile(r"(\d+)_(\d+)")

# (frame paths, pid, camera, clothes key)
Raw = Tuple[Tuple[str, ...], int, int, Tuple[int, str]]


class CCVID(ClothesVideoDataset):
    """CCVID, tracklet level.

    Layout: ``CCVID/session{1,2,3}/<pid>_<cam>/<frames>.jpg`` plus ``CCVID/{train,query,gallery}.txt``
    with lines ``session1/001_01 001 u0_l0_s0_c0_a0`` (tracklet folder, pid, clothes label).

    * camid = ``<cam>`` of the tracklet folder name, + 12 for ``session3`` (its cameras are
      different physical cameras); train camids are then relabelled to ``0..n-1``.
    * The clothes label is only meaningful per person, so the clothes key is ``(pid, label)``;
      relabelled over train, and jointly over query + gallery.
    * Train pids relabelled; query/gallery keep raw pids.

    Each item holds all frames of a tracklet; ``seq_len``/``sample_method`` (torchreid's video
    data manager arguments) choose the frames fed to the model. Protocols: general and CC.

    A malformed list line, a tracklet folder missing or without images, or a folder name that is
    not ``session<k>/<pid>_<cam>`` raises :class:`DatasetLayoutError` naming the list file and line.

    Args:
        root: folder holding ``CCVID/`` (or that folder itself).
        **kwargs: forwarded to torchreid's ``VideoDataset`` (transform, seq_len, sample_method, ...).
    """

    dataset_dir = "CCVID"
    eval_protocols = ("general", "cc")
    camera_rule = "camid = <cam> of the tracklet folder '<pid>_<cam>' (+12 for session3)"

    def __init__(self, root: str = "", **kwargs):
        self.dataset_dir = resolve_dataset_dir(root, type(self).dataset_dir, ("train.txt", "session1"), "CCVID")
        check_dir(self.dataset_dir, "CCVID folder")
        train_raw = self._parse("train")
        query_raw = self._parse("query")
        gallery_raw = self._parse("gallery")

        train, query, gallery = label_splits(train_raw, query_raw, gallery_raw)
        super().__init__(train, query, gallery, **kwargs)

    def _parse(self, split: str) -> List[Raw]:
        list_path = osp.join(self.dataset_dir, f"{split}.txt")
        out: List[Raw] = []
        for lineno, line in read_list(list_path, f"CCVID {split} list"):
            where = f"{list_path}:{lineno}"
            parts = line.split()
            if len(parts) != 3 or not parts[1].isdigit():
                raise DatasetLayoutError(
                    f"CCVID: {where}: expected '<session>/<pid>_<cam> <pid> <clothes label>', got {line!r}"
                )
            rel, pid_s, label = parts
            session, tracklet = osp.split(osp.normpath(rel))
            m_session, m_tracklet = _SESSION.fullmatch(session), _TRACKLET.fullmatch(tracklet)
            if m_session is None or m_tracklet is None:
                raise DatasetLayoutError(f"CCVID: {where}: tracklet path is not 'session<k>/<pid>_<cam>': {rel!r}")
            folder = osp.join(self.dataset_dir, session, tracklet)
            if not osp.isdir(folder):
                raise DatasetLayoutError(f"CCVID: {where}: tracklet folder not found: '{folder}'")
            frames = tuple(image_files(folder, "CCVID tracklet folder"))
            if not frames:
                raise DatasetLayoutError(f"CCVID: {where}: tracklet folder has no images: '{folder}'")
            cam = int(m_tracklet.group(2)) + (12 if session == "session3" else 0)
            pid = int(pid_s)
            out.append((frames, pid, cam, (pid, label)))
        ensure_nonempty(out, split, "CCVID", list_path)
        return out

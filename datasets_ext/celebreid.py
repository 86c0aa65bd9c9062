"""Celeb-reID and Celeb-reID-light (Huang et al., TCSVT/IJCNN 2019) and their face-blurred variants.

Celeb-reID has no clothes labels: every image of a celebrity is, by construction, a different
outfit (images were collected from the web at different events). Two consequences:

* clothes id = one id per image. A clothes classifier over these labels is meaningless (each
  class has one image), but no outfit is wrongly merged; the protocol is ``general`` only, so
  evaluation never reads them.
* cameras do not exist either. Published loaders disagree; this module uses the rule of the
  official Celeb-reID code: camid = first digit of ``k`` in ``<pid>_<k>_<z>.jpg``, minus 1.
  Under the general protocol a gallery image of the query's person whose ``k`` starts with the
  same digit is therefore junk. Report this rule with any number computed here.
"""
from __future__ import annotations

import logging
import os.path as osp
import re
from typing import List, Tuple

from datasets_ext.base import ClothesImageDataset, relabel
from datasets_ext.common import BadNames, ensure_nonempty, image_files, resolve_dataset_dir, stem

logger = logging.getLogger(__name__)

__all__ = [
    "CelebStyleDataset",
    "CelebReID",
    "CelebReIDLight",
    "CelebReIDBlur",
    "CelebReIDLightBlur",
    "CELEB_CAMERA_RULE",
]

_NAME = re.compile(r"(\d+)_(\d+)_(\d+)")

CELEB_CAMERA_RULE = (
    "camid = first digit of k in '<pid>_<k>_<z>.jpg' minus 1 (official Celeb-reID code); "
    "clothes id unique per image"
)

Raw = Tuple[str, int, int]


class CelebStyleDataset(ClothesImageDataset):
    """Base for datasets laid out as ``<dataset_dir>/{train,query,gallery}/<pid>_<k>_<z>.jpg``.

    Subclasses set ``dataset_dir``, ``display_name`` and ``bad_name_policy``.

    Train pids and camids are relabelled to ``0..n-1``; query/gallery keep raw pids and the raw
    camera rule. Clothes ids are unique per image (train: ``0..n_train-1``; query + gallery:
    relabelled jointly).

    Args:
        root: folder holding ``dataset_dir`` (or that folder itself).
        **kwargs: forwarded to torchreid's ``ImageDataset``.
    """

    dataset_dir = ""
    display_name = ""
    bad_name_policy = "raise"
    eval_protocols = ("general",)
    camera_rule = CELEB_CAMERA_RULE

    def __init__(self, root: str = "", **kwargs):
        cls = type(self)
        name = cls.display_name or cls.__name__
        self.dataset_dir = resolve_dataset_dir(root, cls.dataset_dir, ("train", "query", "gallery"), name)
        self.train_dir = osp.join(self.dataset_dir, "train")
        self.query_dir = osp.join(self.dataset_dir, "query")
        self.gallery_dir = osp.join(self.dataset_dir, "gallery")

        bad = BadNames(name, "'<pid>_<k>_<z>.jpg'", policy=cls.bad_name_policy)
        train_raw = self._parse(self.train_dir, bad, name)
        query_raw = self._parse(self.query_dir, bad, name)
        gallery_raw = self._parse(self.gallery_dir, bad, name)

        pid2label = relabel(r[1] for r in train_raw)
        cam2label = relabel(r[2] for r in train_raw)
        # Paths are unique, so keying clothes by path gives one outfit per image.
        train = [(p, pid2label[pid], cam2label[cam], 0, i) for i, (p, pid, cam) in enumerate(train_raw)]
        test = query_raw + gallery_raw
        clothes = {p: i for i, (p, _, _) in enumerate(test)}
        query = [(p, pid, cam, 0, clothes[p]) for p, pid, cam in query_raw]
        gallery = [(p, pid, cam, 0, clothes[p]) for p, pid, cam in gallery_raw]
        super().__init__(train, query, gallery, **kwargs)

    @staticmethod
    def _parse(folder: str, bad: BadNames, name: str) -> List[Raw]:
        out: List[Raw] = []
        for path in image_files(folder, f"{name} split folder '{osp.basename(folder)}'"):
            m = _NAME.fullmatch(stem(path))
            if m is None:
                bad.bad(path)
                continue
            k = m.group(2)
            out.append((path, int(m.group(1)), int(k[0]) - 1))
        bad.report(folder)
        ensure_nonempty(out, osp.basename(folder), name, folder)
        return out


class CelebReID(CelebStyleDataset):
    """Celeb-reID: ``Celeb-reID/{train,query,gallery}/<pid>_<k>_<z>.jpg``; general protocol only.

    Bad file names raise :class:`DatasetLayoutError` naming the file.
    """

    dataset_dir = "Celeb-reID"
    display_name = "Celeb-reID"


class CelebReIDLight(CelebStyleDataset):
    """Celeb-reID-light: ``Celeb-reID-light/{train,query,gallery}/``; general protocol only."""

    dataset_dir = "Celeb-reID-light"
    display_name = "Celeb-reID-light"


class CelebReIDBlur(CelebStyleDataset):
    """Celeb-reID with faces Gaussian-blurred: ``Celeb-reID-blur/`` (same layout and names).

    Build it with ``clip3dreid-blur-faces --src ROOT/Celeb-reID --dst ROOT/Celeb-reID-blur``.
    """

    dataset_dir = "Celeb-reID-blur"
    display_name = "Celeb-reID-blur"


class CelebReIDLightBlur(CelebStyleDataset):
    """Celeb-reID-light with faces Gaussian-blurred: ``Celeb-reID-light-blur/`` (same layout)."""

    dataset_dir = "Celeb-reID-light-blur"
    display_name = "Celeb-reID-light-blur"

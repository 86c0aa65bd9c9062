"""Helpers shared by the loaders in ``datasets_ext``: root resolution and bad-name policies."""
from __future__ import annotations

import logging
import os
import os.path as osp
from typing import Iterable, List, Sequence, Tuple

from datasets_ext.base import DatasetLayoutError, check_dir

logger = logging.getLogger(__name__)

IMAGE_EXTS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")

__all__ = [
    "IMAGE_EXTS", "resolve_dataset_dir", "BadNames", "image_files", "require_file", "stem", "read_list",
    "ensure_nonempty",
]


def resolve_dataset_dir(root: str, dataset_dir: str, markers: Sequence[str], name: str) -> str:
    """Returns the dataset folder: ``root/dataset_dir``, or ``root`` itself when it is that folder.

    ``root`` is taken to be the dataset folder when its basename equals ``dataset_dir`` or when it
    holds all of ``markers`` (e.g. ``train``, ``query``, ``test``) directly, so ``--root data``,
    ``--root data/LTCC_ReID`` and a renamed copy such as ``--root data/ltcc_v2`` all work.

    Args:
        root: folder given by the user (``~`` is expanded; empty means the current folder).
        dataset_dir: the dataset's folder name under ``root``.
        markers: entries that the dataset folder itself contains.
        name: dataset name for the error message.

    Raises:
        DatasetLayoutError: neither candidate exists; the message names the expected path.
    """
    root = osp.abspath(osp.expanduser(root or "."))
    nested = osp.join(root, dataset_dir)
    if osp.isdir(nested):
        return nested
    if osp.isdir(root) and (
        osp.basename(root.rstrip(os.sep)) == dataset_dir or all(osp.exists(osp.join(root, m)) for m in markers)
    ):
        return root
    raise DatasetLayoutError(
        f"{name}: dataset folder not found: '{nested}' does not exist "
        f"(root may also point at the dataset folder itself, which must contain {list(markers)})"
    )


def stem(path: str) -> str:
    """File name without folder and extension (``a/b/001_1_c1_2.png`` -> ``001_1_c1_2``)."""
    return osp.splitext(osp.basename(path))[0]


def image_files(folder: str, what: str) -> List[str]:
    """Sorted image paths directly inside ``folder``.

    Raises:
        DatasetLayoutError: ``folder`` is missing (the message names it and ``what``).
    """
    check_dir(folder, what)
    return sorted(osp.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS))


def require_file(path: str, what: str) -> None:
    """Raises ``DatasetLayoutError`` naming ``path`` when the file is missing."""
    if not osp.isfile(path):
        raise DatasetLayoutError(f"{what} not found: '{path}' does not exist or is not a file")


class BadNames:
    """Collects files whose names do not match a dataset's pattern and applies its policy.

    ``policy='raise'`` raises at the first bad name. ``policy='skip'`` drops it and, in
    :meth:`report`, logs one WARNING with the count and the first example, so nothing is
    dropped silently.

    Args:
        dataset: dataset name used in messages.
        pattern: human-readable description of the expected name.
        policy: ``'raise'`` or ``'skip'``.
    """

    def __init__(self, dataset: str, pattern: str, policy: str = "raise"):
        if policy not in ("raise", "skip"):
            raise ValueError(f"policy must be 'raise' or 'skip', got {policy!r}")
        self.dataset = dataset
        self.pattern = pattern
        self.policy = policy
        self.skipped: List[str] = []

    def bad(self, path: str, reason: str = "") -> None:
        """Handles one bad file name (raises or records it)."""
        if self.policy == "raise":
            why = f" ({reason})" if reason else ""
            raise DatasetLayoutError(
                f"{self.dataset}: file name does not match the expected pattern {self.pattern}{why}: '{path}'"
            )
        self.skipped.append(path)

    def report(self, where: str) -> int:
        """Logs the skipped files of ``where`` (one WARNING) and resets; returns how many were skipped."""
        n = len(self.skipped)
        if n:
            logger.warning(
                "%s: skipped %d file(s) in %s whose names do not match %s; first: '%s'",
                self.dataset, n, where, self.pattern, self.skipped[0],
            )
        self.skipped = []
        return n


def read_list(path: str, what: str) -> List[Tuple[int, str]]:
    """Non-empty, stripped lines of a text list with their 1-based line numbers.

    Raises:
        DatasetLayoutError: the list file is missing.
    """
    require_file(path, what)
    with open(path, "r", encoding="utf-8") as f:
        return [(i, line.strip()) for i, line in enumerate(f, 1) if line.strip()]


def ensure_nonempty(items: Iterable, split: str, name: str, where: str) -> None:
    """Raises ``DatasetLayoutError`` naming ``where`` when a split produced no item."""
    if not list(items):
        raise DatasetLayoutError(f"{name}: the {split} split is empty (no images found in '{where}')")

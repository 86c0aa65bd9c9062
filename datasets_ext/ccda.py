"""CCDA (Liu et al., ICCV 2023, 3DInvarReID): 100 subjects, 1,555 images, general protocol.

The authors published no loader. This one follows the only public loader (by a co-author):
``CCDA/{train,query,gallery}/<pid>_<k>_<z>.jpg`` with Celeb-reID-style names, and uses the same
camera rule as :mod:`datasets_ext.celebreid` (first digit of ``k`` minus 1) and one clothes id per
image. The CLIP3DReID paper evaluates CCDA with a model trained on Celeb-reID.
"""
from __future__ import annotations

from datasets_ext.celebreid import CelebStyleDataset

__all__ = ["CCDA"]


class CCDA(CelebStyleDataset):
    """CCDA: ``CCDA/{train,query,gallery}/<pid>_<k>_<z>.jpg``; general protocol only.

    Because the release format is not documented by the authors, files whose names do not match
    the pattern are skipped and reported in one WARNING per folder (count + first example)
    instead of raising.

    Args:
        root: folder holding ``CCDA/`` (or the ``CCDA`` folder itself).
        **kwargs: forwarded to torchreid's ``ImageDataset``.
    """

    dataset_dir = "CCDA"
    display_name = "CCDA"
    bad_name_policy = "skip"

"""Cloth-changing ReID datasets for torchreid (registered by ``clip3dreid_plugin.register()``).

Importing this package changes nothing in torchreid; the tables below are read by ``register()``.
See ``datasets_ext/README.md`` for layouts, protocols and camera rules.
"""
from __future__ import annotations

from typing import Dict, Type

from datasets_ext.ccda import CCDA
from datasets_ext.ccvid import CCVID
from datasets_ext.celebreid import CelebReID, CelebReIDBlur, CelebReIDLight, CelebReIDLightBlur
from datasets_ext.deepchange import DeepChange
from datasets_ext.last import LaST
from datasets_ext.ltcc import LTCC
from datasets_ext.manifest import ManifestDataset
from datasets_ext.prcc import PRCC
from datasets_ext.synthcc import SynthCC
from datasets_ext.vcclothes import VCClothes, VCClothesClothesChanging, VCClothesSameClothes

IMAGE_DATASETS: Dict[str, Type] = {
    "ltcc": LTCC,
    "prcc": PRCC,
    "celebreid": CelebReID,
    "celebreid_light": CelebReIDLight,
    "celebreid_blur": CelebReIDBlur,
    "celebreid_light_blur": CelebReIDLightBlur,
    "deepchange": DeepChange,
    "ccda": CCDA,
    "vcclothes": VCClothes,
    "vcclothes_sc": VCClothesSameClothes,
    "vcclothes_cc": VCClothesClothesChanging,
    "last": LaST,
    "synthcc": SynthCC,
    "ccmanifest": ManifestDataset,
}
VIDEO_DATASETS: Dict[str, Type] = {
    "ccvid": CCVID,
}

__all__ = [
    "IMAGE_DATASETS",
    "VIDEO_DATASETS",
    "CCDA",
    "CCVID",
    "CelebReID",
    "CelebReIDBlur",
    "CelebReIDLight",
    "CelebReIDLightBlur",
    "DeepChange",
    "LaST",
    "LTCC",
    "ManifestDataset",
    "PRCC",
    "SynthCC",
    "VCClothes",
    "VCClothesClothesChanging",
    "VCClothesSameClothes",
]

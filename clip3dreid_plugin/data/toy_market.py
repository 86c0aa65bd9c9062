"""A tiny generated dataset in Market-1501's on-disk layout, for tests and smoke runs.

Each identity has a fixed body colour pair (top/bottom) drawn on a noisy background, so a
model can learn something in a few iterations; torchreid's own ``market1501`` loader reads it.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Dict

import numpy as np
from PIL import Image

__all__ = ["write_toy_market"]


def _person(rng: np.random.Generator, top: np.ndarray, bottom: np.ndarray, h: int, w: int) -> Image.Image:
    img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    x0, x1 = w // 4, 3 * w // 4
    img[h // 8: h // 2, x0:x1] = np.clip(top + rng.normal(0, 10, 3), 0, 255)
    img[h // 2: 7 * h // 8, x0:x1] = np.clip(bottom + rng.normal(0, 10, 3), 0, 255)
    return Image.fromarray(img)


def write_toy_market(root: str, num_train_ids: int = 6, num_test_ids: int = 4, images_per_cam: int = 2,
                     num_cams: int = 3, height: int = 64, width: int = 32, seed: int = 0) -> Dict[str, int]:
    """Writes ``root/market1501/{bounding_box_train,query,bounding_box_test}``.

    Names follow Market-1501: ``<pid:04d>_c<cam>s1_<frame:06d>_00.jpg``. Query gets one image per
    test identity and camera 1; the gallery gets the rest.

    Returns:
        Expected counts: ``{'train': n, 'query': n, 'gallery': n, 'train_ids': n}``.
    """
    rng = np.random.default_rng(seed)
    base = osp.join(root, "market1501")
    dirs = {k: osp.join(base, k) for k in ("bounding_box_train", "query", "bounding_box_test")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    counts = {"train": 0, "query": 0, "gallery": 0, "train_ids": num_train_ids}
    frame = 0
    for pid in range(1, num_train_ids + num_test_ids + 1):
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        for cam in range(1, num_cams + 1):
            for k in range(images_per_cam):
                frame += 1
                name = f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg"
                if pid <= num_train_ids:
                    split = "bounding_box_train"
                    counts["train"] += 1
                elif cam == 1 and k == 0:
                    split = "query"
                    counts["query"] += 1
                else:
                    split = "bounding_box_test"
                    counts["gallery"] += 1
                _person(rng, top, bottom, height, width).save(osp.join(dirs[split], name), quality=95)
    return counts

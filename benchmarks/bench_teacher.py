#!/usr/bin/env python
"""Labelling throughput (images/s) of the frozen CLIP teacher.

Example::

    PYTHONPATH=. python benchmarks/bench_teacher.py                         # ViT-B-32, CPU (+ GPU if present)
    PYTHONPATH=. python benchmarks/bench_teacher.py --model ViT-L-14-quickgelu --batch 16 --json out.json

Stages timed (median seconds per batch over ``--repeats`` runs after one warm-up):

* ``clip_input``: ``encode_clip_input`` + ``label`` on tensors already in CLIP's format (the model alone).
* ``student_batch``: ``encode_images`` + ``label`` on ImageNet-normalised student batches at
  ``--height`` x ``--width`` (online teacher mode: un-normalise, pad-resize, CLIP-normalise, encode).
* ``cache_build``: ``build_teacher_cache`` end to end on ``--num-images`` generated JPEGs (decode,
  open_clip preprocessing, encode, label, write) with ``--workers`` decoding workers; one run.

Weights are random (``--pretrained`` takes a local file): throughput does not depend on the values.
The machine may be shared; compare devices and stages within one run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os.path as osp
import platform
import statistics
import tempfile
import time
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from clip3dreid_plugin.teacher.cache import build_teacher_cache
from clip3dreid_plugin.teacher.clip_teacher import CLIPTeacher

logger = logging.getLogger("bench_teacher")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times: List[float] = []
    for r in range(repeats + 1):  # the first run warms up kernels/allocators and is not timed
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if r > 0:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _write_images(folder: str, n: int, height: int, width: int, seed: int = 0) -> List[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
        p = osp.join(folder, f"{i:05d}.jpg")
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    return paths


def bench_device(model: str, pretrained: Optional[str], device: torch.device, batch: int, height: int, width: int,
                 repeats: int, num_images: int, workers: int) -> List[dict]:
    """Times every stage on ``device``; one row per stage."""
    t0 = time.perf_counter()
    teacher = CLIPTeacher(model, pretrained, device=device)
    build_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    s = teacher.image_size
    clip_x = torch.randn(batch, 3, s[0], s[1], generator=gen).to(device)
    student_x = torch.randn(batch, 3, height, width, generator=gen).to(device)
    rows = []
    common = {"model": model, "device": str(device), "batch": batch, "embed_dim": teacher.embed_dim,
              "teacher_build_s": build_s}
    sec = _median_time(lambda: teacher.label(teacher.encode_clip_input(clip_x)), device, repeats)
    rows.append({**common, "stage": "clip_input", "input": f"{s[0]}x{s[1]}", "sec_per_batch": sec,
                 "images_per_s": batch / sec})
    sec = _median_time(lambda: teacher.label(teacher.encode_images(student_x)), device, repeats)
    rows.append({**common, "stage": "student_batch", "input": f"{height}x{width}", "sec_per_batch": sec,
                 "images_per_s": batch / sec})
    if num_images > 0:
        with tempfile.TemporaryDirectory() as tmp:
            paths = _write_images(tmp, num_images, height, width)
            t0 = time.perf_counter()
            build_teacher_cache(teacher, paths, osp.join(tmp, "cache.pt"), batch_size=batch, progress=False,
                                num_workers=workers, save_every_s=0)
            _sync(device)
            sec = time.perf_counter() - t0
        rows.append({**common, "stage": "cache_build", "input": f"{num_images} jpg {height}x{width}",
                     "sec_per_batch": sec * batch / num_images, "images_per_s": num_images / sec})
    return rows


def markdown_table(rows: Sequence[dict]) -> str:
    lines = ["| model | device | stage | input | batch | median s/batch | images/s |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['device']} | {r['stage']} | {r['input']} | {r['batch']} | "
                     f"{r['sec_per_batch']:.3f} | {r['images_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name, e.g. ViT-L-14-quickgelu")
    parser.add_argument("--pretrained", default=None, help="local weights file (default: random init)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=0, help="also time a cache build on N generated JPEGs")
    parser.add_argument("--workers", type=int, default=0, help="decoding workers of the cache build")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--json", default="", help="also write the rows and environment to this JSON file")
    args = parser.parse_args(argv)
    # Root at WARNING hides open_clip's INFO lines (it logs on the root logger); ours stays at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    # Random weights are intended here; the teacher's warning about them would only be noise.
    logging.getLogger("clip3dreid_plugin.teacher.clip_teacher").setLevel(logging.ERROR)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows: List[dict] = []
    for dev in devices:
        rows += bench_device(args.model, args.pretrained, torch.device(dev), args.batch, args.height, args.width,
                             args.repeats, args.num_images, args.workers)
    table = markdown_table(rows)
    logger.info("teacher throughput (torch %s, %d CPU threads%s):\n%s", torch.__version__, torch.get_num_threads(),
                   f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "", table)
    if args.json:
        env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"env": env, "args": vars(args), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()

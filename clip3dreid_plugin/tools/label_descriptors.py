"""Labels every training image (or video frame) of ``cfg.data.sources`` with the CLIP teacher and writes the cache.

Examples::

    clip3dreid-label --config-file configs/ltcc/clip3dreid_r50_vitl14_384x192.yaml \\
        data.root /data teacher.pretrained /weights/ViT-L-14.pt
    clip3dreid-label --config-file configs/synthcc/clip3dreid_r50_vitb32_128x64.yaml data.root data --report out/labels

One cache file per source dataset goes to ``cfg.teacher.cache_dir`` (see
``clip3dreid_plugin.teacher.cache``); an up-to-date cache is reused, a stale one is rebuilt (or
reported, with ``teacher.on_stale error``), an interrupted run resumes. ``--report OUT_DIR`` also
writes, per dataset, ``<dataset>__labels.csv`` (image path + the chosen phrase of every pair) and
``<dataset>__label_freq.csv`` (how often each phrase of each pair was chosen).
"""
from __future__ import annotations

import csv
import logging
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence

from clip3dreid_plugin.registry import register
from clip3dreid_plugin.tools.common import CLIParser, add_overrides, cli_main, start_cli

logger = logging.getLogger("label_descriptors")


def training_image_paths(name: str, cfg) -> List[str]:
    """Training image paths of dataset ``name`` built exactly as torchreid builds it (after ``register()``).

    For a video dataset these are every frame of every training tracklet: CLIP3DReID trains on frames.
    """
    # torchreid, torch: imported after parsing, so --help and a bad option answer at once
    from clip3dreid_plugin.data.build import build_train_split
    from clip3dreid_plugin.data.frames import item_image_paths

    register()
    ds, _ = build_train_split(name, cfg.data.root, combineall=cfg.data.combineall)
    return item_image_paths(ds.train)


def write_report(cache, out_dir: str, dataset: str, image_paths: Optional[Sequence[str]] = None) -> List[str]:
    """Writes the per-image label CSV and the per-pair frequency CSV; returns their paths.

    Args:
        cache: a :class:`~clip3dreid_plugin.teacher.cache.TeacherCache`.
        out_dir: output folder (created).
        dataset: dataset name used in the file names.
        image_paths: rows to report (default: every cached image).
    """
    os.makedirs(out_dir, exist_ok=True)
    pairs = cache.pairs
    paths = list(cache.paths if image_paths is None else image_paths)
    _, labels = cache.lookup(paths)
    labels_csv = osp.join(out_dir, f"{dataset}__labels.csv")
    with open(labels_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path"] + [f"{a}|{b}" for a, b in pairs])
        for p, row in zip(paths, labels.tolist()):
            w.writerow([p] + [pairs[m][k] for m, k in enumerate(row)])
    freq_csv = osp.join(out_dir, f"{dataset}__label_freq.csv")
    n = len(paths)
    second = labels.sum(dim=0).tolist() if n else [0] * len(pairs)
    with open(freq_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["pair", "first", "second", "count_first", "count_second", "frac_first"])
        for m, (a, b) in enumerate(pairs):
            c2 = int(second[m])
            c1 = n - c2
            w.writerow([m + 1, a, b, c1, c2, f"{c1 / n:.4f}" if n else ""])
    return [labels_csv, freq_csv]


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad config/teacher/cache)."""
    parser = CLIParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default="", help="YAML config (with _BASE_ inheritance)")
    parser.add_argument("--report", default="", metavar="OUT_DIR", help="also write label CSVs to OUT_DIR")
    parser.add_argument("--workers", type=int, default=None, help="image-decoding workers (default data.workers)")
    add_overrides(parser, "config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        start_cli(stream=sys.stderr)
    # After parsing (--help answers at once): utils.runtime and the teacher import torch, torchreid and open_clip.
    from clip3dreid_plugin.utils.runtime import quiet_torchreid_warnings

    quiet_torchreid_warnings()  # before torchreid's first import
    from clip3dreid_plugin.config.loader import load_config
    from clip3dreid_plugin.teacher.cache import build_teacher_cache, cache_file_path
    from clip3dreid_plugin.teacher.source import build_teacher
    from clip3dreid_plugin.utils.runtime import resolve_device

    cfg = load_config(args.config_file or None, args.opts)
    device = resolve_device(cfg.runtime.device)
    teacher = build_teacher(cfg, device)
    logger.info("teacher: %s on %s", teacher.extra_repr(), device)
    workers = cfg.data.workers if args.workers is None else args.workers
    for name in cfg.data.sources:
        paths = training_image_paths(name, cfg)
        cache_path = cache_file_path(cfg.teacher.cache_dir, name, cfg.teacher.name, teacher.weights_label())
        logger.info("%s: %d training images -> %s", name, len(paths), cache_path)
        cache = build_teacher_cache(teacher, paths, cache_path, batch_size=cfg.teacher.batch_size,
                                    on_stale=cfg.teacher.on_stale, progress=cfg.runtime.progress,
                                    num_workers=workers, dataset=name)
        if args.report:
            for out in write_report(cache, args.report, name, paths):
                logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

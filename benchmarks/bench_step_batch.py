#!/usr/bin/env python
"""Seconds per CLIP3DReID training step against the batch size (cached teacher), plus the 3D-term step.

Example::

    PYTHONPATH=. python benchmarks/bench_step_batch.py --batches 16 20 21 24 \\
        --body-model work_dirs/quickstart/body_model --synthetic-dir work_dirs/quickstart/synthetic_meshes

Why: on a CPU the step time of the last-stride-1 student grows faster than the batch, so a step with
``synthetic_ratio`` extra synthetic images costs more than their share. This puts the 3D-term step next to plain
steps of the same total batch. Engines are built as in ``scripts/benchmark.py`` and timed round-robin.
"""
from __future__ import annotations

import argparse
import logging
from typing import Callable, Dict, Optional, Sequence

import torch

logger = logging.getLogger("bench_step_batch")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[16, 20, 21, 24])
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--teacher", default="ViT-B-32-quickgelu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--nchw", action="store_true", help="runtime.channels_last False")
    p.add_argument("--body-model", default="", help="with --synthetic-dir: add the 3D-term step at the first batch")
    p.add_argument("--synthetic-dir", default="")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from clip3dreid_plugin.config.defaults import get_cfg
    from clip3dreid_plugin.teacher.cache import TeacherCache
    from clip3dreid_plugin.teacher.clip_teacher import CLIPTeacher
    from clip3dreid_plugin.teacher.source import CacheTeacherSource
    from clip3dreid_plugin.tools import benchmark as bench

    dev = torch.device("cpu")
    teacher = CLIPTeacher(args.teacher, None, device="cpu")
    cfg = get_cfg()
    cfg.clip3dreid.teacher_dim = teacher.embed_dim
    nhwc = not args.nchw
    rows = [(f"batch {b}", b, False) for b in args.batches]
    stream = shape_loss = None
    if args.body_model and args.synthetic_dir:
        b0 = args.batches[0]
        stream, shape_loss, n_syn = bench._synthetic_3d(args.body_model, args.synthetic_dir, b0, args.height,
                                                        args.width, 0.25, dev)
        rows.append((f"batch {b0} + {n_syn} synthetic (3D term)", b0, True))
    steps: Dict[str, Callable[[], None]] = {}
    for label, bs, with_3d in rows:
        batch = bench._batch(bs, args.height, args.width, 4, dev)
        g = torch.nn.functional.normalize(torch.randn(bs, teacher.embed_dim), dim=1)
        cache = TeacherCache(batch["impath"], g, teacher.label(g).cpu(), teacher.descriptor_text_features().cpu(),
                             {"teacher": args.teacher})
        steps[label] = bench.clip3dreid_step(cfg, 4, batch, CacheTeacherSource(cache), dev, nhwc,
                                             synthetic=stream if with_3d else None, shape_loss=shape_loss)
    out = bench.time_interleaved(steps, args.repeats, args.warmup, dev)
    lines = ["| step | images | s/iter (median) | s per image |", "|---|---|---|---|"]
    for label, bs, with_3d in rows:
        r, n = out[label], bs + (n_syn if with_3d else 0)
        lines.append(f"| {label} | {n} | {r['median_s']:.3f} | {r['median_s'] / n:.3f} |")
    logger.info("\n%s", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Synthetic-body rendering throughput and body-model forward/backward cost.

Example::

    PYTHONPATH=. python benchmarks/bench_render.py
    PYTHONPATH=. python benchmarks/bench_render.py --images 100 --repeats 5 --json out.json

Rendering: images/s of :class:`~clip3dreid_plugin.body.render.MeshRenderer` at 384x192 and 256x128
on the procedural body (default ~1000 vertices, and the 6890-vertex variant), each image a new
posed mesh with a random yaw, as in ``scripts/render_meshset.py`` (posing and PNG encoding are
excluded; they are timed separately as ``pose`` and ``png``). Body model: one L_3D-style step on a
batch of 64, ``canonical_vertices(betas)`` -> squared error -> backward, for the procedural model
and for a 6890-vertex model in SMPL's format (SMPL's vertex count; the cost depends only on the
array sizes, so this stands in for licensed SMPL files). The median over ``--repeats`` timed runs
after one warm-up is reported; the machine may be shared, so compare ratios rather than absolute
numbers.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from clip3dreid_plugin.body.poses import builtin_pose_pool
from clip3dreid_plugin.body.procedural import write_procedural_smpl
from clip3dreid_plugin.body.render import MeshRenderer
from clip3dreid_plugin.body.smpl_io import load_body_model

logger = logging.getLogger("bench_render")


def _median_time(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up (GL programs, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_render(model_root: str, sizes: Sequence[Sequence[int]], images: int, repeats: int) -> List[dict]:
    """Rows of rendering throughput for each (H, W) and the posing/encoding costs."""
    model = load_body_model(model_root, "female")
    pool = torch.as_tensor(builtin_pose_pool())
    rng = np.random.default_rng(0)
    betas = torch.as_tensor(rng.normal(size=(1, 10)), dtype=torch.float32)
    pose_ids = rng.integers(0, len(pool), images)
    with torch.no_grad():
        verts = model.posed_vertices(betas, pool[pose_ids]).numpy()
    yaws = rng.uniform(0, 360, images)
    rows = []
    for h, w in sizes:
        with MeshRenderer(int(h), int(w)) as r:
            def run() -> None:
                for v, yaw in zip(verts, yaws):
                    r.render(v, model.faces, float(yaw))
            sec = _median_time(run, repeats)
            img = r.render(verts[0], model.faces, 0.0)
        rows.append({"what": "render", "size": f"{h}x{w}", "vertices": model.num_vertices,
                     "images_per_s": images / sec, "ms_per_image": 1e3 * sec / images})

        def encode() -> None:
            for _ in range(images):
                Image.fromarray(img).save(io.BytesIO(), format="PNG")
        sec = _median_time(encode, repeats)
        rows.append({"what": "png", "size": f"{h}x{w}", "vertices": model.num_vertices,
                     "images_per_s": images / sec, "ms_per_image": 1e3 * sec / images})

    def pose() -> None:
        with torch.no_grad():
            model.posed_vertices(betas, pool[pose_ids])
    sec = _median_time(pose, repeats)
    rows.append({"what": "pose", "size": "-", "vertices": model.num_vertices, "images_per_s": images / sec,
                 "ms_per_image": 1e3 * sec / images})
    return rows


def bench_body_model(model_root: str, batch: int, repeats: int) -> dict:
    """Median ms of canonical_vertices + MSE + backward on a batch of ``batch`` betas."""
    model = load_body_model(model_root, "neutral")
    target = model.canonical_vertices(torch.randn(batch, 10)).detach()
    pred = torch.randn(batch, 10, requires_grad=True)

    def step() -> None:
        pred.grad = None
        loss = (model.canonical_vertices(pred) - target).square().sum(-1).mean()
        loss.backward()
    sec = _median_time(step, repeats)
    return {"what": "body_model_fwd_bwd", "size": f"batch {batch}", "vertices": model.num_vertices,
            "ms": 1e3 * sec}


def markdown(render_rows: List[dict], model_rows: List[dict]) -> str:
    lines = ["| step | image size | vertices | images/s | ms/image |", "|---|---|---|---|---|"]
    for r in render_rows:
        lines.append(f"| {r['what']} | {r['size']} | {r['vertices']} | {r['images_per_s']:.1f} | "
                     f"{r['ms_per_image']:.2f} |")
    lines += ["", "| body model step | batch | vertices | median ms |", "|---|---|---|---|"]
    for r in model_rows:
        lines.append(f"| canonical_vertices + MSE + backward | {r['size']} | {r['vertices']} | {r['ms']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=60, help="images per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--batch", type=int, default=64, help="body-model batch")
    parser.add_argument("--vertices", type=int, default=1000, help="vertices of the small procedural body")
    parser.add_argument("--json", default="", help="also write the rows and settings to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_grad_enabled(True)
    settings = {"images": args.images, "repeats": args.repeats, "batch": args.batch, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                "gl_platform": os.environ.get("PYOPENGL_PLATFORM", "(auto)")}
    render_rows: List[dict] = []
    model_rows: List[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        small, big = os.path.join(tmp, "small"), os.path.join(tmp, "big")
        write_procedural_smpl(small, num_vertices=args.vertices)
        write_procedural_smpl(big, num_vertices=6890)
        render_rows += bench_render(small, [(384, 192), (256, 128)], args.images, args.repeats)
        render_rows += [r for r in bench_render(big, [(384, 192), (256, 128)], args.images, args.repeats)
                        if r["what"] != "png"]
        model_rows.append(bench_body_model(small, args.batch, max(args.repeats, 10)))
        model_rows.append(bench_body_model(big, args.batch, max(args.repeats, 10)))
    settings["gl_platform"] = os.environ.get("PYOPENGL_PLATFORM", "")
    logger.info("\n%s", markdown(render_rows, model_rows))
    result = {"settings": settings, "render": render_rows, "body_model": model_rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        logger.info("wrote %s", args.json)
    return result


if __name__ == "__main__":
    main()

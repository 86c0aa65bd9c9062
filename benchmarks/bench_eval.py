#!/usr/bin/env python
"""Evaluation time: torchreid's ``evaluate_rank`` vs the plugin's vectorised evaluator.

Example::

    PYTHONPATH=. python benchmarks/bench_eval.py                        # 2000 x 20000, 750 ids, 6 cams
    PYTHONPATH=. python benchmarks/bench_eval.py --ref-repeats 1 --repeats 5 --json out.json
    PYTHONPATH=. python benchmarks/bench_eval.py --device cuda

The problem: random Gaussian features (``--dim``, fixed ``--seed``), Euclidean distances from
``torchreid.metrics.compute_distance_matrix`` (float32), identities drawn uniformly from ``--num-ids``,
cameras from ``--num-cams`` and clothes labels from ``--num-clothes``. Rows:

* ``torchreid``: ``torchreid.metrics.evaluate_rank(..., use_metric_cuhk03=False)`` as installed from PyPI,
  which has no compiled ranker and runs the per-query Python loop (``eval_market1501``);
  ``--ref-repeats`` runs, no warm-up (one run takes ~50 s on a 2-core machine). ``--ref-repeats 0`` skips it.
* ``plugin``: :func:`clip3dreid_plugin.evaluation.evaluate` for ``general`` and ``cc``, and
  :func:`~clip3dreid_plugin.evaluation.evaluate_all` for both at once (what the engine calls), with the
  default method for the device; ``plugin-sort`` forces the row-sorting method.
  One warm-up, then ``--repeats`` runs.

The rows are run round-robin (round i runs every row that still has runs left), so that load from
other processes on a shared machine falls on all of them rather than on whichever ran during a busy spell.

Each run is timed from the distance matrix (numpy for torchreid, a tensor already on ``--device`` for
the plugin) to the returned numbers; CUDA runs are synchronised. Medians are reported, with the ratio
``torchreid median / row median``. The general-protocol results of both evaluators are compared too:
CMC differences ~1e-8 are torchreid's float32 CMC; mAP differences ~1e-9 come from float32 distances
that tie, which torchreid orders by ``np.argsort``'s unspecified introsort order and the plugin by
gallery index (with a stable argsort torchreid's mAP agrees to ~1e-18).
The machine may be shared: compare ratios rather than absolute times. On an oversubscribed machine
torch's 2 OpenMP threads can be several times slower than ``--threads 1``.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

with warnings.catch_warnings():
    # The PyPI torchreid warns at import that its Cython ranker is missing; that is the point here.
    warnings.simplefilter("ignore")
    import torchreid

from clip3dreid_plugin.evaluation import evaluate, evaluate_all

logger = logging.getLogger("bench_eval")


def _problem(args: argparse.Namespace) -> Dict[str, np.ndarray]:
    gen = torch.Generator().manual_seed(args.seed)
    qf = torch.randn(args.num_query, args.dim, generator=gen)
    gf = torch.randn(args.num_gallery, args.dim, generator=gen)
    distmat = torchreid.metrics.compute_distance_matrix(qf, gf, "euclidean").numpy()

    def labels(n: int, high: int) -> np.ndarray:
        return torch.randint(0, high, (n,), generator=gen).numpy()

    return {
        "distmat": distmat,
        "q_pids": labels(args.num_query, args.num_ids), "g_pids": labels(args.num_gallery, args.num_ids),
        "q_camids": labels(args.num_query, args.num_cams), "g_camids": labels(args.num_gallery, args.num_cams),
        "q_clothes": labels(args.num_query, args.num_clothes),
        "g_clothes": labels(args.num_gallery, args.num_clothes),
    }


def _timed(fn: Callable[[], object], device: torch.device) -> Tuple[float, object]:
    """Seconds for one call of ``fn`` (CUDA work synchronised on both sides) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, result


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-query", type=int, default=2000)
    parser.add_argument("--num-gallery", type=int, default=20000)
    parser.add_argument("--num-ids", type=int, default=750)
    parser.add_argument("--num-cams", type=int, default=6)
    parser.add_argument("--num-clothes", type=int, default=3, help="clothes labels drawn per image")
    parser.add_argument("--dim", type=int, default=512, help="feature width")
    parser.add_argument("--max-rank", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each plugin row")
    parser.add_argument("--ref-repeats", type=int, default=3, help="timed runs of torchreid (0 = skip)")
    parser.add_argument("--device", default="cpu", help="device of the plugin evaluator (cpu, cuda, ...)")
    parser.add_argument("--no-sort-row", action="store_true", help="skip the plugin-sort row")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the rows and settings to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    data = _problem(args)
    d_dev = torch.from_numpy(data["distmat"]).to(device)
    labels = {k: v for k, v in data.items() if k != "distmat"}
    general_labels = {k: v for k, v in labels.items() if "clothes" not in k}
    mr = args.max_rank

    cpu = torch.device("cpu")
    # (evaluator, protocol, device, runs, callable)
    jobs: List[Tuple[str, str, torch.device, int, Callable[[], object]]] = []
    if args.ref_repeats > 0:
        jobs.append(("torchreid", "general", cpu, args.ref_repeats,
                     lambda: torchreid.metrics.evaluate_rank(data["distmat"], max_rank=mr, use_metric_cuhk03=False,
                                                             **general_labels)))
    jobs += [
        ("plugin", "general", device, args.repeats, lambda: evaluate(d_dev, mode="general", max_rank=mr, **labels)),
        ("plugin", "cc", device, args.repeats, lambda: evaluate(d_dev, mode="cc", max_rank=mr, **labels)),
        ("plugin", "general+cc", device, args.repeats,
         lambda: evaluate_all(d_dev, modes=("general", "cc"), max_rank=mr, **labels)),
    ]
    if not args.no_sort_row:
        jobs.append(("plugin-sort", "general+cc", device, args.repeats,
                     lambda: evaluate_all(d_dev, modes=("general", "cc"), max_rank=mr, method="sort", **labels)))

    for name, _, dev, _, fn in jobs:
        if name != "torchreid":
            fn()  # warm-up (allocator, first-call dispatch); torchreid's ~50 s run needs none
    # Round-robin over the rows, so load from other processes on a shared machine hits all of them
    # alike instead of whichever row happened to run during a busy spell.
    times: List[List[float]] = [[] for _ in jobs]
    results: List[object] = [None] * len(jobs)
    if args.ref_repeats > 0:
        logger.info("torchreid evaluate_rank: %d run(s), ~50 s each on 2 cores ...", args.ref_repeats)
    for round_idx in range(max(job[3] for job in jobs)):
        for i, (_, _, dev, runs, fn) in enumerate(jobs):
            if round_idx < runs:
                t, results[i] = _timed(fn, dev)
                times[i].append(t)

    rows: List[dict] = [{"evaluator": name, "protocol": protocol, "device": str(dev), "times_s": t}
                        for (name, protocol, dev, _, _), t in zip(jobs, times)]
    ref_median = statistics.median(times[0]) if args.ref_repeats > 0 else None
    checks: Dict[str, float] = {}
    if args.ref_repeats > 0:
        ref_cmc, ref_map = results[0]
        cmc, mAP = results[1]  # plugin, general
        checks = {"max_abs_cmc_diff": float(np.abs(cmc[:len(ref_cmc)] - ref_cmc).max()),
                  "abs_mAP_diff": abs(mAP - float(ref_map))}

    for row in rows:
        row["median_s"] = statistics.median(row["times_s"])
        row["min_s"] = min(row["times_s"])
        row["speedup_vs_torchreid"] = None if ref_median is None else ref_median / row["median_s"]

    lines = [
        f"{args.num_query} queries x {args.num_gallery} gallery, {args.num_ids} ids, {args.num_cams} cams, "
        f"max_rank {mr}; torch {torch.__version__}, {torch.get_num_threads()} threads",
        "",
        "| evaluator | protocol | device | runs | median (s) | min (s) | speed-up vs torchreid (medians) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = "-" if row["speedup_vs_torchreid"] is None else f"{row['speedup_vs_torchreid']:.1f}x"
        lines.append(f"| {row['evaluator']} | {row['protocol']} | {row['device']} | {len(row['times_s'])} | "
                     f"{row['median_s']:.3f} | {row['min_s']:.3f} | {ratio} |")
    if checks:
        lines += ["", f"general protocol vs torchreid: max |CMC diff| {checks['max_abs_cmc_diff']:.2e}, "
                      f"|mAP diff| {checks['abs_mAP_diff']:.2e}"]
    print("\n".join(lines))

    if args.json:
        settings = dict(vars(args), torch=torch.__version__, numpy=np.__version__, threads=torch.get_num_threads(),
                        machine=platform.machine(), processor=platform.processor())
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "rows": rows, "checks": checks}, f, indent=2)
        logger.info("wrote %s", args.json)
    return rows


if __name__ == "__main__":
    main()

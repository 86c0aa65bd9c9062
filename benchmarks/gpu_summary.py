#!/usr/bin/env python
"""The one-screen summary of ``benchmarks/gpu_check.sh``, from the files it wrote into its output folder.

Reads ``env.txt``, ``pytest_cuda.txt``, ``ot_cuda.json``, ``bench_cuda.json`` and ``torchrun_2gpu.txt``, prints
the CUDA tests' counts, the GPU ratios (OT against the per-sample POT loop, the training step and the evaluation
against torchreid's, the teacher's images per second) and the peak GPU memory, and writes them to
``summary.txt``. With ``--dry-run`` (the CPU rehearsal) every figure is still read, so a missing key fails here
rather than on the GPU, and printed as "not run".

Example::

    python benchmarks/gpu_summary.py --out gpu_results [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import re
import sys
from typing import Dict, List, Optional, Sequence

__all__ = ["main", "pytest_counts", "figures", "summary_lines"]

# The rows of scripts/benchmark.py the summary compares (their labels there).
STUDENT_ROW = "clip3dreid (last stride 1), cached teacher"
BASELINE_ROW = "torchreid resnet50 (last stride 1)"
ONLINE_PREFIX = "clip3dreid (last stride 1), online teacher"


def pytest_counts(text: str) -> Dict[str, int]:
    """``{passed, failed, skipped, error}`` from pytest's last summary line (zeros when absent)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)", ln)]
    if lines:
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?)", lines[-1]):
            counts["error" if what.startswith("error") else what] += int(n)
    return counts


def _read(path: str) -> str:
    if not osp.isfile(path):
        raise FileNotFoundError(f"gpu_summary: '{path}' is missing (its step of gpu_check.sh did not run)")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def figures(out: str) -> Dict[str, object]:
    """Every figure of the summary, read from the files in ``out``.

    Raises:
        FileNotFoundError: a file is missing.
        KeyError: a file lacks a field the summary reads (the message names it).
    """
    fig: Dict[str, object] = {"env": _read(osp.join(out, "env.txt")).strip().splitlines()[-1]}
    fig["tests"] = pytest_counts(_read(osp.join(out, "pytest_cuda.txt")))
    ot_rows = json.loads(_read(osp.join(out, "ot_cuda.json")))["rows"]
    for method in ("batched", "batched_host_checks"):
        for reg in sorted({r["reg"] for r in ot_rows}, reverse=True):
            match = [r for r in ot_rows if r["scope"] == "full" and r["reg"] == reg and r["method"] == method]
            if not match:
                raise KeyError(f"ot_cuda.json has no full-scope row for method {method} at reg {reg}")
            fig[f"ot {method} reg {reg:g}"] = match[0]["speedup"]
    bench = json.loads(_read(osp.join(out, "bench_cuda.json")))
    train = bench["train"]
    for row in (STUDENT_ROW, BASELINE_ROW):
        if row not in train:
            raise KeyError(f"bench_cuda.json has no training row '{row}'")
    online = [k for k in train if k.startswith(ONLINE_PREFIX)]
    if not online:
        raise KeyError(f"bench_cuda.json has no training row starting '{ONLINE_PREFIX}'")
    fig["step cached"] = train[STUDENT_ROW]["time_vs_resnet50_ls1"]
    fig["step online"] = train[online[0]]["time_vs_resnet50_ls1"]
    fig["eval speedup"] = bench["eval"]["speedup"]
    fig["eval size"] = bench["eval"]["size"]
    fig["teacher"] = f"{bench['config']['teacher']}, {bench['labelling']['precision']}"
    fig["teacher images/s"] = bench["labelling"]["images_per_s"]
    peaks = bench["peak_memory_bytes"]
    fig["peak memory"] = {k: peaks[k] for k in ("train", "labelling", "eval")}
    fig["2-GPU"] = (_read(osp.join(out, "torchrun_2gpu.txt")).strip().splitlines() or ["(empty)"])[-1]
    return fig


def _gb(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / 2 ** 30:.1f} GiB"


def summary_lines(fig: Dict[str, object], dry_run: bool) -> List[str]:
    """The summary, one figure a line; in a dry run every GPU figure reads "not run"."""
    def show(text: str) -> str:
        return "not run" if dry_run else text

    t = fig["tests"]
    if dry_run:
        tests = f"not run (on the CPU: {t['skipped']} skipped, {t['passed']} CPU-side passed, {t['failed']} failed)"
    elif not any(t.values()):
        tests = "no result: pytest printed no summary line (did it reach its time limit?)"
    else:
        tests = f"{t['passed']} passed, {t['failed']} failed, {t['error']} errors, {t['skipped']} skipped"
    lines = [f"== gpu_check summary{' (DRY RUN on the CPU)' if dry_run else ''}: {fig['env']}",
             f"CUDA tests                     : {tests}"]
    for key in (k for k in fig if k.startswith("ot ")):  # in figures()' order: method, then reg descending
        _, method, _, reg = key.split()
        what = "convergence tested on the device" if method == "batched" else "convergence read on the host"
        speed = f"{fig[key]:.1f}x faster"
        lines.append(f"{'OT loss vs POT loop, reg ' + reg:<31s}: {show(speed)} (fwd+bwd, {what})")
    cached, online = f"{fig['step cached']:.2f}x the time", f"{fig['step online']:.2f}x the time"
    evaluation, images = f"{fig['eval speedup']:.1f}x faster", f"{fig['teacher images/s']:.0f}"
    peaks = ", ".join(f"{k} {_gb(v)}" for k, v in fig["peak memory"].items())
    lines += [
        f"train step / torchreid's       : {show(cached)} (clip3dreid, cached teacher, vs resnet50 last stride 1)",
        f"train step, online teacher     : {show(online)} (the same baseline)",
        f"evaluation vs torchreid's      : {show(evaluation)} ({fig['eval size']}, general + cc)",
        f"teacher images per second      : {show(images)} ({fig['teacher']})",
        f"peak GPU memory                : {show(peaks)}",
        f"2-GPU torchrun                 : {fig['2-GPU']}",
    ]
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Summary of benchmarks/gpu_check.sh")
    p.add_argument("--out", required=True, help="the folder gpu_check.sh wrote into")
    p.add_argument("--dry-run", action="store_true", help="read every figure, print each as 'not run'")
    args = p.parse_args(argv)
    try:
        fig = figures(args.out)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"gpu_summary: error: {err}", file=sys.stderr)
        return 2
    lines = summary_lines(fig, args.dry_run)
    text = "\n".join(lines)
    print(text)
    with open(osp.join(args.out, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    t = fig["tests"]
    if args.dry_run:
        return 1 if t["failed"] or t["error"] else 0
    return 1 if t["failed"] or t["error"] or not t["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())

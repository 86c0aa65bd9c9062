"""Method study on synthcc: each design of CLIP3DReID against torchreid's ResNet-50, over seeds, with paired CIs.

Every row trains with the quickstart's budget (same data, init, recipe and epochs as the baseline) and is evaluated
by the same evaluator. Rows:

* ``baseline``: torchreid's ``resnet50`` under its ``ImageSoftmaxEngine``;
* ``ce_only``: the student with cross-entropy only;
* ``ot_ideal``: + L_OT with the ideal teacher (``teacher.mode ideal``: orthonormal phrase features, ground-truth
  descriptor labels);
* ``ot_global_ideal``: + L_global (g = a fixed projection of the true shape coefficients);
* ``full_ideal``: + the 3D term (L_OT_syn + L_3D): the full model with the ideal teacher (these two rows use the
  paper's L_global, summed over the d' dims);
* ``full_standin``: the full model as the quickstart runs it offline without CLIP weights (``teacher.mode
  stand-in``: ground-truth labels, text features from a randomly initialised text tower, no L_global);
* ``shape_probe``: the baseline's ResNet-50 trained to regress true shape, ranking by predicted shape;
* ``cal``: the CAL baseline (``configs/synthcc/cal_r50_128x64.yaml``), the positive control: it learns from synthcc's
  clothes labels, so it tests whether the benchmark's CC protocol can reward clothes invariance at all;
* the full model with the ideal teacher and a remedy for L_global's collapse of scale: ``full_ideal_bnneck`` (the
  classifier and retrieval read a BN-neck) and ``full_ideal_global_mean`` (L_global averaged over the d' dims: the
  synthcc recipe's setting, so this row is what the quickstart runs with ``--teacher ideal``);
* head ablation of the CE-only student: ``ce_only_small_init`` (the earlier bias-free std-1e-3 classifier),
  ``ce_only_bnneck``, ``ce_only_residual``;
* a remedy for the OT term's collapse (a trained Psi maps every phrase to one direction):
  ``ot_ideal_fixed_psi`` and ``full_ideal_fixed_psi`` (``full_ideal_global_mean`` plus the option) with
  ``clip3dreid.fixed_text_head True``, Psi a frozen random isometry;
* a sharper transport plan: ``ot_ideal_sharp`` and ``ot_ideal_fixed_psi_sharp`` (``ot.reg 0.05`` instead of the
  paper's 1).

Each run's metrics go to ``OUT/<row>_seed<k>.json`` as soon as it finishes; rows whose file exists are skipped, so a
campaign cut short carries on where it stopped (also in a later session). ``--summary`` only prints the table.
``--seed-spread PATH`` also writes the seed spread of the rows the quickstart repeats (the record its verdict reads,
:mod:`clip3dreid_plugin.study.records`); the committed campaign writes ``clip3dreid_plugin/study/seed_spread.json``.

Usage (the first command builds the data and the stand-in teacher's cache)::

    python -m clip3dreid_plugin.tools.quickstart --teacher stand-in --epochs 1
    python benchmarks/method_study.py --work-dir work_dirs/quickstart --seeds 1 2 3 4 5 \\
        --out benchmarks/results/method_study --seed-spread clip3dreid_plugin/study/seed_spread.json
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os.path as osp
import shutil
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

from clip3dreid_plugin.study.stats import mean_ci, mean_sd
from clip3dreid_plugin.tools.quickstart import BASELINE_CFG, CAL_CFG, CLIP3DREID_CFG, SHAPE_PROBE_CFG, cal_schedule_opts
from clip3dreid_plugin.utils.code_version import code_version
from clip3dreid_plugin.utils.io import atomic_write_json
from clip3dreid_plugin.utils.runtime import quiet_torchreid_warnings, setup_logging

logger = logging.getLogger("clip3dreid.method_study")

_OFF = ["loss.clip3dreid.use_ot", "False", "loss.clip3dreid.use_global", "False", "loss.clip3dreid.use_3d", "False"]
_IDEAL = ["teacher.mode", "ideal"]
# The paper's summed L_global, which the synthcc recipe replaced by the mean after these rows measured its collapse
# (their records predate the change and name no reduction: the recipe's default was the sum then).
_SUM = ["loss.clip3dreid.global_reduction", "sum"]
_OT_ONLY = ["loss.clip3dreid.use_global", "False", "loss.clip3dreid.use_3d", "False"]
# An entropic weight small against the cosine costs' range [0, 2], so that the plan matches patches to phrases; at the
# paper's lambda = 1 it stays close to uniform and d_OT to the mean cost over all (patch, phrase) pairs.
_SHARP = ["ot.reg", "0.05"]
#: row -> (recipe, options, what the table calls its teacher)
ROWS: Dict[str, tuple] = {
    "baseline": (BASELINE_CFG, [], "-"),
    "ce_only": (CLIP3DREID_CFG, _OFF, "-"),
    "ot_ideal": (CLIP3DREID_CFG, _IDEAL + _OT_ONLY, "ideal"),
    "ot_global_ideal": (CLIP3DREID_CFG, _IDEAL + _SUM + ["loss.clip3dreid.use_3d", "False"], "ideal"),
    "full_ideal": (CLIP3DREID_CFG, _IDEAL + _SUM, "ideal"),
    # The stand-in cache has a file and fingerprint of its own; these rows' records predate teacher.mode stand-in
    # (they ran teacher.mode cache on the cache the quickstart had overwritten with the same ground-truth labels).
    "full_standin": (CLIP3DREID_CFG, ["teacher.mode", "stand-in", "loss.clip3dreid.use_global", "False"], "stand-in"),
    "shape_probe": (SHAPE_PROBE_CFG, [], "(true shapes)"),
    "full_ideal_bnneck": (CLIP3DREID_CFG, _IDEAL + _SUM + ["clip3dreid.bnneck", "True"], "ideal"),
    "full_ideal_global_mean": (CLIP3DREID_CFG, _IDEAL + ["loss.clip3dreid.global_reduction", "mean"], "ideal"),
    "ce_only_small_init": (CLIP3DREID_CFG, _OFF + ["clip3dreid.classifier_init", "small"], "-"),
    "ce_only_bnneck": (CLIP3DREID_CFG, _OFF + ["clip3dreid.bnneck", "True"], "-"),
    "ce_only_residual": (CLIP3DREID_CFG, _OFF + ["clip3dreid.agg_residual", "True"], "-"),
    "ot_ideal_fixed_psi": (CLIP3DREID_CFG, _IDEAL + _OT_ONLY + ["clip3dreid.fixed_text_head", "True"], "ideal"),
    "full_ideal_fixed_psi": (CLIP3DREID_CFG, _IDEAL + ["clip3dreid.fixed_text_head", "True"], "ideal"),
    "ot_ideal_sharp": (CLIP3DREID_CFG, _IDEAL + _OT_ONLY + _SHARP, "ideal"),
    "ot_ideal_fixed_psi_sharp": (CLIP3DREID_CFG, _IDEAL + _OT_ONLY + _SHARP + ["clip3dreid.fixed_text_head", "True"],
                                 "ideal"),
    # The positive control: CAL uses synthcc's clothes labels, the one clothes-invariance signal the benchmark has.
    "cal": (CAL_CFG, [], "(clothes labels)"),
}
METRICS = ("general_mAP", "general_rank1", "cc_mAP", "cc_rank1")
PAIRED = ("cc_mAP", "cc_rank1", "general_mAP")


class _EpochLines(logging.Handler):
    """Keeps the engine's ``epoch k/n done`` lines, to record the last epoch's loss terms."""

    def __init__(self):
        super().__init__()
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if " done in " in msg and " | " in msg:
            self.lines.append(msg)


def _terms(line: str) -> Dict[str, float]:
    parts = line.split(" | ")[1].split()
    return {k: float(v) for k, v in zip(parts[::2], parts[1::2])}


def run_row(work: str, row: str, seed: int, device: str, epochs: Optional[int] = None,
            keep_checkpoints: bool = False, code: str = "unknown", extra_opts: Sequence[str] = ()) -> dict:
    """Trains and evaluates one row under one seed; returns its record (metrics as fractions).

    The run's folder keeps its ``metrics.json`` and TensorBoard events; its checkpoint is deleted unless
    ``keep_checkpoints`` (fifty runs of 320 MB would fill the disk). ``code`` names the code the process loaded
    (:func:`code_version` at its start: a commit made while a campaign runs must not be credited with its results).
    ``extra_opts`` (``KEY VALUE`` pairs) apply to every row after the row's own options, e.g. the image size of a
    synthcc variant; they are recorded with the row's options.
    """
    from clip3dreid_plugin.tools import train_net

    cfg_name, opts, teacher = ROWS[row]
    out_dir = osp.join(work, "method_study", f"{row}_seed{seed}")
    # A checkpoint of the student with its Adam state is about 320 MB: keep the last one only.
    opts = ["data.root", osp.join(work, "data"), "body.model_dir", osp.join(work, "body_model"),
            "body.synthetic_dir", osp.join(work, "synthetic_meshes"), "teacher.cache_dir",
            osp.join(work, "teacher_cache"), "runtime.ckpt_freq", "0", *opts, *extra_opts]
    if epochs is not None:
        opts += ["train.max_epoch", str(epochs)]
        if cfg_name == CAL_CFG:
            opts += cal_schedule_opts(epochs)
    args = train_net.build_parser().parse_args(
        ["--config-file", cfg_name, "--device", device, "--output-dir", out_dir, "--seed", str(seed), *opts])
    handler = _EpochLines()
    logging.getLogger().addHandler(handler)
    t0 = time.time()
    try:
        metrics = train_net.run(train_net.setup_cfg(args), cfg_name)["synthcc"]
    finally:
        logging.getLogger().removeHandler(handler)
    if not keep_checkpoints:
        shutil.rmtree(osp.join(out_dir, "model"), ignore_errors=True)
    return {"row": row, "seed": seed, "config": cfg_name, "opts": opts[10:], "teacher": teacher, "metrics": metrics,
            "last_epoch_terms": _terms(handler.lines[-1]) if handler.lines else {},
            "minutes": (time.time() - t0) / 60, "code": code}


def load_runs(out: str) -> List[dict]:
    return [json.load(open(p, encoding="utf-8")) for p in sorted(glob.glob(osp.join(out, "*_seed*.json")))]


def summarise(runs: List[dict], chance: Optional[dict] = None) -> dict:
    """Per row: seeds, mean ± sample sd of each metric (%), and the paired difference from the baseline (same seeds)
    on :data:`PAIRED`: ``{"mean", "ci95" (half-width of the 95% t interval), "sd", "n"}`` in points."""
    by_row: Dict[str, Dict[int, dict]] = {}
    for r in runs:
        by_row.setdefault(r["row"], {})[r["seed"]] = r
    base = by_row.get("baseline", {})
    table = {}
    for row in ROWS:
        rs = by_row.get(row)
        if not rs:
            continue
        seeds = sorted(rs)
        entry = {"seeds": seeds, "teacher": ROWS[row][2], "metrics": {}, "paired": {}}
        for m in METRICS:
            vals = [100 * rs[s]["metrics"][m] for s in seeds]
            entry["metrics"][m] = mean_sd(vals)
        common = [s for s in seeds if s in base]
        if row != "baseline" and common:
            for m in PAIRED:
                diffs = [100 * (rs[s]["metrics"][m] - base[s]["metrics"][m]) for s in common]
                mean, half = mean_ci(diffs)
                sd = mean_sd(diffs)[1]
                entry["paired"][m] = {"mean": mean, "ci95": half, "sd": sd, "n": len(diffs)}
        terms = [rs[s].get("last_epoch_terms", {}) for s in seeds]
        entry["last_epoch_terms"] = {k: statistics.mean(t[k] for t in terms) for k in terms[0]
                                     if all(k in t for t in terms)}
        table[row] = entry
    return {"rows": table, "chance": chance or {}}


def _cell(mean_sd: tuple) -> str:
    m, sd = mean_sd
    return f"{m:.1f}" if math.isnan(sd) else f"{m:.1f} ± {sd:.1f}"


def _diff(paired: dict, key: str) -> str:
    if key not in paired:
        return "-"
    m, hw = paired[key]["mean"], paired[key]["ci95"]
    return f"{m:+.1f}" if math.isnan(hw) else f"{m:+.1f} [{m - hw:+.1f}, {m + hw:+.1f}]"


def markdown(summary: dict) -> str:
    """The BENCHMARKS.md table: metrics (mean ± sd over seeds) and paired differences from the baseline [95% CI]."""
    head = ("| row | teacher | seeds | general mAP | general R1 | CC mAP | CC R1 | Δ CC mAP [95% CI] "
            "| Δ CC R1 [95% CI] | Δ general mAP [95% CI] |")
    lines = [head, "|" + "---|" * 10]
    for row, e in summary["rows"].items():
        m = e["metrics"]
        lines.append(f"| {row} | {e['teacher']} | {len(e['seeds'])} | " + " | ".join(_cell(m[k]) for k in METRICS)
                     + " | " + " | ".join(_diff(e["paired"], k) for k in PAIRED) + " |")
    chance = summary.get("chance") or {}
    if chance:
        lines.append(f"| chance (random ranking) | - | - | {100 * chance['general']['mAP']:.1f} | "
                     f"{100 * chance['general']['rank1']:.1f} | {100 * chance['cc']['mAP']:.1f} | "
                     f"{100 * chance['cc']['rank1']:.1f} | - | - | - |")
    return "\n".join(lines)


def _chance(work: str, seed: int = 1) -> dict:
    import clip3dreid_plugin
    from clip3dreid_plugin.data.build import build_train_split
    from clip3dreid_plugin.study.chance import chance_level
    from clip3dreid_plugin.tools.quickstart import CHANCE_DRAWS

    clip3dreid_plugin.register()  # synthcc is a plugin dataset; a --summary run trains nothing that would register it
    ds, _ = build_train_split("synthcc", osp.join(work, "data"))
    return chance_level(ds, ds.eval_protocols, CHANCE_DRAWS, seed=seed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", default="work_dirs/quickstart")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (smoke runs only)")
    p.add_argument("--out", default="benchmarks/results/method_study")
    p.add_argument("--summary", action="store_true", help="only summarise the runs already in --out")
    p.add_argument("--seed-spread", default="", metavar="PATH",
                   help="also write the seed-spread record the quickstart's verdict reads (the committed campaign: "
                        "clip3dreid_plugin/study/seed_spread.json)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's final checkpoint")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="config options for every row (after the row's own), e.g. data.height 256 data.width 128")
    args = p.parse_args(argv)
    if len(args.opts) % 2:
        p.error(f"--opts takes KEY VALUE pairs, got {len(args.opts)} words: {args.opts}")
    quiet_torchreid_warnings()
    setup_logging(args.out, "method_study.log")
    work = osp.abspath(args.work_dir)
    if not osp.isdir(osp.join(work, "data", "synthcc")):
        logger.error("no synthcc under %s: run python -m clip3dreid_plugin.tools.quickstart --teacher stand-in "
                     "--epochs 1 first", work)
        return 2
    if not args.summary:
        code = code_version()
        for seed in args.seeds:
            for row in args.rows:
                path = osp.join(args.out, f"{row}_seed{seed}.json")
                if osp.isfile(path):
                    logger.info("skip %s (done)", path)
                    continue
                logger.info("=== %s, seed %d", row, seed)
                atomic_write_json(run_row(work, row, seed, args.device, args.epochs, args.keep_checkpoints, code,
                                           args.opts), path)
                logger.info("wrote %s", path)
    summary = summarise(load_runs(args.out), _chance(work))
    atomic_write_json(summary, osp.join(args.out, "summary.json"))
    if args.seed_spread:
        from clip3dreid_plugin.study.records import write_seed_spread

        write_seed_spread(summary, args.seed_spread, f"benchmarks/method_study.py, summary of {args.out}")
        logger.info("wrote %s", args.seed_spread)
    logger.info("\n%s", markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Methods compared over seeds (``clip3dreid-study STUDY.yaml``): every (row, seed) of a study file trained by the
normal trainer, one run at a time, then one markdown table and CMC bands.

Usage::

    clip3dreid-study STUDY.yaml [--device cpu|cuda|cuda:N] [--rows LABEL ...] [--seeds K ...] [--output DIR]
    clip3dreid-study STUDY.yaml --summary          # only read the records and print the table
    clip3dreid-study STUDY.yaml --summary --reference LABEL   # the same, differences against another row
    REID_DATA=/data clip3dreid-study ltcc          # an installed study file (clip3dreid_plugin/studies/)
    torchrun --nproc_per_node 2 -m clip3dreid_plugin.tools.study STUDY.yaml    # every run a distributed run

The study file's format is :mod:`clip3dreid_plugin.study.spec`'s. Each run goes into ``OUTPUT/<label>/seed<k>/``
(the trainer's ``config.yaml`` and ``metrics.json``, then ``study_run.json``, written last: see
:mod:`clip3dreid_plugin.study.run_records`). A run with a ``study_run.json`` whose config fingerprint matches its
row's is skipped; one whose fingerprint no longer matches is reported with the keys that differ and the study stops
(``--rerun-stale`` retrains it; a key the plugin added after the run, left at its default by the row, is no
difference); a folder without ``study_run.json`` (a run cut short) is retrained from scratch.
``--rows`` / ``--seeds`` choose the runs to train; the summary covers every row and seed of the study file (plus
``--seeds``) that has a finished run. Records of ``benchmarks/method_study.py`` (``OUTPUT/<label>_seed<k>.json``)
count as finished runs of their row (no fingerprint to compare, no CMC curve).

After training it writes ``OUTPUT/summary.json`` (:mod:`clip3dreid_plugin.study.summary`), ``OUTPUT/table.md``,
``OUTPUT/cmc_<target>_<protocol>.png``, ``OUTPUT/chance.json`` (the chance level of each target, computed once as
``clip3dreid-dataset-info --chance N`` does) and ``OUTPUT/study.log``; under torchrun only rank 0 writes them.
``--summary`` writes nothing (it logs the table).
"""
from __future__ import annotations

import json
import logging
import os.path as osp
import shutil
import sys
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

from clip3dreid_plugin.errors import ConfigError
from clip3dreid_plugin.study.spec import Study, StudyRow, read_study, resolve_study_file
from clip3dreid_plugin.tools.common import CLIParser, cli_main
from clip3dreid_plugin.utils.io import atomic_write_json
from clip3dreid_plugin.utils.runtime import DEVICE_HELP
from clip3dreid_plugin.utils.torchrun import launched_local_rank, launched_rank

__all__ = ["Planned", "plan_runs", "run_study", "summarise_study", "chance_levels", "main"]

logger = logging.getLogger("clip3dreid.study")

CHANCE_NAME = "chance.json"


@dataclass
class Planned:
    """One (row, seed) of a study: its merged config, fingerprint and state (``todo``, ``incomplete``, ``done``,
    ``legacy`` or ``stale``; ``diff`` holds a stale run's ``key: old -> new`` lines)."""

    row: StudyRow
    seed: int
    folder: str
    cfg: object
    fingerprint: dict
    state: str
    diff: List[str]


def _row_cfg(study: Study, row: StudyRow, seed: int, output: str, device: Optional[str]):
    """The merged, checked config of ``row`` under ``seed`` (as ``clip3dreid-train`` would build it)."""
    from clip3dreid_plugin.study.run_records import run_dir
    from clip3dreid_plugin.tools import train_net

    argv = ["--config-file", row.config, "--output-dir", run_dir(output, row.label, seed), "--seed", str(seed)]
    if device:
        argv += ["--device", device]
    try:
        args = train_net.build_parser().parse_args([*argv, "--", *study.row_opts(row)])
    except SystemExit:  # the parser printed its line; name the row too
        raise ConfigError(f"study file '{study.path}': the options of row '{row.label}' are not KEY VALUE pairs "
                          f"clip3dreid-train takes") from None
    try:
        return train_net.setup_cfg(args)
    except ConfigError as err:
        raise ConfigError(f"study file '{study.path}', row '{row.label}': {err}") from None


def plan_runs(study: Study, output: str, labels: Sequence[str], seeds: Sequence[int],
              device: Optional[str]) -> List[Planned]:
    """Every (row, seed) asked for, seeds outer (so the paired differences fill in seed by seed), with its state."""
    from clip3dreid_plugin.config.defaults import get_cfg
    from clip3dreid_plugin.study.run_records import (config_fingerprint, legacy_path, read_study_run, run_config_diff,
                                                     run_dir)

    defaults = config_fingerprint(get_cfg())
    planned = []
    for seed in seeds:
        for label in labels:
            row = study.row(label)
            folder = run_dir(output, label, seed)
            cfg = _row_cfg(study, row, seed, output, device)
            fp = config_fingerprint(cfg)
            record = read_study_run(folder)
            diff: List[str] = []
            if record is not None:
                diff, added = run_config_diff(record["fingerprint"], fp, defaults)
                if added:
                    logger.info("%s/seed%d ran before these keys existed; the row leaves them at their defaults: %s",
                                label, seed, ", ".join(added))
                state = "stale" if diff else "done"
            elif osp.isdir(folder):
                state = "incomplete"
            elif osp.isfile(legacy_path(output, label, seed)):
                state = "legacy"
            else:
                state = "todo"
            planned.append(Planned(row, seed, folder, cfg, fp, state, diff))
    return planned


def _report_stale(study: Study, planned: Sequence[Planned], rerun: bool) -> None:
    stale = [p for p in planned if p.state == "stale"]
    for p in stale:
        logger.warning("%s/seed%d no longer matches its row: %s", p.row.label, p.seed, "; ".join(p.diff))
    if stale and not rerun:
        first = stale[0]
        raise ConfigError(f"study '{study.path}': {len(stale)} finished run(s) no longer match their row's config "
                          f"(first: {first.row.label}/seed{first.seed}: {'; '.join(first.diff)}); pass --rerun-stale "
                          "to retrain them, or restore the study file")


def _train(study: Study, p: Planned, code: str) -> None:
    """Trains one planned run from scratch and, on rank 0, writes its ``study_run.json`` last."""
    from clip3dreid_plugin.study.run_records import write_study_run
    from clip3dreid_plugin.tools import train_net
    from clip3dreid_plugin.utils.runtime import resolve_device

    main = launched_rank() == 0
    if main and osp.isdir(p.folder):
        # A run cut short (or a stale one) starts over: nothing of the old run may leak into the new record.
        shutil.rmtree(p.folder)
    logger.info("=== %s, seed %d -> %s", p.row.label, p.seed, p.folder)
    t0 = time.time()
    train_net.run(p.cfg, p.row.config)
    minutes = (time.time() - t0) / 60
    if main:
        if not study.keep_checkpoints:
            shutil.rmtree(osp.join(p.folder, "model"), ignore_errors=True)
        device = str(resolve_device(p.cfg.runtime.device, launched_local_rank() if _launched() else None))
        write_study_run(p.folder, p.fingerprint, p.row.config, study.row_opts(p.row), p.seed, code, device, minutes)
    logger.info("%s/seed%d done in %.1f min", p.row.label, p.seed, minutes)


def _launched() -> bool:
    from clip3dreid_plugin.utils.torchrun import is_launched

    return is_launched()


def run_study(study: Study, output: str, labels: Sequence[str], seeds: Sequence[int], device: Optional[str],
              rerun_stale: bool = False) -> List[Planned]:
    """Trains every run of ``labels`` x ``seeds`` that has no up-to-date record, one at a time.

    Raises:
        ConfigError: a finished run's config no longer matches its row and ``rerun_stale`` is False (nothing is
            trained then).
    """
    from clip3dreid_plugin.utils.code_version import code_version

    code = code_version()  # at the start: a commit made while the study runs must not be credited with it
    planned = plan_runs(study, output, labels, seeds, device)
    _report_stale(study, planned, rerun_stale)
    todo = [p for p in planned if p.state not in ("done", "legacy")]
    if todo and _launched():
        _join_group(todo[0].cfg)
    try:
        _train_all(study, planned, code)
    finally:
        if todo and _launched():
            from clip3dreid_plugin.utils import distributed as dist_utils

            dist_utils.cleanup()
    return planned


def _join_group(cfg) -> None:
    """Forms torchrun's process group once for every run of the study (torchrun's store takes one group per
    process; each trainer then runs in this one and leaves it standing)."""
    from clip3dreid_plugin.utils import distributed as dist_utils
    from clip3dreid_plugin.utils.runtime import activate_device, resolve_device

    device = activate_device(resolve_device(cfg.runtime.device, launched_local_rank()))
    dist_utils.init_distributed(cfg.runtime.dist_backend, device.type)


def _train_all(study: Study, planned: Sequence[Planned], code: str) -> None:
    for p in planned:
        if p.state in ("done", "legacy"):
            logger.info("%s/seed%d: done%s", p.row.label, p.seed, " (a method-study record)" if p.state == "legacy"
                        else "")
            continue
        if p.state == "incomplete":
            logger.info("%s/seed%d: no study_run.json (cut short): retrained from scratch", p.row.label, p.seed)
        _train(study, p, code)


def chance_levels(study: Study, output: str, roots: Dict[str, str], write: bool = True) -> dict:
    """``{target: {protocol: {"mAP", "rank1", "rank1_sd"}}}`` for each target (``roots``: target -> data root), from
    ``OUTPUT/chance.json`` when it holds the same target, root and draws, else computed (and stored).

    A target whose dataset cannot be read gets no chance row, with a warning saying why.
    """
    if study.chance_draws <= 0:
        return {}
    path = osp.join(output, CHANCE_NAME)
    cache = {}
    if osp.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                cache = json.load(f)
        except (OSError, ValueError):
            logger.warning("%s is unreadable; the chance levels are computed again", path)
    out, changed = {}, False
    for target, root in roots.items():
        entry = cache.get(target, {})
        if entry.get("root") == root and entry.get("draws") == study.chance_draws and "levels" in entry:
            out[target] = entry["levels"]
            continue
        levels = _compute_chance(target, root, study.chance_draws)
        if levels is not None:
            out[target] = levels
            cache[target] = {"root": root, "draws": study.chance_draws, "levels": levels}
            changed = True
    if changed and write:
        atomic_write_json(cache, path)
    return out


def _compute_chance(target: str, root: str, draws: int) -> Optional[dict]:
    """The chance level of ``target`` under ``root`` as ``clip3dreid-dataset-info --chance`` computes it."""
    from clip3dreid_plugin.data.build import build_train_split
    from clip3dreid_plugin.registry import register
    from clip3dreid_plugin.study.chance import chance_level
    from clip3dreid_plugin.tools.common import user_error_types

    if not osp.isdir(root):
        logger.warning("no chance row for %s: its data root '%s' is not a folder", target, root)
        return None
    register()
    try:
        ds, is_video = build_train_split(target, root)
    except (*user_error_types(), RuntimeError, OSError) as err:
        logger.warning("no chance row for %s: its dataset under '%s' cannot be read (%s)", target, root, err)
        return None
    if is_video:
        logger.warning("no chance row for %s: chance levels are for image datasets", target)
        return None
    return chance_level(ds, list(getattr(ds, "eval_protocols", ("general",))), draws)


def summarise_study(study: Study, output: str, planned: Sequence[Planned], write: bool = True) -> dict:
    """Reads every finished run of ``planned`` (stale ones are left out, with a warning), writes ``summary.json``,
    ``table.md`` and the CMC plots (when ``write``), logs the table; returns the summary with its ``table``."""
    from clip3dreid_plugin.study.run_records import load_run
    from clip3dreid_plugin.study.summary import markdown, plot_cmc_bands, summarise

    runs: Dict[str, Dict[int, dict]] = {}
    left_out = []
    for p in planned:
        if p.state == "stale":
            left_out.append(f"{p.row.label}/seed{p.seed}")
            continue
        run = load_run(output, p.row.label, p.seed, legacy_target=p.cfg.data.targets[0])
        if run is not None:
            runs.setdefault(p.row.label, {})[p.seed] = run
    if left_out:
        logger.warning("left out of the summary, their config no longer matches their row: %s", ", ".join(left_out))
    if not runs:
        raise ConfigError(f"study '{study.path}': no finished run under '{output}' yet")
    order = [r.label for r in study.rows]
    targets = list(dict.fromkeys(t for by_seed in runs.values() for r in by_seed.values() for t in r["metrics"]))
    ref_cfg = next((p.cfg for p in planned if p.row.label == study.reference), planned[0].cfg)
    chance = chance_levels(study, output, {t: ref_cfg.data.root for t in targets}, write=write)
    summary = summarise(runs, study.reference, order, study.protocols, chance, list(ref_cfg.data.targets))
    summary["study"] = study.path
    table = markdown(summary)
    if write:
        atomic_write_json(summary, osp.join(output, "summary.json"))
        with open(osp.join(output, "table.md"), "w", encoding="utf-8") as f:
            f.write(table + "\n")
        for name, path in plot_cmc_bands(runs, [tuple(g) for g in summary["groups"]], output, order).items():
            logger.info("CMC %s -> %s", name, path)
    logger.info("%s\n%s", study.path, table)
    summary["table"] = table
    return summary


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status (2 with one line for a user error)."""
    p = CLIParser(description="Train every (row, seed) of a study file and compare the rows over seeds.")
    p.add_argument("study", help="the study file (YAML: output, seeds, reference, opts, rows), or the name of an "
                   "installed one (ltcc, prcc, ...)")
    p.add_argument("--device", default=None, help=f"{DEVICE_HELP} (overrides the study file's device)")
    p.add_argument("--summary", action="store_true", help="only read the finished runs and print the table")
    p.add_argument("--rerun-stale", action="store_true",
                   help="retrain finished runs whose config no longer matches their row (default: stop and say so)")
    p.add_argument("--output", default=None, help="the study's folder (overrides the study file's output)")
    p.add_argument("--rows", nargs="+", default=None, metavar="LABEL", help="train only these rows")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="K", help="train only these seeds")
    p.add_argument("--reference", default=None, metavar="LABEL",
                   help="with --summary: take the paired differences against this row instead of the study file's "
                        "reference (for example one mesh set against another)")
    args = p.parse_args(argv)
    from clip3dreid_plugin.registry import register
    from clip3dreid_plugin.utils.runtime import quiet_torchreid_warnings, setup_logging  # torch: after parsing

    quiet_torchreid_warnings()
    study = read_study(resolve_study_file(args.study))
    output = args.output or study.output
    is_main = launched_rank() == 0
    setup_logging(output if is_main and not args.summary else "", "study.log", is_main=is_main)
    labels = [r.label for r in study.rows]
    for label in args.rows or []:
        if label not in labels:
            raise ConfigError(f"--rows: '{label}' is not a row of '{args.study}' ({', '.join(labels)})")
    if args.reference is not None:
        if not args.summary:
            # a study's summary.json and table.md are against its own reference; another one is a read-only view
            raise ConfigError("--reference is read-only: pass it with --summary")
        if args.reference not in labels:
            raise ConfigError(f"--reference: '{args.reference}' is not a row of '{args.study}' ({', '.join(labels)})")
        study = replace(study, reference=args.reference)
    register()
    device = args.device or study.device
    if not args.summary:
        run_study(study, output, args.rows or labels, args.seeds or study.seeds, device, args.rerun_stale)
        if not is_main:
            return 0  # rank 0 summarises; another rank may not see its last study_run.json yet
    all_seeds = list(dict.fromkeys([*study.seeds, *(args.seeds or [])]))
    planned = plan_runs(study, output, labels, all_seeds, device)
    # --summary writes nothing: it must not replace a study's files (nor method_study.py's own summary.json)
    summarise_study(study, output, planned, write=is_main and not args.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

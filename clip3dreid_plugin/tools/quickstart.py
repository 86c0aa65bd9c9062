"""The README's main command: the whole method end to end on the built-in ``synthcc`` benchmark.

Steps (``bash scripts/quickstart.sh`` runs them after installing):

1. write the procedural SMPL-format body model (or use ``--body-model`` with real SMPL files);
2. build ``synthcc`` (identity = body shape, shared outfits, several cameras) and render the
   synthetic mesh set for the 3D term;
3. choose the teacher (``--teacher``). With ``--clip-weights`` the real CLIP teacher labels every training image.
   Offline the default is the *ideal* teacher (``teacher.mode ideal``): orthonormal phrase features, synthcc's
   ground-truth descriptor labels and ``g`` = a fixed projection of the true shape, so that the distillation path
   is tested with targets that carry shape. ``--teacher stand-in`` keeps the earlier offline mix (``teacher.mode
   stand-in``: ground-truth labels, text features of a randomly initialised text tower, no ``L_global``), in a
   cache file and fingerprint of its own (:mod:`clip3dreid_plugin.study.standin_teacher`);
4. train torchreid's ``resnet50`` baseline, ``clip3dreid`` and the CAL baseline (``cal``, from synthcc's clothes
   labels; ``--no-cal`` skips it) with the same start and budget;
5. print one side-by-side table of general / SC / CC mAP and rank-1 with a chance row, the teacher of each row,
   and a verdict per method: is its CC mAP difference from the baseline larger than the seed spread the method
   study measured (its committed record, :mod:`clip3dreid_plugin.study.records`)?
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import sys
import time
from typing import Dict, List, Optional, Sequence

from clip3dreid_plugin.tools.common import CLIParser, cli_main

logger = logging.getLogger("clip3dreid.quickstart")

__all__ = ["CAL_START_FRACTION", "cal_schedule_opts", "main", "verdict"]

CHANCE_DRAWS = 200  # random rankings averaged for the chance row (standard error well under a point)
# Recipe names, found among the installed recipes (or a checkout's configs/) from any folder.
BASELINE_CFG = "synthcc/resnet50_baseline_128x64"
CLIP3DREID_CFG = "synthcc/clip3dreid_r50_vitb32_128x64"
SHAPE_PROBE_CFG = "synthcc/shape_probe_r50_128x64"
CAL_CFG = "synthcc/cal_r50_128x64"
TEACHERS = ("auto", "clip", "ideal", "stand-in")
# CAL's clothes terms start after 25 of the reference's 60 epochs; a run of another length keeps that fraction.
CAL_START_FRACTION = 25 / 60
BASELINE_ROW = "resnet50 (torchreid)"
CAL_ROW = "cal (clothes labels)"


def verdict(diff_cc_map: float, row: str, record: str = "") -> str:
    """One line: is this run's CC-mAP difference (``row`` - baseline, in points) outside the seed spread?

    A difference within two standard deviations of the paired difference measured over seeds is not told apart
    from seed noise by one run. The spread of the method-study row that ``row`` (a label of the quickstart's table)
    repeats is read from the study's record (``record``, default the committed
    :data:`~clip3dreid_plugin.study.records.SEED_SPREAD_FILE`); without one the line says so.
    """
    from clip3dreid_plugin.study.records import SEED_SPREAD_FILE, read_seed_spread

    record = record or SEED_SPREAD_FILE
    spread = read_seed_spread(record)
    head = f"verdict, {row} vs the baseline: CC mAP differs by {diff_cc_map:+.1f} points"
    if spread is None:
        return (f"{head}; the method study's seed-spread record '{record}' is missing, so one run cannot say "
                f"whether that is more than seed noise")
    if row not in spread:
        return f"{head}; the method study has no seed spread for this row, so one run cannot say whether that is " \
               f"more than seed noise"
    sd, n = spread[row]
    outside = abs(diff_cc_map) > 2 * sd
    method = row.split(" ", 1)[0]
    return (f"{head}, {'more' if outside else 'less'} than twice the seed spread of the paired difference (sd "
            f"{sd:.1f} over {n} seeds, BENCHMARKS.md): "
            + (f"{method} is " + ("ahead" if diff_cc_map > 0 else "behind") if outside
               else "one run does not tell them apart"))


def cal_schedule_opts(epochs: int) -> List[str]:
    """The overrides that start CAL's clothes terms at :data:`CAL_START_FRACTION` of a run of ``epochs`` epochs."""
    start = str(round(epochs * CAL_START_FRACTION))
    return ["cal.start_epoch_cc", start, "cal.start_epoch_adv", start]


def _train(cfg_file: str, out_dir: str, device: str, opts: List[str]) -> Dict[str, Dict[str, float]]:
    from clip3dreid_plugin.tools import train_net

    args = train_net.build_parser().parse_args(
        ["--config-file", cfg_file, "--device", device, "--output-dir", out_dir, *opts])
    return train_net.run(train_net.setup_cfg(args), cfg_file)


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point: a user error ends in one line and exit code 2 (``CLIP3DREID_DEBUG=1`` for the traceback)."""
    from clip3dreid_plugin.utils.runtime import DEVICE_HELP, quiet_torchreid_warnings, resolve_device, setup_logging

    p = CLIParser(description="Run CLIP3DReID and the ResNet-50 baseline end to end on synthcc.")
    p.add_argument("--work-dir", default="work_dirs/quickstart", help="data, caches, logs and results go here")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--clip-weights", default="", help="local CLIP ViT-B/32 (OpenAI) weights (for --teacher clip)")
    p.add_argument("--teacher", default="auto", choices=TEACHERS,
                   help="clip (needs --clip-weights) | ideal (offline stand-in that knows synthcc's shapes) | "
                        "stand-in (ground-truth labels + a random text tower) | auto: clip with weights, else ideal")
    p.add_argument("--body-model", default="", help="folder with smpl/SMPL_*.pkl; default: the procedural body")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of every model (same budget)")
    p.add_argument("--no-cal", action="store_true", help="skip the CAL baseline (about a third of the time)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--num-ids", type=int, default=None, help="synthcc identities (default synthcc.num_ids)")
    p.add_argument("--json", default="", help="write the results as JSON (default WORK_DIR/results.json)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)  # a bad --device fails here, not after the data are built

    quiet_torchreid_warnings()
    # Every run rebuilds the work dir's results, so its log starts afresh: appended to, a rerun's log held the
    # table of the run before it as well.
    log_file = osp.join(args.work_dir, "quickstart.log")
    if osp.isfile(log_file):
        os.remove(log_file)
    setup_logging(args.work_dir, "quickstart.log")
    t0 = time.time()
    from clip3dreid_plugin.body.procedural import write_procedural_smpl
    from clip3dreid_plugin.body.synthcc import build_synthcc, synthcc_ground_truth
    from clip3dreid_plugin.body.meshset import render_synthetic_set
    from clip3dreid_plugin.config import load_config
    from clip3dreid_plugin.config.loader import ConfigError
    from clip3dreid_plugin.data.build import build_train_split
    from clip3dreid_plugin.study.chance import chance_level
    from clip3dreid_plugin.study.standin_teacher import build_standin_cache, synthcc_teacher_cache
    from clip3dreid_plugin.tools.compare import load_runs, write_comparison
    from clip3dreid_plugin.utils.io import atomic_write_json

    w = osp.abspath(args.work_dir)
    data_root, body_dir = osp.join(w, "data"), args.body_model or osp.join(w, "body_model")
    syn_dir, cache_dir = osp.join(w, "synthetic_meshes"), osp.join(w, "teacher_cache")
    common = ["data.root", data_root, "train.seed", str(args.seed)]
    if args.epochs is not None:
        common += ["train.max_epoch", str(args.epochs)]
    cc_opts = common + ["body.model_dir", body_dir, "body.synthetic_dir", syn_dir, "teacher.cache_dir", cache_dir,
                        "teacher.pretrained", args.clip_weights]
    cfg = load_config(CLIP3DREID_CFG, cc_opts)
    # Half of synthcc's identities train, and the identity sampler needs batch_size / num_instances of them.
    min_ids = 2 * cfg.train.batch_size // cfg.sampler.num_instances
    if (args.num_ids or cfg.synthcc.num_ids) < min_ids:
        raise ConfigError(f"--num-ids must be at least {min_ids} (half of them train, {min_ids // 2} per batch)")

    teacher = args.teacher if args.teacher != "auto" else ("clip" if args.clip_weights else "ideal")
    if teacher == "clip" and not args.clip_weights:
        raise ConfigError("--teacher clip needs --clip-weights (a local CLIP ViT-B/32 OpenAI file)")
    if teacher != "clip" and args.clip_weights:
        raise ConfigError(f"--clip-weights is for --teacher clip; --teacher {teacher} uses no CLIP weights")
    if not args.body_model:
        logger.info("[1/5] procedural SMPL-format body model -> %s (use --body-model for real SMPL files)", body_dir)
        write_procedural_smpl(body_dir)
    else:
        logger.info("[1/5] body model: %s", body_dir)
    logger.info("[2/5] building synthcc under %s and the synthetic mesh set under %s", data_root, syn_dir)
    sc = cfg.synthcc
    build_synthcc(data_root, body_dir, num_ids=args.num_ids or sc.num_ids, outfits_per_id=sc.outfits_per_id,
                  num_cameras=sc.num_cameras, poses_per_view=sc.poses_per_view, height=cfg.data.height,
                  width=cfg.data.width, seed=sc.seed, progress=cfg.runtime.progress, beta_sigma=sc.beta_sigma)
    b = cfg.body
    render_synthetic_set(body_dir, syn_dir, num_female=b.num_female, num_male=b.num_male,
                         poses_per_subject=b.poses_per_subject, height=cfg.data.height, width=cfg.data.width,
                         seed=b.seed, sigma=b.beta_sigma, show_progress=cfg.runtime.progress,
                         # The work dir holds derived data: a set left by other arguments or another body model
                         # is re-rendered, as build_synthcc rebuilds a stale synthcc.
                         on_stale="rebuild")

    if teacher == "ideal":
        logger.info("[3/5] teacher: ideal (orthonormal phrase features, synthcc's ground-truth descriptor labels, "
                    "g = projected true shape; not CLIP)")
        cc_opts += ["teacher.mode", "ideal"]
    else:
        logger.info("[3/5] labelling body-shape descriptors with the CLIP teacher (%s)", cfg.teacher.name)
        gt_paths, gt_labels = synthcc_ground_truth(data_root)
        if teacher == "clip":
            synthcc_teacher_cache(cfg, gt_paths, device=device)
        else:
            build_standin_cache(cfg, gt_paths, gt_labels, device=device)
            logger.warning("teacher stand-in: descriptor labels are synthcc's ground truth, text features come from "
                           "the randomly initialised %s text tower, and L_global is off", cfg.teacher.name)
            cc_opts += ["teacher.mode", "stand-in", "loss.clip3dreid.use_global", "False"]

    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    folders = {BASELINE_ROW: "resnet50", f"clip3dreid (teacher: {teacher})": "clip3dreid"}
    logger.info("[4/5] training torchreid's resnet50 baseline")
    results[BASELINE_ROW] = _train(BASELINE_CFG, osp.join(w, "resnet50"), args.device, common)
    logger.info("[4/5] training clip3dreid with the same budget")
    results[f"clip3dreid (teacher: {teacher})"] = _train(CLIP3DREID_CFG, osp.join(w, "clip3dreid"), args.device,
                                                         cc_opts)
    if not args.no_cal:
        logger.info("[4/5] training the CAL baseline (synthcc's clothes labels) with the same budget")
        cal_opts = common + (cal_schedule_opts(args.epochs) if args.epochs is not None else [])
        results[CAL_ROW] = _train(CAL_CFG, osp.join(w, "cal"), args.device, cal_opts)
        folders[CAL_ROW] = "cal"

    ds, _ = build_train_split("synthcc", data_root)
    chance = chance_level(ds, ds.eval_protocols, CHANCE_DRAWS, seed=args.seed)
    runs = load_runs([osp.join(w, folders[label]) for label in results], labels=list(results))
    chance_row = {"model": "-", "seed": "-", "last": {"epoch": "-", "metrics": {
        "synthcc": {f"{p}_{k}": v[k] for p, v in chance.items() for k in ("mAP", "rank1")}}}}
    # clip3dreid-compare's table and CMC plots (no curve for the chance row); written to WORK_DIR/compare.
    table, _ = write_comparison(runs + [(f"random ranking (chance, {CHANCE_DRAWS} draws)", chance_row)],
                                osp.join(w, "compare"))
    base = results[BASELINE_ROW]["synthcc"]
    verdicts = {label: verdict(100 * (r["synthcc"]["cc_mAP"] - base["cc_mAP"]), label)
                for label, r in results.items() if label != BASELINE_ROW}
    # Logged once: the console handler prints it, the log file keeps it.
    logger.info("[5/5] results on synthcc, seed %d (teacher: %s, %.1f min in all):\n%s\n%s", args.seed, teacher,
                (time.time() - t0) / 60, table, "\n".join(verdicts.values()))
    atomic_write_json({"teacher": teacher, "seed": args.seed, "results": results, "chance": chance,
                       "verdicts": verdicts}, args.json or osp.join(w, "results.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

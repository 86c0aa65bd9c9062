"""Runs side by side (``clip3dreid-compare RUN_DIR [RUN_DIR ...]``): one markdown table, one CMC plot per target and
protocol.

Each run folder holds the ``metrics.json`` that ``clip3dreid-train`` writes. The table has one row per run and one
column group (mAP, rank-1) per target and protocol; the plots put every run's CMC curve on the same axes.
``--which last`` (default) compares the last evaluation, the one no test-set selection touched; ``--which best``
compares the evaluation that picked ``model-best``.

``--group`` puts the runs whose ``config.yaml`` (every run folder has one) agree on everything but ``train.seed``
and ``data.save_dir`` into one row: mean ± sd over their seeds of mAP and rank-1, the seeds, and the paired
difference from the first group (same seeds) with its 95% t interval, the table ``clip3dreid-study`` prints
(:mod:`clip3dreid_plugin.study.summary`); the plots then draw each group's mean CMC with a ±1 sd band.

Example::

    clip3dreid-compare log/ltcc/resnet50_baseline_384x192 log/ltcc/clip3dreid_r50_vitl14_384x192 --output cmp/
    clip3dreid-compare log/ltcc/*_seed* --group --output cmp/     # one row per recipe and options, over seeds
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from clip3dreid_plugin.config.flat import flatten_config
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.evaluation.records import read_metrics
from clip3dreid_plugin.tools.common import CLIParser, cli_main, start_cli

logger = logging.getLogger(__name__)

__all__ = ["comparison_table", "group_runs", "load_runs", "main", "plot_cmc", "write_comparison",
           "write_grouped_comparison"]

Run = Tuple[str, dict]  # (label, metrics.json record)
PROTOCOL_ORDER = ("general", "sc", "cc")


def load_runs(run_dirs: Sequence[str], labels: Optional[Sequence[str]] = None) -> List[Run]:
    """``(label, record)`` per run folder; the label defaults to the folder's name."""
    labels = list(labels) if labels else [osp.basename(osp.normpath(d)) for d in run_dirs]
    return [(label, read_metrics(d)) for label, d in zip(labels, run_dirs)]


def _groups(runs: Sequence[Run], which: str) -> List[Tuple[str, str]]:
    """``(target, protocol)`` pairs present in any run, targets in first-seen order, protocols in the usual one."""
    groups: List[Tuple[str, str]] = []
    for _, rec in runs:
        for target, metrics in rec.get(which, {}).get("metrics", {}).items():
            for proto in PROTOCOL_ORDER:
                if f"{proto}_mAP" in metrics and (target, proto) not in groups:
                    groups.append((target, proto))
    return groups


def comparison_table(runs: Sequence[Run], which: str = "last") -> str:
    """Markdown table: one row per run (model, seed, epoch), mAP and rank-1 in % per target and protocol."""
    groups = _groups(runs, which)
    head = "| run | model | seed | epoch | " + " | ".join(f"{t} {p} mAP | {t} {p} R1" for t, p in groups) + " |"
    rows = [head, "|---" * (4 + 2 * len(groups)) + "|"]
    for label, rec in runs:
        ev = rec.get(which, {})
        cells = []
        for target, proto in groups:
            m = ev.get("metrics", {}).get(target, {})
            for key in (f"{proto}_mAP", f"{proto}_rank1"):
                cells.append(f"{100 * m[key]:.1f}" if key in m else "-")
        rows.append(f"| {label} | {rec.get('model', '-')} | {rec.get('seed', '-')} | {ev.get('epoch', '-')} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_cmc(runs: Sequence[Run], which: str, target: str, protocol: str, path: str):
    """Writes the CMC curves of every run that has one for ``target``/``protocol`` to ``path`` (PNG).

    Each run's legend entry carries its mAP and rank-1; the dashed curve is the expected CMC of a random ranking on
    the same split (``chance_cmc`` in ``metrics.json``), the floor to read the others against. A record written
    before runs stored it has no chance curve, and a warning says so.

    Returns:
        The matplotlib figure (closed); its axes hold one line per plotted run, then the chance line.
    """
    # matplotlib is slow to import and only the plots need it
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    chance = None
    for label, rec in runs:
        ev = rec.get(which, {})
        cmc = ev.get("cmc", {}).get(target, {}).get(protocol)
        if cmc:
            m = ev.get("metrics", {}).get(target, {})
            scores = (f" (mAP {100 * m[f'{protocol}_mAP']:.1f}, R1 {100 * m[f'{protocol}_rank1']:.1f})"
                      if f"{protocol}_mAP" in m and f"{protocol}_rank1" in m else "")
            ax.plot(range(1, len(cmc) + 1), [100 * v for v in cmc], label=label + scores)
        chance = chance or ev.get("chance_cmc", {}).get(target, {}).get(protocol)
    if chance:
        ax.plot(range(1, len(chance) + 1), [100 * v for v in chance], linestyle="--", color="0.4",
                label=f"chance: random ranking (R1 {100 * chance[0]:.1f})")
    else:
        logger.warning("CMC %s/%s: no chance curve (the runs' metrics.json predate chance_cmc)", target, protocol)
    ax.set(xlabel="rank", ylabel="matching rate (%)", title=f"{target}, {protocol} protocol ({which} evaluation)",
           ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def write_comparison(runs: Sequence[Run], output: str, which: str = "last") -> Tuple[str, Dict[str, str]]:
    """Writes ``table.md`` and ``cmc_<target>_<protocol>.png`` into ``output``; returns the table and the plots."""
    os.makedirs(output, exist_ok=True)
    table = comparison_table(runs, which)
    with open(osp.join(output, "table.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    plots = {}
    for target, proto in _groups(runs, which):
        path = osp.join(output, f"cmc_{target}_{proto}.png")
        plot_cmc(runs, which, target, proto, path)
        plots[f"{target}/{proto}"] = path
    return table, plots


#: Keys in which runs of one group may differ: the seed, and where each run wrote.
_NOT_GROUPED = ("train.seed", "data.save_dir")


def _run_config(run_dir: str) -> Dict[str, Any]:
    """The run's merged ``config.yaml`` as flat ``section.key`` entries, without :data:`_NOT_GROUPED`.

    Raises:
        ConfigError: the folder has no readable ``config.yaml`` (named).
    """
    import yaml

    path = osp.join(run_dir, "config.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--group reads each run's config.yaml; '{path}' cannot be read ({type(err).__name__})") \
            from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"--group reads each run's config.yaml; '{path}' is not a config")
    return {k: v for k, v in flatten_config(cfg).items() if k not in _NOT_GROUPED}


def _group_label(run_dir: str) -> str:
    """A group's default label from its first run's folder: ``.../ce_only_seed3`` -> ``ce_only``,
    ``.../ce_only/seed3`` -> ``ce_only``."""
    name = osp.basename(osp.normpath(run_dir))
    if re.fullmatch(r"seed\d+", name):
        return osp.basename(osp.dirname(osp.normpath(run_dir))) or name
    return re.sub(r"[_-]?seed\d+$", "", name) or name


def group_runs(run_dirs: Sequence[str], which: str = "last", labels: Optional[Sequence[str]] = None
               ) -> Dict[str, Dict[int, dict]]:
    """``{group label: {seed: per-run structure}}`` (:mod:`clip3dreid_plugin.study.run_records`'s), runs grouped by
    their ``config.yaml`` minus seed and output folder, groups in first-seen order; a group's label is its first
    run's (``labels`` or :func:`_group_label`).

    Raises:
        ConfigError: a run has no ``config.yaml``, or two runs of one group have the same seed.
    """
    groups: List[Tuple[Dict[str, Any], str, Dict[int, dict]]] = []
    labels = list(labels) if labels else [_group_label(d) for d in run_dirs]
    for label, d in zip(labels, run_dirs):
        cfg, rec = _run_config(d), read_metrics(d)
        ev = rec.get(which, {})
        run = {"label": label, "seed": int(rec.get("seed", 0)), "source": d, "legacy": False,
               "metrics": ev.get("metrics", {}), "cmc": ev.get("cmc", {}), "chance_cmc": ev.get("chance_cmc", {})}
        for key, name, by_seed in groups:
            if key == cfg:
                if run["seed"] in by_seed:
                    raise ConfigError(f"--group: '{by_seed[run['seed']]['source']}' and '{d}' have one config and "
                                      f"one seed ({run['seed']}); compare them with the per-run table")
                by_seed[run["seed"]] = run
                break
        else:
            groups.append((cfg, label, {run["seed"]: run}))
    out: Dict[str, Dict[int, dict]] = {}
    for _, label, by_seed in groups:
        name, k = label, 2
        while name in out:  # two groups from folders of one name: keep both, numbered
            name, k = f"{label} ({k})", k + 1
        out[name] = by_seed
    return out


def write_grouped_comparison(run_dirs: Sequence[str], output: str, which: str = "last",
                             labels: Optional[Sequence[str]] = None) -> Tuple[str, Dict[str, str]]:
    """Writes ``table.md`` (one row per group, the first group the reference) and the CMC bands into ``output``."""
    from clip3dreid_plugin.study.summary import markdown, plot_cmc_bands, summarise

    groups = group_runs(run_dirs, which, labels)
    order = list(groups)
    summary = summarise(groups, order[0], order)
    table = markdown(summary)
    os.makedirs(output, exist_ok=True)
    with open(osp.join(output, "table.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    return table, plot_cmc_bands(groups, [tuple(g) for g in summary["groups"]], output, order)


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = CLIParser(description="Compare clip3dreid-train runs: a markdown table and CMC plots.")
    p.add_argument("run_dirs", nargs="+", help="output folders of clip3dreid-train runs (each holds metrics.json)")
    p.add_argument("--which", default="last", choices=["last", "best"],
                   help="the last evaluation (default) or the one that picked model-best")
    p.add_argument("--labels", nargs="+", default=None, help="row labels, one per run (default: folder names)")
    p.add_argument("--output", default=".", help="folder for table.md and the CMC plots (default: here)")
    p.add_argument("--group", action="store_true",
                   help="one row per recipe and options (config.yaml but the seed): mean ± sd over seeds and the "
                        "paired difference from the first group [95%% CI]")
    args = p.parse_args(argv)
    start_cli(stream=sys.stderr)  # stdout carries the table
    if args.labels and len(args.labels) != len(args.run_dirs):
        raise ConfigError(f"--labels needs one label per run ({len(args.run_dirs)}), got {len(args.labels)}")
    if args.group:
        table, plots = write_grouped_comparison(args.run_dirs, args.output, args.which, args.labels)
    else:
        table, plots = write_comparison(load_runs(args.run_dirs, args.labels), args.output, args.which)
    print(table)
    for name, path in plots.items():
        logger.info("CMC %s -> %s", name, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

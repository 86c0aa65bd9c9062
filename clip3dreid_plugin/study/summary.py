"""A study's summary: per row and per (target, protocol), mean ± sd over seeds of mAP and rank-1, the paired
difference from the reference row with its 95% t interval, the chance row; the markdown table and the CMC bands.

Input: ``{label: {seed: run}}`` of per-run structures (:func:`clip3dreid_plugin.study.run_records.load_run`).
``summary.json`` (:func:`summarise`; points, i.e. percent)::

    {"reference": "baseline", "groups": [["ltcc", "general"], ["ltcc", "cc"]],
     "rows": {label: {"seeds": [1, 2, 3],
                      "metrics": {"ltcc/cc": {"mAP": {"mean", "sd", "n"}, "rank1": {...}}},
                      "paired": {"ltcc/cc": {"mAP": {"mean", "ci95", "sd", "n", "seeds"}, "rank1": {...}}}}},
     "chance": {"ltcc": {"cc": {"mAP", "rank1", "rank1_sd"}}}}   # fractions, as chance_level returns them

The reference row has no ``paired`` entry; ``ci95`` (the half-width) and ``sd`` are nan with one seed.
"""
from __future__ import annotations

import logging
import math
import os
import os.path as osp
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from clip3dreid_plugin.study.run_records import protocols_of
from clip3dreid_plugin.study.stats import mean_sd, paired_difference

__all__ = ["groups_of", "summarise", "markdown", "plot_cmc_bands"]

logger = logging.getLogger(__name__)

Runs = Mapping[str, Mapping[int, dict]]  # label -> seed -> per-run structure
_KEYS = (("mAP", "mAP"), ("rank1", "rank1"))  # (summary key, metric suffix in metrics.json)


def groups_of(runs: Runs, protocols: Optional[Sequence[str]] = None,
              targets: Sequence[str] = ()) -> List[Tuple[str, str]]:
    """``(target, protocol)`` pairs any run has, targets in the order of ``targets`` (the recipe's ``data.targets``)
    then first-seen; only ``protocols`` when given (in their order)."""
    groups: List[Tuple[str, str]] = []
    for by_seed in runs.values():
        for run in by_seed.values():
            for target, metrics in run["metrics"].items():
                found = protocols_of(metrics)
                for proto in (protocols if protocols is not None else found):
                    if proto in found and (target, proto) not in groups:
                        groups.append((target, proto))
    targets = list(dict.fromkeys([*[t for t in targets if any(g[0] == t for g in groups)], *(t for t, _ in groups)]))
    order = list(protocols) if protocols is not None else []
    return sorted(groups, key=lambda g: (targets.index(g[0]), order.index(g[1]) if g[1] in order else 0))


def _values(by_seed: Mapping[int, dict], target: str, proto: str, key: str) -> Dict[int, float]:
    """``{seed: metric in points}`` of the runs that have it."""
    out = {}
    for seed, run in by_seed.items():
        m = run["metrics"].get(target, {})
        if f"{proto}_{key}" in m:
            out[seed] = 100 * float(m[f"{proto}_{key}"])
    return out


def summarise(runs: Runs, reference: str, order: Sequence[str], protocols: Optional[Sequence[str]] = None,
              chance: Optional[dict] = None, targets: Sequence[str] = ()) -> dict:
    """The summary (module docstring) of the rows in ``order`` that have at least one run (``protocols`` and
    ``targets`` as :func:`groups_of` takes them)."""
    groups = groups_of(runs, protocols, targets)
    ref = runs.get(reference, {})
    rows = {}
    for label in order:
        by_seed = runs.get(label)
        if not by_seed:
            continue
        entry: dict = {"seeds": sorted(by_seed), "metrics": {}, "paired": {}}
        for target, proto in groups:
            name = f"{target}/{proto}"
            for key, suffix in _KEYS:
                vals = _values(by_seed, target, proto, suffix)
                if not vals:
                    continue
                m, sd = mean_sd([vals[s] for s in sorted(vals)])
                entry["metrics"].setdefault(name, {})[key] = {"mean": m, "sd": sd, "n": len(vals)}
                if label != reference:
                    diff = paired_difference(vals, _values(ref, target, proto, suffix))
                    if diff["n"]:
                        entry["paired"].setdefault(name, {})[key] = diff
        rows[label] = entry
    return {"reference": reference, "groups": [list(g) for g in groups], "rows": rows, "chance": chance or {}}


def _seeds_note(n: int) -> str:
    return f" ({n} seed)" if n == 1 else ""


def _cell(stat: Optional[dict]) -> str:
    if not stat:
        return "-"
    if math.isnan(stat["sd"]):
        return f"{stat['mean']:.1f}{_seeds_note(stat['n'])}"
    return f"{stat['mean']:.1f} ± {stat['sd']:.1f}"


def _diff(paired: Optional[dict]) -> str:
    if not paired:
        return "-"
    m, hw = paired["mean"], paired["ci95"]
    if math.isnan(hw):
        return f"{m:+.1f}{_seeds_note(paired['n'])}"
    return f"{m:+.1f} [{m - hw:+.1f}, {m + hw:+.1f}]"


def markdown(summary: dict) -> str:
    """One markdown table: per row its seeds, then per (target, protocol) mAP and R1 (mean ± sd over seeds, %) and
    their paired differences from the reference row (mean [95% t interval], points); the chance row last."""
    groups = [tuple(g) for g in summary["groups"]]
    ref = summary["reference"]
    head = ["row", "seeds"]
    for t, p in groups:
        head += [f"{t} {p} mAP", f"{t} {p} R1"]
    for t, p in groups:
        head += [f"Δ {t} {p} mAP [95% CI]", f"Δ {t} {p} R1 [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, e in summary["rows"].items():
        cells = [label + (" (reference)" if label == ref else ""), str(len(e["seeds"]))]
        for t, p in groups:
            m = e["metrics"].get(f"{t}/{p}", {})
            cells += [_cell(m.get("mAP")), _cell(m.get("rank1"))]
        for t, p in groups:
            d = e["paired"].get(f"{t}/{p}", {})
            cells += [_diff(d.get("mAP")), _diff(d.get("rank1"))]
        lines.append("| " + " | ".join(cells) + " |")
    chance = summary.get("chance") or {}
    if chance:
        cells = ["chance (random ranking)", "-"]
        for t, p in groups:
            c = chance.get(t, {}).get(p)
            cells += [f"{100 * c['mAP']:.1f}", f"{100 * c['rank1']:.1f}"] if c else ["-", "-"]
        cells += ["-"] * (2 * len(groups))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_cmc_bands(runs: Runs, groups: Sequence[Tuple[str, str]], output: str,
                   order: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """Writes ``output/cmc_<target>_<protocol>.png``: per row the mean CMC over its seeds with a ±1 sd band, and the
    expected CMC of a random ranking (dashed) when the runs recorded it.

    Rows without CMC curves (legacy records) are left out of the plot; a group no row has a curve for gets no file.

    Returns:
        ``{"target/protocol": path}`` of the files written.
    """
    import matplotlib  # slow to import: only the plots need it
    import numpy as np

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    os.makedirs(output, exist_ok=True)
    written = {}
    for target, proto in groups:
        curves = {}
        chance = None
        for label in (order or list(runs)):
            found = [run["cmc"][target][proto] for run in runs.get(label, {}).values()
                     if run.get("cmc", {}).get(target, {}).get(proto)]
            if found:
                length = min(len(c) for c in found)
                curves[label] = 100 * np.array([c[:length] for c in found], dtype=float)
            for run in runs.get(label, {}).values():
                chance = chance or run.get("chance_cmc", {}).get(target, {}).get(proto)
        if not curves:
            logger.info("CMC %s/%s: no run recorded a CMC curve (legacy records); no plot", target, proto)
            continue
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for label, arr in curves.items():
            ranks = np.arange(1, arr.shape[1] + 1)
            mean = arr.mean(axis=0)
            line, = ax.plot(ranks, mean, label=f"{label} ({arr.shape[0]} seed{'s' if arr.shape[0] > 1 else ''})")
            if arr.shape[0] > 1:
                sd = arr.std(axis=0, ddof=1)
                ax.fill_between(ranks, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
        if chance:
            ax.plot(range(1, len(chance) + 1), [100 * v for v in chance], linestyle="--", color="0.4",
                    label="chance: random ranking")
        ax.set(xlabel="rank", ylabel="matching rate (%)", ylim=(0, 100),
               title=f"{target}, {proto} protocol: mean ± sd over seeds")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
        fig.tight_layout()
        path = osp.join(output, f"cmc_{target}_{proto}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written[f"{target}/{proto}"] = path
    return written

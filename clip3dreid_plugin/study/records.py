"""The method study's committed results that the package reads: the seed spread behind the quickstart's verdict.

``benchmarks/method_study.py --seed-spread PATH`` writes the record from its summary (``--seed-spread`` of the
committed campaign: :data:`SEED_SPREAD_FILE`, installed with the package). Format (JSON)::

    {"metric": "cc_mAP",
     "source": "benchmarks/method_study.py, summary of benchmarks/results/method_study",
     "rows": {"<quickstart row label>": {"row": "<method-study row>", "sd": <points>, "n": <seeds>}, ...}}

``sd`` is the sample standard deviation over seeds of the paired difference method - baseline of the metric, in
points, for the study row whose options that row of the quickstart's table runs (:data:`QUICKSTART_ROWS`).
"""
from __future__ import annotations

import json
import os.path as osp
from typing import Dict, Optional, Tuple

from clip3dreid_plugin.errors import InputError
from clip3dreid_plugin.utils.io import atomic_write_json

__all__ = ["QUICKSTART_ROWS", "SEED_SPREAD_FILE", "read_seed_spread", "seed_spread_record", "write_seed_spread"]

#: The committed seed-spread record (written by the method study, read by the quickstart's verdict).
SEED_SPREAD_FILE = osp.join(osp.dirname(osp.abspath(__file__)), "seed_spread.json")
#: The method-study row that each row of the quickstart's table repeats, by the quickstart's row label. No entry for
#: ``clip3dreid (teacher: clip)``: no CLIP weights were at hand to measure it.
QUICKSTART_ROWS = {"clip3dreid (teacher: ideal)": "full_ideal_global_mean",
                   "clip3dreid (teacher: stand-in)": "full_standin",
                   "cal (clothes labels)": "cal"}
METRIC = "cc_mAP"


def seed_spread_record(summary: dict, source: str = "") -> dict:
    """The record of :data:`QUICKSTART_ROWS` from a method-study summary (``summarise``'s output); a row with no
    paired difference over two or more seeds is left out, not guessed."""
    rows = {}
    for label, row in QUICKSTART_ROWS.items():
        paired = summary.get("rows", {}).get(row, {}).get("paired", {}).get(METRIC)
        if paired and paired["n"] > 1:
            rows[label] = {"row": row, "sd": paired["sd"], "n": paired["n"]}
    return {"metric": METRIC, "source": source, "rows": rows}


def write_seed_spread(summary: dict, path: str, source: str = "") -> dict:
    """Writes :func:`seed_spread_record` to ``path`` (atomically); returns it."""
    record = seed_spread_record(summary, source)
    atomic_write_json(record, path)
    return record


def read_seed_spread(path: str = SEED_SPREAD_FILE) -> Optional[Dict[str, Tuple[float, int]]]:
    """``{quickstart row label: (sd in points, seeds)}`` from the record at ``path``; None when there is no such file.

    Raises:
        InputError: the file is not a seed-spread record (named).
    """
    if not osp.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if record.get("metric") != METRIC:
            raise ValueError(f"its metric is {record.get('metric')!r}, not {METRIC!r}")
        return {label: (float(e["sd"]), int(e["n"])) for label, e in record["rows"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"'{path}' is not a seed-spread record of the method study ({err})") from None

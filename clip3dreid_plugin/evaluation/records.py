"""``metrics.json``: what a run evaluated, written into its output folder and read by ``clip3dreid-compare``.

Layout::

    {"model": "clip3dreid", "seed": 1, "config_file": "...", "config_sha256": "...",
     "last": {"epoch": 12, "metrics": {target: {"general_mAP": ..., "general_rank1": ..., ...}},
              "cmc": {target: {protocol: [CMC at ranks 1..max_rank]}},
              "chance_cmc": {target: {protocol: [the expected CMC of a random ranking]}}},
     "best": {... the evaluation that picked model-best ...}}

Metrics are fractions; ``epoch`` 0 marks an evaluation-only run.
"""
from __future__ import annotations

import hashlib
import json
import os.path as osp
from typing import Any, Dict

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.utils.io import atomic_write_json

__all__ = ["METRICS_NAME", "read_metrics", "write_metrics"]

METRICS_NAME = "metrics.json"


def write_metrics(save_dir: str, cfg, evaluations: Dict[str, dict], config_file: str = "") -> str:
    """Writes ``save_dir/metrics.json`` atomically; returns its path.

    Args:
        save_dir: the run's output folder.
        cfg: the merged config (its dump is hashed, so two runs with one recipe and one override differ).
        evaluations: ``{"last": ..., "best": ...}`` from the engine (``ClothesAwareEngineMixin.evaluations``).
        config_file: the recipe the run started from.
    """
    record: Dict[str, Any] = {
        "model": cfg.model.name,
        "seed": int(cfg.train.seed),
        "config_file": config_file,
        "config_sha256": hashlib.sha256(cfg.dump().encode("utf-8")).hexdigest(),
        "targets": list(cfg.data.targets),
    }
    record.update(evaluations)
    return atomic_write_json(record, osp.join(save_dir, METRICS_NAME))


def read_metrics(run_dir: str) -> Dict[str, Any]:
    """Reads ``run_dir/metrics.json`` (or the file itself).

    Raises:
        ConfigError: the file is missing or not a run record (the message names it).
    """
    path = run_dir if run_dir.endswith(".json") else osp.join(run_dir, METRICS_NAME)
    if not osp.isfile(path):
        raise ConfigError(f"no {METRICS_NAME} in '{run_dir}': is it the output folder of a clip3dreid-train run?")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"'{path}' is not a readable {METRICS_NAME} ({type(err).__name__})") from None
    if not isinstance(record, dict) or "last" not in record:
        raise ConfigError(f"'{path}' is not a run record (no 'last' evaluation)")
    return record

"""The records of a study's runs: ``study_run.json`` (a finished run and the config it ran), and one reader that
turns a run folder or a legacy method-study record into the same per-run structure.

A run of row ``L`` and seed ``k`` lives in ``OUTPUT/L/seed<k>/``: ``config.yaml`` and ``metrics.json`` from the
trainer, then ``study_run.json``, written last (atomically), so a folder without it is a run cut short::

    {"fingerprint": {<every merged config key but data.save_dir and runtime.device>: value, "scheme": 2},
     "config": "ltcc/resnet50_baseline_384x192", "opts": [...], "seed": 1,
     "code": "<commit>[+dirty]", "device": "cuda:0", "minutes": 12.3}

A legacy record is ``OUTPUT/L_seed<k>.json`` as ``benchmarks/method_study.py`` wrote them (``metrics`` holds
``general_mAP``, ``cc_rank1``, ... of the recipe's one target, as fractions; no CMC curve, no fingerprint).

The per-run structure both give (:func:`load_run`)::

    {"label": "baseline", "seed": 1, "source": "<file>", "legacy": False,
     "metrics": {target: {"general_mAP": ..., "general_rank1": ..., ...}},
     "cmc": {target: {protocol: [CMC at ranks 1..]}}, "chance_cmc": {target: {protocol: [...]}}}
"""
from __future__ import annotations

import json
import os.path as osp
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from clip3dreid_plugin.config.flat import flatten_config
from clip3dreid_plugin.errors import ConfigError
from clip3dreid_plugin.evaluation.records import read_metrics
from clip3dreid_plugin.utils.artefact import fingerprint, fingerprint_diff
from clip3dreid_plugin.utils.io import atomic_write_json

__all__ = ["STUDY_RUN_NAME", "run_dir", "legacy_path", "config_fingerprint", "run_config_diff", "write_study_run",
           "read_study_run", "legacy_run", "load_run", "protocols_of"]

STUDY_RUN_NAME = "study_run.json"
#: Config keys that do not change what a run measures: where it writes, and on which device it ran (recorded apart).
_NOT_FINGERPRINTED = ("data.save_dir", "runtime.device")


def run_dir(output: str, label: str, seed: int) -> str:
    """The folder of row ``label``'s run under ``seed``."""
    return osp.join(output, label, f"seed{seed}")


def legacy_path(output: str, label: str, seed: int) -> str:
    """Where ``benchmarks/method_study.py`` wrote the same run's record."""
    return osp.join(output, f"{label}_seed{seed}.json")


def config_fingerprint(cfg) -> Dict[str, Any]:
    """The fingerprint of a run's merged config: every key (``section.key``) but :data:`_NOT_FINGERPRINTED`, so
    that :func:`~clip3dreid_plugin.utils.artefact.fingerprint_diff` names the keys two runs differ in."""
    flat = {k: v for k, v in flatten_config(cfg).items() if k not in _NOT_FINGERPRINTED}
    return fingerprint(flat)


def run_config_diff(old: Mapping[str, Any], new: Mapping[str, Any],
                    defaults: Mapping[str, Any]) -> Tuple[List[str], List[str]]:
    """How a finished run's fingerprint differs from its row's config now.

    A key the run's record lacks is one the plugin added after the run; when the row leaves it at its default
    (``defaults``: :func:`config_fingerprint` of the default config) the run ran as the row asks today (a new key's
    default keeps the old behaviour), so it is not a difference: a multi-day study must survive a new option.

    Returns:
        ``(lines, added)``: the ``key: old -> new`` lines of every real difference, and the keys added since the
        run at their defaults.
    """
    if old.get("scheme") != new.get("scheme"):
        return fingerprint_diff(old, new), []  # its one "older plugin version" line, as before
    added = sorted(k for k in new if k not in old and k in defaults and new[k] == defaults[k])
    keys = sorted((set(old) | set(new)) - set(added))
    return fingerprint_diff(old, new, keys=keys), added


def write_study_run(folder: str, fp: Mapping[str, Any], config: str, opts: Sequence[str], seed: int, code: str,
                    device: str, minutes: float) -> str:
    """Writes ``folder/study_run.json`` atomically (the run's last file); returns its path."""
    record = {"fingerprint": dict(fp), "config": config, "opts": list(opts), "seed": seed, "code": code,
              "device": device, "minutes": minutes}
    return atomic_write_json(record, osp.join(folder, STUDY_RUN_NAME))


def read_study_run(folder: str) -> Optional[dict]:
    """``folder/study_run.json``, or None when the run never finished.

    Raises:
        ConfigError: the file exists but is not a study-run record (named).
    """
    path = osp.join(folder, STUDY_RUN_NAME)
    if not osp.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if not isinstance(record.get("fingerprint"), dict):
            raise ValueError("no fingerprint")
    except (OSError, ValueError, AttributeError) as err:
        raise ConfigError(f"'{path}' is not a study-run record ({err}); delete its folder to retrain it") from None
    return record


def legacy_run(record: Mapping[str, Any], target: str, source: str = "") -> dict:
    """The per-run structure of a legacy method-study record (``metrics`` of ``target`` as fractions, no CMC).

    Raises:
        ConfigError: the record has no ``row``, ``seed`` or ``metrics`` (the message names ``source``).
    """
    if not all(k in record for k in ("row", "seed", "metrics")) or not isinstance(record["metrics"], dict):
        raise ConfigError(f"'{source}' is not a method-study record (keys row, seed, metrics)")
    return {"label": record["row"], "seed": int(record["seed"]), "source": source, "legacy": True,
            "metrics": {target: dict(record["metrics"])}, "cmc": {}, "chance_cmc": {}}


def load_run(output: str, label: str, seed: int, legacy_target: str = "") -> Optional[dict]:
    """The finished run of ``label`` under ``seed`` as the per-run structure, or None when there is none.

    A run folder counts once its ``study_run.json`` exists (the ``last`` evaluation of its ``metrics.json``); without
    a folder, a legacy record ``OUTPUT/<label>_seed<k>.json`` is read, its metrics credited to ``legacy_target``.
    """
    folder = run_dir(output, label, seed)
    if read_study_run(folder) is not None:
        last = read_metrics(folder)["last"]
        return {"label": label, "seed": seed, "source": osp.join(folder, "metrics.json"), "legacy": False,
                "metrics": last.get("metrics", {}), "cmc": last.get("cmc", {}),
                "chance_cmc": last.get("chance_cmc", {})}
    path = legacy_path(output, label, seed)
    if osp.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError) as err:
            raise ConfigError(f"'{path}' is not a readable method-study record ({type(err).__name__})") from None
        return legacy_run(record, legacy_target, path)
    return None


def protocols_of(metrics: Mapping[str, float]) -> List[str]:
    """The protocols a target's metrics hold (``general_mAP`` -> ``general``), in the usual order."""
    order = ("general", "sc", "cc")
    found = [k[: -len("_mAP")] for k in metrics if k.endswith("_mAP")]
    return sorted(found, key=lambda p: (order.index(p) if p in order else len(order), p))

"""A study file (``clip3dreid-study STUDY.yaml``): rows of recipes, trained over seeds and compared with a reference.

Format (YAML)::

    output: work_dirs/studies/ltcc        # folder of the runs and the summary (relative to the current directory)
    seeds: [1, 2, 3]
    reference: baseline                    # a row label: paired differences are taken against it
    opts: [data.root, "${REID_DATA}"]      # KEY VALUE overrides for every row (before the row's own)
    device: cpu                            # optional; --device overrides it
    chance_draws: 200                      # optional (default 200); 0 = no chance row
    protocols: [general, cc]               # optional: the table's protocols (default: every one the runs have)
    keep_checkpoints: true                 # optional (default true): false deletes each run's model/ folder
    rows:
      - label: baseline
        config: ltcc/resnet50_baseline_384x192   # a recipe name or path, as clip3dreid-train --config-file takes
        opts: []

``${VAR}`` in any string is replaced by the environment variable ``VAR`` (quote it inside a YAML flow list, as
above). Every mistake (an unknown or missing key, a wrong type, a duplicate label, a reference that is not a row, an
unset variable) is one :class:`ConfigError` naming the file and the key.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from clip3dreid_plugin.config.loader import find_named_yaml
from clip3dreid_plugin.errors import ConfigError

__all__ = ["STUDIES_DIR", "StudyRow", "Study", "read_study", "resolve_study_file", "shipped_studies"]

#: The study files installed with the package, one per cloth-changing dataset (``clip3dreid-study ltcc``).
STUDIES_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "studies")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REQUIRED = ("output", "seeds", "reference", "opts", "rows")
_OPTIONAL = {"device": None, "chance_draws": 200, "protocols": None, "keep_checkpoints": True}
_ROW_KEYS = ("label", "config", "opts")


@dataclass
class StudyRow:
    """One row: a label, the recipe (name or path) and its own ``KEY VALUE`` overrides."""

    label: str
    config: str
    opts: List[str] = field(default_factory=list)


@dataclass
class Study:
    """A parsed, checked study file (see the module docstring for the meaning of each field)."""

    path: str
    output: str
    seeds: List[int]
    reference: str
    opts: List[str]
    rows: List[StudyRow]
    device: Optional[str] = None
    chance_draws: int = 200
    protocols: Optional[List[str]] = None
    keep_checkpoints: bool = True

    def row(self, label: str) -> StudyRow:
        return next(r for r in self.rows if r.label == label)

    def row_opts(self, row: StudyRow) -> List[str]:
        """The overrides of ``row``: the study's, then the row's own (the later one wins)."""
        return [*self.opts, *row.opts]


def _expand(value: Any, path: str, key: str) -> Any:
    """``${VAR}`` replaced in every string of ``value`` (lists and dicts walked)."""
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            if m.group(1) not in os.environ:
                raise ConfigError(f"study file '{path}': {key} uses ${{{m.group(1)}}}, but the environment variable "
                                  f"{m.group(1)} is not set")
            return os.environ[m.group(1)]

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, path, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand(v, path, f"{key}.{k}") for k, v in value.items()}
    return value


def _opts(value: Any, path: str, key: str) -> List[str]:
    """A ``KEY VALUE`` list as strings (YAML reads ``[train.max_epoch, 1]``'s 1 as a number)."""
    if not isinstance(value, list):
        raise ConfigError(f"study file '{path}': {key} must be a list of KEY VALUE words, got {type(value).__name__}")
    if len(value) % 2:
        raise ConfigError(f"study file '{path}': {key} takes KEY VALUE pairs, got {len(value)} words: {value}")
    words = []
    for v in value:
        if isinstance(v, (dict, list)):
            raise ConfigError(f"study file '{path}': {key} holds {v!r}; write a list value as one string, "
                              f"e.g. \"['ltcc']\"")
        words.append(str(v))  # yacs reads a value as a Python literal: 1, 0.05, True
    return words


def _unknown(keys, allowed, path: str, where: str) -> None:
    extra = [k for k in keys if k not in allowed]
    if extra:
        raise ConfigError(f"study file '{path}': unknown key '{extra[0]}' in {where} (keys: {', '.join(allowed)})")


def shipped_studies() -> List[str]:
    """The names of the installed study files (``ltcc``, ``prcc``, ...)."""
    return sorted(osp.splitext(osp.basename(p))[0] for p in glob.glob(osp.join(STUDIES_DIR, "*.yaml")))


def resolve_study_file(name: str) -> str:
    """``name`` as a path when that file exists, else an installed study file's name (``ltcc``, ``.yaml`` optional).

    Raises:
        ConfigError: neither (the message lists the installed ones).
    """
    path = find_named_yaml(name, [STUDIES_DIR])
    if path is None:
        raise ConfigError(f"study file '{name}' not found: neither a file nor one of the installed studies "
                          f"({', '.join(shipped_studies())})")
    return path


def read_study(path: str) -> Study:
    """Reads and checks a study file.

    Raises:
        ConfigError: the file is missing or unreadable, or any key is wrong (the message names the file and key).
    """
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as err:
        raise ConfigError(f"study file '{path}' cannot be read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"study file '{path}' is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"study file '{path}' must be a YAML mapping with keys {', '.join(_REQUIRED)}")
    _unknown(raw, (*_REQUIRED, *_OPTIONAL), path, "the study")
    for key in _REQUIRED:
        if key not in raw:
            raise ConfigError(f"study file '{path}': missing key '{key}'")
    raw = {k: _expand(v, path, k) for k, v in raw.items()}
    if not isinstance(raw["output"], str) or not raw["output"]:
        raise ConfigError(f"study file '{path}': output must be a folder name, got {raw['output']!r}")
    seeds = raw["seeds"]
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds) or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"study file '{path}': seeds must be a non-empty list of distinct integers, got {seeds!r}")
    if not isinstance(raw["rows"], list) or not raw["rows"]:
        raise ConfigError(f"study file '{path}': rows must be a non-empty list of {{label, config, opts}}")
    rows: List[StudyRow] = []
    for i, r in enumerate(raw["rows"]):
        where = f"rows[{i}]"
        if not isinstance(r, dict):
            raise ConfigError(f"study file '{path}': {where} must be a mapping with keys {', '.join(_ROW_KEYS)}")
        _unknown(r, _ROW_KEYS, path, where)
        for key in ("label", "config"):
            if not isinstance(r.get(key), str) or not r[key]:
                raise ConfigError(f"study file '{path}': {where}.{key} is missing or not a string")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", r["label"]):
            raise ConfigError(f"study file '{path}': {where}.label {r['label']!r} must be a folder name "
                              "(letters, digits, _ . + -)")
        if any(x.label == r["label"] for x in rows):
            raise ConfigError(f"study file '{path}': {where}.label {r['label']!r} is a duplicate label")
        rows.append(StudyRow(r["label"], r["config"], _opts(r.get("opts", []), path, f"{where}.opts")))
    if raw["reference"] not in [r.label for r in rows]:
        raise ConfigError(f"study file '{path}': reference {raw['reference']!r} is not a row label "
                          f"({', '.join(r.label for r in rows)})")
    opt: Dict[str, Any] = {k: raw.get(k, v) for k, v in _OPTIONAL.items()}
    if opt["device"] is not None and not isinstance(opt["device"], str):
        raise ConfigError(f"study file '{path}': device must be a string such as cpu or cuda:0")
    if not isinstance(opt["chance_draws"], int) or isinstance(opt["chance_draws"], bool) or opt["chance_draws"] < 0:
        raise ConfigError(f"study file '{path}': chance_draws must be an integer >= 0, got {opt['chance_draws']!r}")
    if opt["protocols"] is not None and not (isinstance(opt["protocols"], list) and opt["protocols"]
                                             and all(isinstance(p, str) for p in opt["protocols"])):
        raise ConfigError(f"study file '{path}': protocols must be a list such as [general, cc]")
    if not isinstance(opt["keep_checkpoints"], bool):
        raise ConfigError(f"study file '{path}': keep_checkpoints must be true or false")
    return Study(path=path, output=raw["output"], seeds=seeds, reference=raw["reference"],
                 opts=_opts(raw["opts"], path, "opts"), rows=rows, **opt)

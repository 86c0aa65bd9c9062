"""YAML loading with ``_BASE_`` inheritance and strict key checking."""
from __future__ import annotations

import os.path as osp
from typing import Any, Dict, List, Optional, Sequence

import yaml
from yacs.config import CfgNode as CN

from clip3dreid_plugin.config.defaults import get_cfg
from clip3dreid_plugin.errors import ConfigError

__all__ = ["ConfigError", "find_named_yaml", "load_config", "load_yaml_with_base", "recipe_dirs",
           "resolve_config_file"]

BASE_KEY = "_BASE_"


def recipe_dirs() -> List[str]:
    """Folders holding the recipes: the installed copy, and in a source checkout its top-level ``configs/``."""
    package = osp.dirname(osp.dirname(osp.abspath(__file__)))
    # setup.py installs configs/ as clip3dreid_plugin/configs; an editable install or a checkout reads configs/.
    found = []
    for folder in (osp.join(package, "configs"), osp.join(osp.dirname(package), "configs")):
        if osp.isfile(osp.join(folder, "_base_", "reid_base.yaml")) and folder not in found:
            found.append(folder)
    return found


def find_named_yaml(name: str, folders: Sequence[str]) -> Optional[str]:
    """``name`` as a path when that file exists, else the first ``folder/name`` or ``folder/name.yaml`` found in
    ``folders``; None when there is none. The one lookup of a YAML file given by path or by installed name."""
    if osp.isfile(name):
        return name
    for folder in folders:
        for candidate in (name, name + ".yaml"):
            path = osp.join(folder, candidate)
            if osp.isfile(path):
                return path
    return None


def resolve_config_file(name: str) -> str:
    """``name`` as a path when that file exists, else a recipe name such as ``ltcc/clip3dreid_r50_vitl14_384x192``
    (``.yaml`` optional) looked up in :func:`recipe_dirs`.

    Raises:
        ConfigError: neither a file nor a recipe (the message lists where it looked).
    """
    path = find_named_yaml(name, recipe_dirs())
    if path is None:
        raise ConfigError(f"config file not found: '{name}' is neither a file nor a recipe under "
                          f"{recipe_dirs() or 'the installed recipes (none found)'}")
    return path


def _deep_merge(base: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml_with_base(path: str, _seen: Optional[List[str]] = None) -> Dict[str, Any]:
    """Reads ``path`` and recursively merges its ``_BASE_`` file(s) underneath it.

    ``_BASE_`` may be a string or a list; relative paths resolve against the including file.
    """
    path = osp.abspath(path)
    seen = list(_seen or [])
    if path in seen:
        raise ConfigError(f"config inheritance cycle: {' -> '.join(seen + [path])}")
    if not osp.isfile(path):
        raise ConfigError(f"config file not found: '{path}'")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            # safe_load builds only plain data, so a '!!python/...' tag ends here too; the message stays one line
            raise ConfigError(f"cannot parse YAML '{path}': {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config '{path}' must be a mapping at top level")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    merged: Dict[str, Any] = {}
    for b in [bases] if isinstance(bases, str) else list(bases):
        bpath = b if osp.isabs(b) else osp.join(osp.dirname(path), b)
        merged = _deep_merge(merged, load_yaml_with_base(bpath, seen + [path]))
    return _deep_merge(merged, data)


def _check_keys(node: CN, data: Dict[str, Any], source: str, prefix: str = "") -> None:
    for k, v in data.items():
        full = f"{prefix}{k}"
        if k not in node:
            close = [c for c in node.keys() if c[:3] == k[:3]]
            hint = f" (did you mean {', '.join(prefix + c for c in close)}?)" if close else ""
            raise ConfigError(f"unknown config key '{full}' in {source}{hint}")
        if isinstance(v, dict):
            if not isinstance(node[k], CN):
                raise ConfigError(f"config key '{full}' in {source} is a value, not a section")
            _check_keys(node[k], v, source, full + ".")


def load_config(config_file: Optional[str] = None, opts: Sequence[str] = ()) -> CN:
    """Builds the full config: defaults, then ``config_file`` (with bases), then ``KEY VALUE`` opts.

    Args:
        config_file: a YAML path, or a recipe name (see :func:`resolve_config_file`); empty for the defaults.
        opts: ``KEY VALUE`` overrides.

    Raises:
        ConfigError: a file is missing or malformed, or a key is unknown (named in the message).
    """
    cfg = get_cfg()
    if config_file:
        data = load_yaml_with_base(resolve_config_file(config_file))
        _check_keys(cfg, data, f"'{config_file}'")
        try:
            cfg.merge_from_other_cfg(CN(data))
        except (KeyError, ValueError, TypeError) as err:
            raise ConfigError(f"invalid value in '{config_file}': {err}") from None
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd list: {opts}")
    for i, key in enumerate(opts[0::2]):
        node = cfg
        parts = key.split(".")
        for p in parts:
            if not isinstance(node, CN) or p not in node:
                raise ConfigError(f"unknown config key '{key}' on the command line")
            node = node[p]
        value = opts[2 * i + 1]
        if isinstance(node, (list, tuple)) and isinstance(value, str) and value.lstrip().startswith("["):
            # YAML's flow syntax, as the recipes write lists: data.sources "[market1501, ltcc]" (quoted for the
            # shell); yacs alone would only read Python literals such as "['market1501', 'ltcc']".
            try:
                opts[2 * i + 1] = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(f"invalid override: '{key}' takes a list such as [a, b], got {value!r}") from None
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, TypeError, AssertionError) as err:
        raise ConfigError(f"invalid override: {err}") from None
    return cfg

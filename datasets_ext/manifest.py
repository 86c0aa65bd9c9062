"""Bring-your-own cloth-changing data: a dataset described by one CSV file.

``manifest.csv`` (header exactly ``path,pid,camid,clothes_id,split``)::

    path,pid,camid,clothes_id,split
    train/0001_c1_a.jpg,1,0,3,train
    query/0101_c2.jpg,101,1,7,query
    gallery/0101_c3.jpg,101,2,8,gallery

* ``path`` is relative to the manifest's folder (an absolute path is taken as it is);
* ``pid`` and ``camid`` are integers; train ids and cameras are relabelled ``0..n-1``, query and gallery keep
  theirs (as every torchreid loader does);
* ``clothes_id`` is an integer naming an outfit *of that identity* (the key is ``(pid, clothes_id)``, as in LTCC),
  or empty on every line: the dataset then has no clothes labels and evaluates the general protocol only;
* ``split`` is ``train``, ``query`` or ``gallery``.

Every problem names the manifest line: a missing file, a duplicate path, a non-integer id, an unknown split, a wrong
header, clothes labels on some lines only. Query identities without a gallery match under a protocol are counted in
a warning, and a protocol that no query can be evaluated under (e.g. every image from one camera) is reported:
an error for the general protocol, a warning that drops SC or CC. Nothing is dropped silently.

Video data (tracklets) is not supported by manifests yet.
"""
from __future__ import annotations

import csv
import logging
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple

from datasets_ext.base import ClothesImageDataset, DatasetLayoutError, label_splits

logger = logging.getLogger(__name__)

__all__ = ["ManifestDataset", "MANIFEST_NAME", "MANIFEST_HEADER", "manifest_dataset_class", "read_manifest"]

MANIFEST_NAME = "manifest.csv"
MANIFEST_HEADER = ("path", "pid", "camid", "clothes_id", "split")
SPLITS = ("train", "query", "gallery")

# torchreid builds a dataset three times per run (train, query and gallery loaders): say each thing once per file.
_REPORTED: set = set()

Row = Tuple[str, int, int, object]


def _once(key: tuple, level: int, msg: str, *args) -> None:
    if key not in _REPORTED:
        _REPORTED.add(key)
        logger.log(level, msg, *args)


def read_manifest(csv_path: str) -> Tuple[Dict[str, List[Row]], bool]:
    """Reads and validates a manifest.

    Args:
        csv_path: the ``manifest.csv`` file.

    Returns:
        ``({split: [(abs_path, pid, camid, clothes_key)]}, has_clothes)``; without clothes labels the clothes key
        is the pid (one outfit per identity).

    Raises:
        DatasetLayoutError: naming the file and line of the first problem (all missing files are counted).
    """
    if not osp.isfile(csv_path):
        raise DatasetLayoutError(f"manifest not found: '{csv_path}' (write {MANIFEST_NAME} with the header "
                                 f"{','.join(MANIFEST_HEADER)})")
    base = osp.dirname(osp.abspath(csv_path))
    rows: Dict[str, List[Row]] = {s: [] for s in SPLITS}
    seen: Dict[str, int] = {}
    missing: List[Tuple[int, str]] = []
    clothes_lines: Dict[bool, int] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != MANIFEST_HEADER:
            raise DatasetLayoutError(f"{csv_path}:1: the header must be '{','.join(MANIFEST_HEADER)}', got "
                                     f"'{','.join(header or [])}'")
        for fields in reader:
            line = reader.line_num
            if not any(x.strip() for x in fields):
                continue
            if len(fields) != len(MANIFEST_HEADER):
                raise DatasetLayoutError(f"{csv_path}:{line}: expected {len(MANIFEST_HEADER)} fields "
                                         f"({','.join(MANIFEST_HEADER)}), got {len(fields)}")
            rel, pid, camid, clothes, split = (x.strip() for x in fields)
            values = {}
            for name, text in (("pid", pid), ("camid", camid)) + ((("clothes_id", clothes),) if clothes else ()):
                try:
                    values[name] = int(text)
                except ValueError:
                    raise DatasetLayoutError(f"{csv_path}:{line}: {name} must be an integer, got '{text}'") from None
            if split not in SPLITS:
                raise DatasetLayoutError(f"{csv_path}:{line}: split must be one of {', '.join(SPLITS)}, got "
                                         f"'{split}'")
            path = osp.normpath(rel if osp.isabs(rel) else osp.join(base, rel))
            if path in seen:
                raise DatasetLayoutError(f"{csv_path}:{line}: duplicate path '{rel}' (first on line {seen[path]})")
            seen[path] = line
            if not osp.isfile(path):
                missing.append((line, rel))
            clothes_lines.setdefault(bool(clothes), line)
            key = (values["pid"], values["clothes_id"]) if clothes else values["pid"]
            rows[split].append((path, values["pid"], values["camid"], key))
    if missing:
        first = ", ".join(f"line {ln}: '{p}'" for ln, p in missing[:3])
        raise DatasetLayoutError(f"{csv_path}: {len(missing)} listed file(s) do not exist ({first}"
                                 f"{', ...' if len(missing) > 3 else ''})")
    if len(clothes_lines) == 2:
        raise DatasetLayoutError(f"{csv_path}:{clothes_lines[False]}: clothes_id is empty here but set on line "
                                 f"{clothes_lines[True]}; give it on every line or on none")
    for split in SPLITS:
        if not rows[split]:
            raise DatasetLayoutError(f"{csv_path}: no line has split '{split}'")
    return rows, clothes_lines.get(True) is not None


def _evaluable_protocols(csv_path: str, query: Sequence[Row], gallery: Sequence[Row],
                         has_clothes: bool) -> Tuple[str, ...]:
    """The protocols at least one query can be evaluated under; counted warnings for the queries that cannot.

    A good match is the plugin evaluator's: same identity, another camera, and for SC the same outfit, for CC
    another one.
    """
    candidates = ("general", "sc", "cc") if has_clothes else ("general",)
    rules = {
        "general": lambda q, g: g[1] == q[1] and g[2] != q[2],
        "sc": lambda q, g: g[1] == q[1] and g[2] != q[2] and g[3] == q[3],
        "cc": lambda q, g: g[1] == q[1] and g[2] != q[2] and g[3] != q[3],
    }
    by_pid: Dict[int, List[Row]] = {}
    for g in gallery:
        by_pid.setdefault(g[1], []).append(g)
    kept = []
    for proto in candidates:
        lonely = sum(not any(rules[proto](q, g) for g in by_pid.get(q[1], ())) for q in query)
        if lonely == len(query):
            why = ("no query has a gallery image of its identity from another camera"
                   if proto == "general" else f"no query has a valid gallery match under the {proto} rule")
            if proto == "general":
                raise DatasetLayoutError(f"{csv_path}: the general protocol cannot be evaluated: {why} (is every "
                                         "image from the same camera?)")
            _once((csv_path, proto, "none"), logging.WARNING, "%s: protocol %s cannot be evaluated (%s); evaluating %s",
                  csv_path, proto, why, "+".join(p for p in candidates if p != proto))
            continue
        if lonely:
            _once((csv_path, proto, "lonely"), logging.WARNING,
                  "%s: %d of %d queries have no gallery match under the %s protocol and are left out of it",
                  csv_path, lonely, len(query), proto)
        kept.append(proto)
    return tuple(kept)


class ManifestDataset(ClothesImageDataset):
    """A dataset read from ``<root>/manifest.csv`` (registered as ``ccmanifest``); see the module docstring.

    Args:
        root: the folder holding ``manifest.csv`` (``data.root``), or the CSV file itself.
        **kwargs: forwarded to torchreid's ``ImageDataset`` (transform, mode, combineall, ...).
    """

    #: Set by :func:`manifest_dataset_class` for a dataset registered under its own name.
    csv_path: str = ""
    camera_rule = "camid column of the manifest"

    def __init__(self, root: str = "", **kwargs):
        csv_path = type(self).csv_path or (root if root.endswith(".csv") else osp.join(root, MANIFEST_NAME))
        csv_path = osp.abspath(osp.expanduser(csv_path))
        rows, has_clothes = read_manifest(csv_path)
        if not has_clothes:
            _once((csv_path, "no clothes"), logging.INFO,
                  "%s has no clothes_id labels: evaluating the general protocol only", csv_path)
        self.eval_protocols = _evaluable_protocols(csv_path, rows["query"], rows["gallery"], has_clothes)
        self.dataset_dir = osp.dirname(csv_path)
        train, query, gallery = label_splits(rows["train"], rows["query"], rows["gallery"])
        super().__init__(train, query, gallery, **kwargs)


def manifest_dataset_class(name: str, csv_path: str) -> type:
    """A :class:`ManifestDataset` subclass bound to ``csv_path`` (what ``register_manifest_dataset`` registers)."""
    path = osp.abspath(osp.expanduser(os.fspath(csv_path)))
    return type(f"Manifest_{name}", (ManifestDataset,), {"csv_path": path, "__doc__": f"Manifest dataset '{name}' "
                                                                                   f"read from {path}."})

"""Precomputed teacher outputs: one file per (dataset, teacher, weights).

Layout of ``<cache_dir>/<dataset>__<teacher>__<weights>.pt`` (a ``torch.save`` dict that loads
with ``weights_only=True``)::

    format        int, CACHE_FORMAT
    dataset       str
    paths         list[str], N image paths (absolute, sorted, unique): row i belongs to paths[i]
    features      float32 [N, d]   L2-normalised teacher image features g
    labels        uint8   [N, M]   descriptor labels (0 = phrase 1, 1 = phrase 2)
    text_features float32 [M, 2, d] L2-normalised prompt text features (stored once)
    fingerprint   dict (:func:`clip3dreid_plugin.utils.artefact.fingerprint`): teacher name, weights
                  id (sha256 of the file / tag / hash of random weights), digest of the image
                  list, pairs, template, resize mode, precision, open_clip version, scheme;
                  ``labels`` only when the labels are not the teacher's (the quickstart's
                  stand-in teacher: synthcc's ground truth)

Features are stored as float32 (3 KB per image at d=768; ~30 MB for a 10k-image training set) so
that cache mode reproduces online mode bit for bit; float16 would halve this at a ~1e-3 relative
error on the global-distillation target.

Building is batched, shows a tqdm bar, writes atomically (temp file + ``os.replace``) and is
resumable through :class:`~clip3dreid_plugin.utils.artefact.PartialBuild`: every ``save_every_s``
seconds / ``save_every_batches`` batches, and on an exception, the rows done so far go to
``<cache>.partial``; a rerun with the same fingerprint continues from there. Rows are computed in
the fixed (sorted) path order, so a resumed cache equals an uninterrupted one. A cache written
before the fingerprint scheme 2 (an older plugin version) is stale by its scheme: ``teacher.on_stale``
rebuilds it with a line saying so, or stops (``error``).
"""
from __future__ import annotations

import logging
import os.path as osp
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.errors import InputError, UserError
from clip3dreid_plugin.teacher.clip_teacher import gather_text_features
from clip3dreid_plugin.utils import artefact
from clip3dreid_plugin.utils.artefact import PartialBuild, apply_stale_policy, check_stale_policy
from clip3dreid_plugin.utils.io import atomic_write
from clip3dreid_plugin.utils.progress import progress as progress_bar
from clip3dreid_plugin.utils.safe_pickle import weights_only_refusal
from datasets_ext.image_io import read_image

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_FORMAT",
    "TeacherCache",
    "TeacherCacheError",
    "TeacherCacheMissError",
    "TeacherCacheMismatchError",
    "TeacherCacheStaleError",
    "build_teacher_cache",
    "cache_file_path",
    "canonical_path",
    "canonical_paths",
    "fingerprint_diff",
    "image_list_hash",
    "teacher_fingerprint",
]

CACHE_FORMAT = 1
REBUILD_HINT = "rebuild it with: clip3dreid-label --config-file CFG (teacher.on_stale rebuild)"
STALE_HINT = "Delete it or set teacher.on_stale rebuild"
# Readable names of fingerprint entries in messages.
_LABELS = {"images": "image list (sha256)", "weights": "teacher weights", "pairs": "descriptor pairs",
           "resize_mode": "resize mode", "template": "prompt template"}


class TeacherCacheError(UserError, RuntimeError):
    """Base class of teacher-cache errors."""


class TeacherCacheMissError(UserError, KeyError):
    """An image is not in the teacher cache; the message names it."""

    def __str__(self) -> str:  # KeyError would print the message quoted, as a repr
        return str(self.args[0]) if self.args else "image not in teacher cache"


class TeacherCacheMismatchError(TeacherCacheError, ValueError):
    """The cache belongs to another dataset, teacher, weights or descriptor set."""


class TeacherCacheStaleError(TeacherCacheMismatchError, artefact.StaleArtefactError):
    """An existing cache file's fingerprint differs from the requested one (``on_stale='error'``)."""


# --------------------------------------------------------------------------- fingerprints


def canonical_path(path: str) -> str:
    """Absolute, normalised form of an image path (a relative data root resolves against the CWD)."""
    return osp.abspath(path)


def canonical_paths(paths: Sequence[str]) -> List[str]:
    """Absolute, de-duplicated, sorted image paths: the cache's row order."""
    return sorted({canonical_path(p) for p in paths})


def image_list_hash(paths: Sequence[str]) -> str:
    """Digest of the canonical image list (order and duplicates do not matter)."""
    return artefact.digest(canonical_paths(paths))


def teacher_fingerprint(teacher, image_paths: Sequence[str]) -> Dict[str, Any]:
    """Everything a cached row depends on.

    Args:
        teacher: a :class:`~clip3dreid_plugin.teacher.clip_teacher.CLIPTeacher`.
        image_paths: the images to label.
    """
    import open_clip  # seconds to import: only labelling with a real CLIP pays for it

    return artefact.fingerprint({
        "format": CACHE_FORMAT,
        "teacher": teacher.model_name,
        "weights": teacher.weights_id(),
        "images": image_list_hash(image_paths),
        "num_images": len(canonical_paths(image_paths)),
        "pairs": [f"{a}|{b}" for a, b in teacher.pairs],
        "template": teacher.template,
        "resize_mode": teacher.resize_mode,
        "precision": getattr(teacher, "precision", "fp32"),
        "open_clip": open_clip.__version__,
    })


def fingerprint_diff(old: Dict[str, Any], new: Dict[str, Any], keys: Optional[Sequence[str]] = None) -> List[str]:
    """:func:`clip3dreid_plugin.utils.artefact.fingerprint_diff` with the teacher cache's readable entry names.

    Args:
        old: the stored fingerprint.
        new: the wanted one.
        keys: compare only these entries (default: every entry of either, and the scheme).
    """
    return artefact.fingerprint_diff(old, new, keys, _LABELS)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def cache_file_path(cache_dir: str, dataset: str, teacher_name: str, weights_label: str) -> str:
    """``<cache_dir>/<dataset>__<teacher>__<weights>.pt`` with file-system-safe parts.

    ``weights_label`` is the weights file stem or tag (see ``weights_label_for``).
    """
    name = "__".join(_safe_name(x) for x in (dataset, teacher_name, weights_label))
    return osp.join(cache_dir, name + ".pt")


def _atomic_save(obj: Dict[str, Any], path: str) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh), fsync=True)


def _read(path: str) -> Dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file; the message names it
        raise TeacherCacheError(f"cannot read teacher cache '{path}' as data ({weights_only_refusal(err)}); "
                                f"{REBUILD_HINT}") from None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise TeacherCacheError(f"'{path}' is not a teacher cache of format {CACHE_FORMAT}; {REBUILD_HINT}")
    return data


# --------------------------------------------------------------------------- cache


class TeacherCache:
    """Teacher features and descriptor labels of a fixed image list, looked up by path.

    Args:
        paths: ``N`` image paths (row order).
        features: float ``[N, d]``.
        labels: integer ``[N, M]``.
        text_features: ``[M, 2, d]``.
        fingerprint: see :func:`teacher_fingerprint`.
        dataset: dataset name, for messages.
        source: file the cache was read from, for messages.
    """

    def __init__(self, paths: Sequence[str], features: torch.Tensor, labels: torch.Tensor,
                 text_features: torch.Tensor, fingerprint: Dict[str, Any], dataset: str = "", source: str = ""):
        if features.dim() != 2 or features.size(0) != len(paths):
            raise ValueError(f"features must be [N={len(paths)}, d], got {tuple(features.shape)}")
        if labels.shape != (len(paths), text_features.size(0)):
            raise ValueError(f"labels must be [N={len(paths)}, M={text_features.size(0)}], got {tuple(labels.shape)}")
        self.paths = list(paths)
        self.features = features
        self.labels = labels
        self.text_features = text_features
        self.fingerprint = dict(fingerprint)
        self.dataset = dataset
        self.source = source
        # Plain dict built once: O(1) lookups per image in the training loop.
        self._index: Dict[str, int] = {p: i for i, p in enumerate(self.paths)}
        self._text_on: Dict[torch.device, torch.Tensor] = {}
        self._rows_on: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ io

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "dataset": self.dataset,
            "paths": self.paths,
            "features": self.features,
            "labels": self.labels,
            "text_features": self.text_features,
            "fingerprint": self.fingerprint,
        }

    def save(self, path: str) -> None:
        """Writes the cache atomically (a reader never sees a half-written file)."""
        _atomic_save(self.to_dict(), path)
        self.source = path

    @classmethod
    def load(cls, path: str) -> "TeacherCache":
        """Reads a cache file (CPU tensors, bit-exact).

        Raises:
            FileNotFoundError: no such file (the message says how to build it).
            TeacherCacheError: the file is not a complete cache.
        """
        if not osp.isfile(path):
            raise FileNotFoundError(f"teacher cache not found: '{path}'; build it with "
                                    "clip3dreid-label --config-file CFG")
        data = _read(path)
        if "done" in data:
            raise TeacherCacheError(f"'{path}' is an unfinished (partial) teacher cache; {REBUILD_HINT}")
        return cls(data["paths"], data["features"], data["labels"], data["text_features"], data["fingerprint"],
                   dataset=data.get("dataset", ""), source=path)

    @classmethod
    def concat(cls, caches: Sequence["TeacherCache"]) -> "TeacherCache":
        """Joins caches of several datasets labelled by the same teacher (multi-source training).

        Raises:
            TeacherCacheMismatchError: the caches come from different teachers, weights or descriptors.
        """
        if not caches:
            raise ValueError("concat needs at least one cache")
        if len(caches) == 1:
            return caches[0]
        keys = ("teacher", "weights", "pairs", "template", "resize_mode", "precision")
        ref = caches[0]
        for c in caches[1:]:
            diff = fingerprint_diff(ref.fingerprint, c.fingerprint, keys)
            if diff or not torch.equal(ref.text_features, c.text_features):
                raise TeacherCacheMismatchError(
                    f"teacher caches '{ref.source}' and '{c.source}' were made by different teachers: {'; '.join(diff)}"
                )
        paths, feats, labels, seen = [], [], [], set()
        for c in caches:
            keep = [i for i, p in enumerate(c.paths) if p not in seen]
            seen.update(c.paths[i] for i in keep)
            paths.extend(c.paths[i] for i in keep)
            idx = torch.tensor(keep, dtype=torch.long)
            feats.append(c.features.index_select(0, idx))
            labels.append(c.labels.index_select(0, idx))
        fp = {k: ref.fingerprint.get(k) for k in keys}
        fp["parts"] = [c.fingerprint for c in caches]
        return cls(paths, torch.cat(feats), torch.cat(labels), ref.text_features, fp,
                   dataset="+".join(c.dataset for c in caches), source="+".join(c.source for c in caches))

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, path: str) -> bool:
        return path in self._index or canonical_path(path) in self._index

    @property
    def embed_dim(self) -> int:
        return int(self.features.size(1))

    @property
    def num_pairs(self) -> int:
        return int(self.text_features.size(0))

    @property
    def pairs(self) -> List[Tuple[str, str]]:
        return [tuple(p.split("|", 1)) for p in self.fingerprint.get("pairs", [])]  # type: ignore[misc]

    def rows(self, img_paths: Sequence[str]) -> List[int]:
        """Row index of every path (exact string first, then its absolute normalised form).

        Raises:
            TeacherCacheMissError: naming the first path that is not cached.
        """
        index = self._index
        out = []
        for p in img_paths:
            i = index.get(p)
            if i is None:
                i = index.get(canonical_path(p))
                if i is None:
                    where = f" '{self.source}'" if self.source else ""
                    raise TeacherCacheMissError(
                        f"image '{p}' is not in the teacher cache{where} (dataset '{self.dataset}', "
                        f"{len(self)} images); {REBUILD_HINT}"
                    )
            out.append(i)
        return out

    def lookup(self, img_paths: Sequence[str],
               device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Teacher outputs of a batch.

        Args:
            img_paths: ``B`` image paths as the data loader yields them.
            device: where to answer; a GPU keeps its own copy of the whole table (copied once, 3 KB an image at
                d=768), so a step copies only the ``B`` row indices, from pinned memory, without waiting.

        Returns:
            ``(features [B, d] float32, labels [B, M] int64)`` on ``device`` (default the CPU), bit-identical to what
            was stored.

        Raises:
            TeacherCacheMissError: naming the first missing image.
        """
        idx = torch.tensor(self.rows(img_paths), dtype=torch.long)
        if device is None or torch.device(device).type == "cpu":
            return self.features.index_select(0, idx), self.labels.index_select(0, idx).long()
        device = torch.device(device)
        if device not in self._rows_on:
            self._rows_on[device] = (self.features.to(device), self.labels.to(device))
        feats, labels = self._rows_on[device]
        if device.type == "cuda":
            idx = idx.pin_memory()
        idx = idx.to(device, non_blocking=True)
        return feats.index_select(0, idx), labels.index_select(0, idx).long()

    def gather_text_features(self, labels: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` labels -> ``[B, M, d]`` text features on ``labels``' device (copied there once)."""
        dev = labels.device
        if dev not in self._text_on:
            self._text_on[dev] = self.text_features.to(dev)
        return gather_text_features(self._text_on[dev], labels)

    def check_compatible(self, image_paths: Optional[Sequence[str]] = None, teacher_name: Optional[str] = None,
                         weights_id: Optional[str] = None, pairs: Optional[Sequence[Tuple[str, str]]] = None,
                         template: Optional[str] = None, dataset: Optional[str] = None,
                         resize_mode: Optional[str] = None, labels: str = "") -> None:
        """Checks that this cache can serve a run; every argument left ``None`` is not checked.

        Args:
            image_paths: the dataset's images; all must be cached.
            teacher_name: expected open_clip model name.
            weights_id: expected weights id (``sha256:...``, ``tag:...``, see ``CLIPTeacher.weights_id``).
            pairs: expected descriptor pairs.
            template: expected prompt template.
            dataset: expected dataset name.
            resize_mode: expected teacher resize mode.
            labels: who must have made the descriptor labels, the fingerprint's ``labels`` entry; ``""`` (always
                checked): the teacher itself, the entry absent. A cache whose labels came from elsewhere (the
                quickstart's stand-in teacher writes ground truth) never serves as a teacher's, nor the reverse.

        Raises:
            TeacherCacheMismatchError: naming every mismatch (dataset, teacher, missing images, ...).
        """
        problems = []
        if dataset is not None and self.dataset and dataset != self.dataset:
            problems.append(f"it was built for dataset '{self.dataset}', not '{dataset}'")
        wanted = {"teacher": teacher_name, "weights": weights_id, "template": template, "resize_mode": resize_mode,
                  "pairs": None if pairs is None else [f"{a}|{b}" for a, b in pairs]}
        wanted = {k: v for k, v in wanted.items() if v is not None}
        problems += fingerprint_diff(self.fingerprint, wanted, list(wanted))
        made_by = self.fingerprint.get("labels", "")
        if made_by != labels:
            problems.append(f"its descriptor labels come from {made_by or 'the teacher'}, not from "
                            f"{labels or 'the teacher'}")
        if image_paths is not None:
            missing = [p for p in image_paths if p not in self]
            if missing:
                name = f"dataset '{dataset}'" if dataset else "the dataset"
                problems.append(f"{len(missing)} of {len(image_paths)} images of {name} are not cached "
                                f"(first: '{missing[0]}')")
        if problems:
            where = f"'{self.source}'" if self.source else "teacher cache"
            raise TeacherCacheMismatchError(f"{where} does not fit this run: " + "; ".join(problems)
                                            + f". {REBUILD_HINT}")


# --------------------------------------------------------------------------- building


class _ImageFiles(Dataset):
    """Reads images with the project's fail-fast reader and applies CLIP's preprocessing."""

    def __init__(self, paths: Sequence[str], transform):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(read_image(self.paths[i]))


def build_teacher_cache(teacher, image_paths: Sequence[str], cache_path: str, batch_size: int = 64,
                        on_stale: str = "rebuild", progress: bool = True, num_workers: int = 0, dataset: str = "",
                        save_every_s: float = 60.0, save_every_batches: int = 0) -> TeacherCache:
    """Labels every image with the teacher and writes the cache (or reuses an up-to-date one).

    Args:
        teacher: a :class:`~clip3dreid_plugin.teacher.clip_teacher.CLIPTeacher` (runs on its device).
        image_paths: images to label (any order; duplicates are dropped).
        cache_path: the cache file; ``<cache_path>.partial`` holds an unfinished run.
        batch_size: images per teacher forward.
        on_stale: ``rebuild`` or ``error`` when ``cache_path`` exists with another fingerprint.
        progress: show a tqdm bar (``CLIP3DREID_PROGRESS=0`` also hides it).
        num_workers: DataLoader workers decoding images.
        dataset: dataset name stored in the cache (for messages).
        save_every_s: write the partial file at least this often (seconds; 0 = never by time).
        save_every_batches: also write it every this many batches (0 = never by count).

    Returns:
        The complete :class:`TeacherCache`.

    Raises:
        TeacherCacheStaleError: ``on_stale='error'`` and the existing cache does not match (names what changed).
        ImageReadError: an image is missing or corrupt (named); the rows done so far are kept.
    """
    check_stale_policy(on_stale, "teacher.on_stale", ConfigError)
    if batch_size < 1:
        raise ConfigError(f"teacher.batch_size must be >= 1, got {batch_size}")
    paths = canonical_paths(image_paths)
    if not paths:
        raise InputError(f"no images to label for dataset '{dataset}'")
    fp = teacher_fingerprint(teacher, paths)

    if osp.isfile(cache_path):
        try:
            old = _read(cache_path)
            diff = fingerprint_diff(old.get("fingerprint") or {}, fp)
        except TeacherCacheError as err:
            old, diff = None, [f"unreadable ({err})"]
        if old is not None and "done" in old:
            diff = ["it is an unfinished (partial) cache"]
        if apply_stale_policy(cache_path, diff, on_stale, "teacher cache", STALE_HINT, TeacherCacheStaleError):
            logger.info("teacher cache '%s' is up to date (%d images)", cache_path, len(paths))
            return TeacherCache(old["paths"], old["features"], old["labels"], old["text_features"],
                                old["fingerprint"], dataset=old.get("dataset", dataset), source=cache_path)

    text = teacher.descriptor_text_features().detach().float().cpu()
    feats: List[torch.Tensor] = []
    labels: List[torch.Tensor] = []
    partial = PartialBuild(cache_path, fp, "teacher labelling", save_every_s=save_every_s,
                           save_every=save_every_batches)
    done, state = partial.resume()
    if done and not torch.equal(state.get("text_features", torch.zeros(0)), text):
        logger.warning("discarding partial teacher cache '%s': its phrase features differ from this teacher's",
                       partial.path)
        done, state = 0, {}
    if done:
        feats.append(state["features"][:done])
        labels.append(state["labels"][:done])
        logger.info("resuming teacher labelling of '%s' from image %d of %d", dataset or cache_path, done, len(paths))

    def snapshot() -> Dict[str, Any]:
        d = feats[0].size(1) if feats else teacher.embed_dim
        return {"features": torch.cat(feats) if feats else torch.zeros(0, d),
                "labels": torch.cat(labels) if labels else torch.zeros(0, text.size(0), dtype=torch.uint8),
                "text_features": text}

    todo = paths[done:]
    if todo:
        on_gpu = teacher.device.type == "cuda"
        loader = DataLoader(_ImageFiles(todo, teacher.preprocess), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, pin_memory=on_gpu)
        t0 = time.monotonic()
        # Keep what was computed on Ctrl-C, a corrupt image or OOM: the rerun continues from there.
        with partial.saved_on_error(lambda: (done, snapshot())):
            for batch in progress_bar(loader, total=len(loader), desc=f"teacher labels {dataset}".strip(),
                                      enabled=progress):
                g = teacher.encode_clip_input(batch)
                lab = teacher.label(g)
                feats.append(g.float().cpu())
                labels.append(lab.to(torch.uint8).cpu())
                done += batch.size(0)
                partial.step(done, snapshot)
        dt = time.monotonic() - t0
        logger.info("teacher labelled %d images in %.1f s (%.1f images/s)", len(todo), dt, len(todo) / max(dt, 1e-9))

    cache = TeacherCache(paths, torch.cat(feats), torch.cat(labels), text, fp, dataset=dataset)
    cache.save(cache_path)
    partial.finish()
    logger.info("wrote teacher cache '%s' (%d images, d=%d, M=%d)", cache_path, len(paths), cache.embed_dim,
                cache.num_pairs)
    return cache

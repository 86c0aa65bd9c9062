"""Fingerprinted, resumable artefacts: the one way the plugin builds a file it can reuse, resume or call stale.

An artefact (a teacher cache, the synthcc benchmark, the synthetic mesh set) is defined by its inputs, written as a
JSON-able dict (arguments, versions, file hashes, digests of large plans). Building one goes through this module:

* :func:`fingerprint` turns the inputs into the stored fingerprint (a plain dict, stamped with :data:`SCHEME`) and
  :func:`digest` is the one hash of such a dict (SHA-256 of its canonical JSON);
* :func:`fingerprint_diff` says, key by key, how a stored fingerprint differs from the wanted one (``key: old ->
  new``), and says so in one line when the stored one was made by an older scheme (nothing to compare key by key);
* :func:`apply_stale_policy` is the one stale policy, ``rebuild`` (one log line saying why, then rebuild) or
  ``error`` (a :class:`StaleArtefactError` naming the file and the diff);
* :class:`PartialBuild` saves the work done so far to ``<artefact>.partial`` (atomically, every ``save_every_s``
  seconds or ``save_every`` steps, and when the build is interrupted), with the fingerprint inside, and resumes
  from a partial file whose fingerprint matches. Builders work in a fixed item order, so a resumed artefact equals
  an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import os.path as osp
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Type

import numpy as np
import torch

from clip3dreid_plugin.errors import InputError, UserError
from clip3dreid_plugin.utils.io import atomic_write
from clip3dreid_plugin.utils.safe_pickle import weights_only_refusal

__all__ = ["SCHEME", "STALE_POLICIES", "PARTIAL_SUFFIX", "StaleArtefactError", "digest", "fingerprint",
           "as_fingerprint", "fingerprint_diff", "check_stale_policy", "apply_stale_policy", "PartialBuild"]

logger = logging.getLogger(__name__)

#: Version of the way inputs become a fingerprint. 1 was the per-builder hashes before this module (a bare SHA-1
#: digest for synthcc and the mesh set, a dict without this key for the teacher cache).
SCHEME = 2
STALE_POLICIES = ("rebuild", "error")
PARTIAL_SUFFIX = ".partial"
PARTIAL_FORMAT = 1


class StaleArtefactError(UserError, ValueError):
    """An existing artefact's fingerprint differs from the wanted one and the stale policy is ``error``.

    ``path`` is the file, ``diff`` the list of ``key: old -> new`` lines.
    """


def _plain(obj: Any) -> Any:
    """JSON form of the numpy values an input dict may hold (arrays become nested lists, scalars numbers)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"fingerprint inputs must be JSON-able; got {type(obj).__name__}")


def _canonical(obj: Any) -> str:
    # Sorted keys and fixed separators: the same inputs give the same text whatever the dict order.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_plain,
                      allow_nan=False)


def digest(obj: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of ``obj`` (dict order does not matter; numpy values allowed).

    Summarises a large input (an image list, a sampled plan) as one entry of a fingerprint.
    """
    return hashlib.sha256(_canonical(obj).encode("ascii")).hexdigest()


def fingerprint(inputs: Mapping[str, Any]) -> Dict[str, Any]:
    """The stored fingerprint of an artefact: its inputs as plain JSON values, stamped with :data:`SCHEME`.

    Args:
        inputs: everything the artefact depends on (JSON-able; numpy values are converted; no key ``scheme``).

    Returns:
        A new dict equal to what a JSON or ``torch.save`` round trip gives back, so a stored fingerprint compares
        equal to a freshly made one.
    """
    if "scheme" in inputs:
        raise ValueError("'scheme' is the fingerprint's own key; rename that input")
    out = json.loads(_canonical(dict(inputs)))
    out["scheme"] = SCHEME
    return out


def as_fingerprint(stored: Any) -> Any:
    """A stored fingerprint as a dict: a dict as it is, the JSON text of a dict parsed, anything else unchanged
    (an older scheme's bare digest, which :func:`fingerprint_diff` reports as such)."""
    if isinstance(stored, (str, bytes, np.str_)):
        try:
            parsed = json.loads(stored)
        except ValueError:
            return str(stored)
        return parsed if isinstance(parsed, dict) else str(stored)
    return stored


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fingerprint_diff(old: Any, new: Mapping[str, Any], keys: Optional[Sequence[str]] = None,
                     labels: Optional[Mapping[str, str]] = None) -> List[str]:
    """Human-readable list of how a stored fingerprint differs from the wanted one; empty when they agree.

    Args:
        old: the stored fingerprint (see :func:`as_fingerprint`); a non-dict, or a dict of another scheme, gives one
            line saying that it was made by an older plugin version.
        new: the wanted one.
        keys: compare only these entries (default: every entry of either, and the scheme).
        labels: readable names of some keys for the lines (``{"images": "image list (sha256)"}``).

    Returns:
        ``key: old -> new`` lines in sorted key order.
    """
    labels = labels or {}
    if not isinstance(old, Mapping):
        return [f"the stored fingerprint {_short(old, 50)} was made by an older plugin version (scheme 1: a bare "
                f"digest, not comparable with scheme {SCHEME})"]
    if keys is None and old.get("scheme") != new.get("scheme"):
        return [f"the stored fingerprint was made by an older plugin version (scheme {old.get('scheme', 1)}, "
                f"now {new.get('scheme')})"]
    out = []
    for key in sorted(set(old) | set(new)) if keys is None else keys:
        if old.get(key) != new.get(key):
            out.append(f"{labels.get(key, key)}: {_short(old.get(key))} -> {_short(new.get(key))}")
    return out


def check_stale_policy(value: str, option: str, error: Type[Exception] = InputError) -> str:
    """Checks a stale policy option; returns it.

    Args:
        value: the option's value.
        option: the option's name, for the message (``teacher.on_stale``).
        error: the exception type to raise (a caller in the config layer passes ``ConfigError``).

    Raises:
        error: ``value`` is not one of :data:`STALE_POLICIES`.
    """
    if value not in STALE_POLICIES:
        raise error(f"{option} must be one of {'|'.join(STALE_POLICIES)}, got {value!r}")
    return value


def apply_stale_policy(path: str, diff: Sequence[str], on_stale: str, what: str = "artefact", hint: str = "",
                       error: Type[Exception] = StaleArtefactError) -> bool:
    """The one stale policy.

    Args:
        path: the existing artefact file.
        diff: :func:`fingerprint_diff` of its stored fingerprint against the wanted one (or a reason it cannot be
            read).
        on_stale: ``rebuild`` or ``error``.
        what: the artefact's name, for messages (``teacher cache``).
        hint: how to get past the error (``set teacher.on_stale rebuild``).
        error: the exception type raised (a subclass of :class:`StaleArtefactError` or another user error).

    Returns:
        True when ``diff`` is empty (the artefact is up to date); False when it is stale and is to be rebuilt (one
        warning line says why).

    Raises:
        error: stale and ``on_stale == 'error'``; the message names ``path`` and the diff.
    """
    check_stale_policy(on_stale, "on_stale")
    if not diff:
        return True
    why = "; ".join(diff)
    if on_stale == "error":
        err = error(f"{what} '{path}' is stale: {why}" + (f". {hint}" if hint else ""))
        err.path, err.diff = path, list(diff)  # type: ignore[attr-defined]
        raise err
    logger.warning("%s '%s' is stale (%s); rebuilding", what, path, why)
    return False


class PartialBuild:
    """Periodic atomic saves of a build's work so far, and resuming from them.

    A build walks its items in a fixed order; after each step it calls :meth:`step` with the number of items done
    and a function returning its state (tensors, lists, numbers; what ``torch.load(weights_only=True)`` reads).
    ``<artefact>.partial`` then holds ``{"partial_format", "what", "fingerprint", "done", "state"}``.

    Args:
        artefact_path: the final artefact file; the partial file is this path plus :data:`PARTIAL_SUFFIX`.
        fingerprint: the artefact's wanted fingerprint (see :func:`fingerprint`).
        what: the artefact's name, for messages.
        save_every_s: save at least this often (seconds; 0 = never by time).
        save_every: also save every this many steps (0 = never by count).
    """

    def __init__(self, artefact_path: str, fingerprint: Mapping[str, Any], what: str = "artefact",
                 save_every_s: float = 60.0, save_every: int = 0) -> None:
        self.path = artefact_path + PARTIAL_SUFFIX
        self.fingerprint = dict(fingerprint)
        self.what = what
        self.save_every_s = float(save_every_s)
        self.save_every = int(save_every)
        self.saved_done = 0
        self._last_save = time.monotonic()
        self._steps = 0

    def resume(self) -> Tuple[int, Dict[str, Any]]:
        """Reads the partial file when it exists and was made for the same fingerprint.

        Returns:
            ``(done, state)``: the items done and the state saved with them; ``(0, {})`` when there is nothing to
            resume (a partial file of other inputs, of an older format or unreadable is ignored with one warning
            line saying why, and overwritten by the next save).
        """
        if not osp.isfile(self.path):
            return 0, {}
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: start over, saying why
            logger.warning("ignoring unreadable partial %s '%s' (%s)", self.what, self.path, weights_only_refusal(err))
            return 0, {}
        if not isinstance(data, dict) or data.get("partial_format") != PARTIAL_FORMAT:
            logger.warning("ignoring partial %s '%s': written by an older plugin version in another format; "
                           "starting over", self.what, self.path)
            return 0, {}
        diff = fingerprint_diff(data.get("fingerprint"), self.fingerprint)
        if diff:
            logger.warning("discarding partial %s '%s' made for other inputs (%s)", self.what, self.path,
                           "; ".join(diff))
            return 0, {}
        self.saved_done = int(data["done"])
        return self.saved_done, dict(data.get("state") or {})

    def save(self, done: int, state: Mapping[str, Any]) -> None:
        """Writes ``done`` and ``state`` with the fingerprint to the partial file, atomically."""
        payload = {"partial_format": PARTIAL_FORMAT, "what": self.what, "fingerprint": self.fingerprint,
                   "done": int(done), "state": dict(state)}
        atomic_write(self.path, lambda fh: torch.save(payload, fh), fsync=True)
        self.saved_done, self._last_save, self._steps = int(done), time.monotonic(), 0

    def step(self, done: int, state: Callable[[], Mapping[str, Any]]) -> None:
        """Called after each step of the build; saves when one is due (``state`` is only called then)."""
        self._steps += 1
        now = time.monotonic()
        if ((self.save_every and self._steps >= self.save_every)
                or (self.save_every_s and now - self._last_save >= self.save_every_s)):
            self.save(done, state())

    @contextlib.contextmanager
    def saved_on_error(self, snapshot: Callable[[], Tuple[int, Mapping[str, Any]]]) -> Iterator["PartialBuild"]:
        """Runs the build's loop; when it raises (Ctrl-C, a corrupt input, out of memory), saves ``snapshot()``
        (``(done, state)``) first if it holds more than the last save, then lets the exception go on."""
        try:
            yield self
        except BaseException:
            try:
                done, state = snapshot()
                if done > self.saved_done:
                    self.save(done, state)
                    logger.warning("%s interrupted after %d items; progress saved to '%s'", self.what, done,
                                   self.path)
            except Exception as err:  # never mask the original error
                logger.warning("could not save partial %s '%s': %s", self.what, self.path, err)
            raise

    def finish(self) -> None:
        """Removes the partial file (the artefact is complete)."""
        if osp.exists(self.path):
            os.remove(self.path)

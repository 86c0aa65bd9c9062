"""Where the CLIP teacher's weights come from: a local file, a hub tag, or nothing (random, for tests).

``pretrained`` is ``None``/``''`` (random init), a local file, or an open_clip tag. Local files: a state dict
(``.pt``/``.pth``/``.bin``, also ``{'state_dict': ...}`` with ``module.`` prefixes) or ``.safetensors``, loaded
through ``open_clip.load_checkpoint``. An OpenAI TorchScript archive (what ``pretrained='openai'`` downloads from
openaipublic) cannot be read with ``torch.load(weights_only=True)``, so its tensors are read as data by
``utils.safe_pickle.read_torchscript_state_dict`` (its TorchScript code is never run) and its state dict (minus the
non-weight entries ``input_resolution``, ``context_length``, ``vocab_size``, ``attn_mask``) is loaded into the
open_clip model. OpenAI weights need a QuickGELU model (``ViT-L-14-quickgelu``).
A tag is first looked up in the local download caches; only when it is not there is the network used, after a
short HTTPS probe that fails in seconds instead of huggingface_hub's long retries.
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import os
import os.path as osp
import threading
import urllib.error
import urllib.request
import zipfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import torch.nn as nn

from clip3dreid_plugin.errors import UserError
from clip3dreid_plugin.utils.hashing import file_sha256
from clip3dreid_plugin.utils.safe_pickle import RefusedGlobalError, read_torchscript_state_dict

logger = logging.getLogger(__name__)

__all__ = ["TeacherLoadError", "WEIGHTS_HINT", "HUB_PROBE_TIMEOUT_S", "cached_file_sha256", "check_model_name",
           "load_local_weights", "looks_like_path", "quiet_random_init_warning", "resolve_pretrained",
           "weights_hint", "weights_id_for", "weights_label_for"]

#: seconds the connectivity probe may take before a hub tag is declared unreachable.
HUB_PROBE_TIMEOUT_S = 3.0
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")
# Entries of an OpenAI TorchScript state dict that are not weights of open_clip's CLIP.
_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")

def weights_hint(weights_key: str = "teacher.pretrained") -> str:
    """How to supply local weights, naming the option that takes them (``teacher.pretrained``, ...)."""
    return ("To use local weights: on a machine with network access download the checkpoint once (e.g. "
            "open_clip.create_model('ViT-L-14-quickgelu', pretrained='openai') stores it under "
            "~/.cache/huggingface/hub), copy the .bin/.pt/.safetensors file here and set "
            f"{weights_key}=/path/to/file.pt (on the command line: {weights_key} /path/to/file.pt).")


WEIGHTS_HINT = weights_hint()


class TeacherLoadError(UserError, RuntimeError):
    """The CLIP teacher cannot be built; the message says why and how to supply local weights."""


# (path, size, mtime_ns) -> digest, so labelling several datasets hashes the weights file once.
_SHA_CACHE: Dict[Tuple[str, int, int], str] = {}


def cached_file_sha256(path: str) -> str:
    st = os.stat(path)
    key = (osp.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]


def weights_label_for(pretrained: Optional[str], model_name: str = "") -> str:
    """Short name of ``teacher.pretrained`` for cache file names, without building the teacher.

    A weights file gives its stem (``/w/ViT-L-14.pt`` -> ``ViT-L-14``), a tag itself (``openai``),
    an ``hf-hub:`` model ``hub``, and empty weights ``random``.
    """
    if model_name.startswith("hf-hub:") and not pretrained:
        return "hub"
    if not pretrained:
        return "random"
    if osp.isfile(osp.expanduser(pretrained)) or looks_like_path(pretrained):
        return osp.splitext(osp.basename(pretrained.rstrip("/\\")))[0] or "weights"
    return pretrained


def weights_id_for(pretrained: Optional[str], model_name: str = "") -> Optional[str]:
    """``CLIPTeacher.weights_id()`` without building the teacher; None when it cannot be known
    (random weights, or a weights file that is not on this machine)."""
    if not pretrained:
        return None
    path = osp.expanduser(pretrained)
    if osp.isfile(path):
        return "sha256:" + cached_file_sha256(path)
    if looks_like_path(pretrained):
        return None
    return f"tag:{pretrained}"


class _DropMessages(logging.Filter):
    """Drops root-logger records containing any of ``needles`` (open_clip logs through ``logging.*``)."""

    def __init__(self, needles: Sequence[str]):
        super().__init__()
        self.needles = tuple(needles)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in self.needles)


@contextlib.contextmanager
def quiet_random_init_warning() -> Iterator[None]:
    # We load the weights ourselves right after creation; open_clip's "initialized randomly"
    # warning would be false and alarming in the logs.
    flt = _DropMessages(["Model initialized randomly", "No potential checkpoint path"])
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _valid_model_names() -> List[str]:
    import open_clip  # seconds to import: only a check of teacher.name pays for it

    return list(open_clip.list_models())


def check_model_name(model_name: str, name_key: str = "teacher.name",
                     weights_key: str = "teacher.pretrained") -> None:
    """Raises :class:`TeacherLoadError` naming ``name_key`` and close matches unless open_clip knows the name."""
    if model_name.startswith(("hf-hub:", "local-dir:")):
        return
    names = _valid_model_names()
    if model_name.replace("/", "-") in names:
        return
    close = difflib.get_close_matches(model_name, names, n=5, cutoff=0.5)
    common = ["ViT-L-14-quickgelu", "ViT-B-16-quickgelu", "ViT-B-32-quickgelu", "ViT-L-14", "ViT-B-16", "ViT-B-32"]
    suggest = close + [c for c in common if c not in close and c in names]
    raise TeacherLoadError(
        f"unknown open_clip model name {name_key}='{model_name}'; valid names include: "
        f"{', '.join(suggest[:8])} (all {len(names)}: open_clip.list_models()). {weights_hint(weights_key)}"
    )


def looks_like_path(value: str) -> bool:
    return (os.sep in value or "/" in value or value.startswith((".", "~"))
            or value.lower().endswith(_WEIGHT_SUFFIXES))


def _is_torchscript_archive(path: str) -> bool:
    """True for TorchScript zips (OpenAI's original CLIP files); ``torch.save`` zips have no ``code/``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            tail = name.split("/", 1)[-1]
            if tail.startswith("code/") or tail == "constants.pkl":
                return True
    return False


def _hf_offline() -> bool:
    val = os.environ.get("HF_HUB_OFFLINE", "")
    if val.strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants  # open_clip's dependency, imported with it, when weights are resolved

        return bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except ImportError:  # pragma: no cover - huggingface_hub is an open_clip dependency
        return False


def _probe_host(url: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> Optional[str]:
    """Sends one HTTPS ``HEAD`` to ``url``; returns None when any HTTP answer came, else why not.

    A plain TCP connect is not enough: sandboxes and captive proxies accept every connection and
    then fail TLS, so the probe needs a verified HTTP response (any status counts: the server is
    there). urllib honours ``HTTPS_PROXY`` like huggingface_hub does. DNS resolution has no timeout
    of its own, so the request runs in a daemon thread joined with ``timeout``: the caller never
    waits much longer than that.
    """
    result: Dict[str, str] = {}

    def attempt() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                result["ok"] = "1"
        except urllib.error.HTTPError:
            result["ok"] = "1"  # 4xx/5xx: the endpoint answered, so the network is there
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            result["err"] = f"{type(reason).__name__}: {reason}"

    th = threading.Thread(target=attempt, daemon=True, name="clip-hub-probe")
    th.start()
    th.join(timeout + 0.5)
    if "ok" in result:
        return None
    host = urlparse(url).hostname or url
    return result.get("err", f"no answer from {host} within {timeout:.0f} s")


def _tag_cache_candidates(tag_cfg: dict) -> List[str]:
    """Local files where open_clip/huggingface_hub would have stored a tag's weights."""
    out: List[str] = []
    hf = tag_cfg.get("hf_hub", "")
    if hf:
        try:  # open_clip and its hub client, imported only when a tag's weights are looked up
            from huggingface_hub import try_to_load_from_cache
            from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
        except ImportError:  # pragma: no cover
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, filename = os.path.split(hf)
            filename = filename or HF_WEIGHTS_NAME
            names = []
            # open_clip prefers a .safetensors sibling when the hub has one; so do we.
            if filename == HF_WEIGHTS_NAME:
                names.append(HF_SAFE_WEIGHTS_NAME)
            elif filename.endswith((".bin", ".pth")):
                names.append(filename[:-4] + ".safetensors")
            names.append(filename)
            for name in names:
                found = try_to_load_from_cache(repo_id=repo, filename=name)
                if isinstance(found, str) and osp.isfile(found):
                    out.append(found)
    url = tag_cfg.get("url", "")
    if url:
        cand = osp.join(osp.expanduser("~/.cache/clip"), osp.basename(url))
        if osp.isfile(cand):
            out.append(cand)
    return out


def _tag_endpoint(tag_cfg: dict) -> str:
    if tag_cfg.get("hf_hub"):
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return tag_cfg.get("url", "https://huggingface.co")


def _require_network(what: str, endpoint: str, hint: str = WEIGHTS_HINT) -> None:
    if _hf_offline():
        raise TeacherLoadError(f"{what} must be downloaded but HF_HUB_OFFLINE is set. {hint}")
    why = _probe_host(endpoint)
    if why is not None:
        raise TeacherLoadError(f"{what} must be downloaded from {endpoint}, which is unreachable ({why}). "
                               f"{hint}")


def _load_torchscript_weights(model: nn.Module, path: str) -> None:
    # Read as data: torch.jit.load would compile and run the archive's own TorchScript code.
    sd = {k: v for k, v in read_torchscript_state_dict(path).items() if k not in _JIT_EXTRA_KEYS}
    # OpenAI archives store fp16 weights; load_state_dict copies them into the fp32 model.
    model.load_state_dict(sd, strict=True)


def load_local_weights(model: nn.Module, path: str, model_name: str, name_key: str = "teacher.name",
                       weights_key: str = "teacher.pretrained") -> None:
    """Loads a local weights file into an open_clip model, or raises :class:`TeacherLoadError` naming the options."""
    import open_clip  # seconds to import: only loading weights pays for it

    owner = weights_key.split(".")[0]  # teacher, clip_reid, ...
    try:
        if _is_torchscript_archive(path):
            logger.info("teacher weights %s are a TorchScript archive; loading its state dict", path)
            _load_torchscript_weights(model, path)
        else:
            open_clip.load_checkpoint(model, path, strict=True)
    except RefusedGlobalError as err:
        raise TeacherLoadError(f"{owner} weights '{path}' ({weights_key}) were not loaded: they ask for "
                               f"'{err.module}.{err.name}', "
                               "which a weights file never holds (a pickle can run code)") from None
    except Exception as err:  # noqa: BLE001 - unpickling/format errors vary by file; all mean "bad weights"
        msg = str(err).strip().splitlines()
        short = " ".join(msg[:3])[:600]
        raise TeacherLoadError(
            f"cannot load {owner} weights '{path}' ({weights_key}) into open_clip model '{model_name}': {short}. "
            f"Check that {name_key} matches the checkpoint (OpenAI weights need a '-quickgelu' model). "
            + weights_hint(weights_key)
        ) from err


def resolve_pretrained(model_name: str, pretrained: Optional[str], weights_key: str = "teacher.pretrained"
                       ) -> Tuple[str, Optional[str], dict]:
    """Returns ``(kind, local_file_or_None, tag_cfg)``; raises fast, naming ``weights_key``, when weights cannot be
    had."""
    import open_clip  # seconds to import: only resolving weights pays for it

    hint = weights_hint(weights_key)
    if model_name.startswith("hf-hub:"):
        _require_network(f"model '{model_name}'", os.environ.get("HF_ENDPOINT", "https://huggingface.co"), hint)
        return "tag", None, {}
    if not pretrained:
        return "none", None, {}
    path = osp.expanduser(pretrained)
    if osp.isfile(path):
        return "file", path, {}
    if looks_like_path(pretrained):
        raise TeacherLoadError(f"{weights_key.split('.')[0]} weights file not found: '{pretrained}' "
                               f"({weights_key}). " + hint)
    tag_cfg = open_clip.get_pretrained_cfg(model_name.replace("/", "-"), pretrained)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name.replace("/", "-"))
        raise TeacherLoadError(
            f"{weights_key}='{pretrained}' is neither an existing file nor an open_clip tag of "
            f"'{model_name}' (tags: {', '.join(tags) or 'none'}). " + hint
        )
    cached = _tag_cache_candidates(tag_cfg)
    if cached:
        logger.info("teacher weights tag '%s' found in the local cache: %s", pretrained, cached[0])
        return "tag", cached[0], tag_cfg
    _require_network(f"weights tag '{pretrained}' of '{model_name}'", _tag_endpoint(tag_cfg), hint)
    return "tag", None, tag_cfg

"""Pickles read as data: an allow-list unpickler, and a TorchScript archive's weights without running it.

A pickle names the classes and functions that rebuild its objects, and a plain :class:`pickle.Unpickler` imports
and calls whatever it names (``os.system`` included). Files that users copy between machines (body models, CLIP
weights) are therefore read with :class:`AllowListUnpickler`: every name goes through a resolver that knows the few
classes such files really hold, and any other name stops the load before anything is constructed.
:func:`read_torchscript_state_dict` reads the weights of an OpenAI-style TorchScript archive with the same
unpickler, so the archive's TorchScript code is never compiled or run.
"""
from __future__ import annotations

import codecs
import collections
import copyreg
import io
import os.path as osp
import pickle
import re
import zipfile
from typing import Any, BinaryIO, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from clip3dreid_plugin.errors import UserError

__all__ = ["RefusedGlobalError", "AllowListUnpickler", "Resolver", "builtin_resolver", "numpy_resolver",
           "read_torchscript_state_dict", "TorchScriptReadError", "weights_only_refusal"]

#: ``resolver(module, name)`` returns the object a pickle may use under that name, or None to refuse it.
Resolver = Callable[[str, str], Optional[Any]]


class RefusedGlobalError(UserError, pickle.UnpicklingError):
    """A pickle asked for a class or function outside the allow-list; nothing of it was constructed."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"refused to load '{module}.{name}', which is not on the allow-list of data types")
        self.module = module
        self.name = name


class AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves names only through ``resolve``.

    Args:
        file: a binary file handle.
        resolve: see :data:`Resolver`.
        **kwargs: passed to :class:`pickle.Unpickler` (``encoding="latin1"`` for Python 2 pickles).

    Raises:
        RefusedGlobalError: from :meth:`load`, at the first name ``resolve`` refuses.
    """

    def __init__(self, file: BinaryIO, resolve: Resolver, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._resolve = resolve

    def find_class(self, module: str, name: str) -> Any:
        # Every GLOBAL, STACK_GLOBAL and EXT opcode ends here, so nothing the resolver refuses can be called.
        obj = self._resolve(module, name)
        if obj is None:
            raise RefusedGlobalError(module, name)
        return obj


# Python 2 spelled these modules differently; a pickle keeps the spelling of the Python that wrote it.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_BUILTINS = {name: getattr(__import__("builtins"), name) for name in (
    "dict", "list", "tuple", "str", "bytes", "bytearray", "int", "float", "complex", "bool", "set", "frozenset",
    # object: copyreg._reconstructor rebuilds Python 2 instances as object.__new__(cls), cls itself allow-listed
    "object")}


def builtin_resolver(module: str, name: str) -> Optional[Any]:
    """Plain containers and scalars, ``copyreg._reconstructor`` and ``_codecs.encode`` (bytes at protocol < 3)."""
    module = _PY2_MODULES.get(module, module)
    if module == "builtins":
        return _BUILTINS.get(name)
    if (module, name) == ("copyreg", "_reconstructor"):
        # safe: it only calls the classes it is given, and those come through the resolver too
        return copyreg._reconstructor
    if (module, name) == ("_codecs", "encode"):
        return codecs.encode
    return None


# numpy's own pickling helpers, under numpy 1's (numpy.core) and numpy 2's (numpy._core) module names.
_NUMPY_HELPERS = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")}


def numpy_resolver(module: str, name: str) -> Optional[Any]:
    """numpy arrays, dtypes and scalars as numpy pickles them (``numpy.core`` and ``numpy._core`` names)."""
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if module == "numpy.dtypes" and name.endswith("DType"):
        return getattr(np.dtypes, name, None)
    for prefix in ("numpy.core.", "numpy._core."):
        if module.startswith(prefix) and (module[len(prefix):], name) in _NUMPY_HELPERS:
            core = getattr(np, "_core", None) or np.core
            return getattr(getattr(core, module[len(prefix):]), name, None)
    return None


def weights_only_refusal(err: BaseException) -> str:
    """One line for an error of ``torch.load(weights_only=True)``: the name it refused, when it refused one.

    torch's own message is a page of advice that ends with the refused ``GLOBAL``; a user needs which file was
    refused (the caller's part) and for what (this part).
    """
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found:
        return f"it asks for '{found.group(1)}', which a weights-only load refuses (a pickle can run code)"
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


# ------------------------------------------------------------------------------------------ TorchScript
class TorchScriptReadError(UserError, ValueError):
    """A TorchScript archive whose weights cannot be read as data."""


class _ScriptObject:
    """Stand-in for a TorchScript class (``__torch__.*``): keeps the pickled attributes, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self._state = state


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _StorageType:
    """What a pickle's ``torch.FloatStorage`` (etc.) stands for here: only its dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: Any, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...], *_: Any) -> Any:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise TorchScriptReadError(f"a tensor refers to {type(storage).__name__}, not to one of the archive's storages")
    return torch.empty((0,), dtype=storage.dtype).set_(storage._untyped_storage, int(offset), tuple(size),
                                                        tuple(stride))


def _torchscript_resolver(module: str, name: str) -> Optional[Any]:
    if module == "__torch__" or module.startswith("__torch__."):
        return type(name, (_ScriptObject,), {"__module__": "clip3dreid_script." + module})
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(_STORAGE_DTYPES[name])
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return _rebuild_tensor
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    return builtin_resolver(module, name)


def _flatten(obj: Any, prefix: str, out: Dict[str, torch.Tensor]) -> None:
    state = getattr(obj, "_state", None)
    if not isinstance(state, Mapping):
        return
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + str(key)] = value
        elif isinstance(value, _ScriptObject):
            _flatten(value, f"{prefix}{key}.", out)


def read_torchscript_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Reads the tensors of a TorchScript archive (``torch.jit.save``) without compiling or running its code.

    Args:
        path: the ``.pt`` archive, e.g. OpenAI's original CLIP files.

    Returns:
        ``{dotted.name: tensor}``: every tensor attribute of the scripted module tree, the same entries as
        ``torch.jit.load(path).state_dict()``.

    Raises:
        RefusedGlobalError: ``data.pkl`` names something other than tensors, storages and TorchScript classes.
        TorchScriptReadError: not a TorchScript archive, or a storage it names is missing.
    """
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise TorchScriptReadError(f"'{path}' is not a TorchScript archive (no single <name>/data.pkl)")
        root = pkl[0].split("/", 1)[0]
        order = zf.read(f"{root}/byteorder").decode().strip() if f"{root}/byteorder" in names else "little"
        if order != "little":
            raise TorchScriptReadError(f"'{path}' stores {order}-endian tensors; only little-endian files are read")
        storages: Dict[str, torch.storage.TypedStorage] = {}

        def persistent_load(pid: Any) -> torch.storage.TypedStorage:
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                    and isinstance(pid[1], _StorageType)):
                raise TorchScriptReadError(f"'{path}': unexpected persistent id {pid!r:.80}")
            key = str(pid[2])
            if key not in storages:
                entry = f"{root}/data/{osp.basename(key)}"
                if entry not in names:
                    raise TorchScriptReadError(f"'{path}' lacks the storage {entry}")
                data = zf.read(entry)
                # frombuffer refuses an empty buffer, and a zero-element tensor still has its storage entry
                raw = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if data
                       else torch.empty(0, dtype=torch.uint8))
                storages[key] = torch.storage.TypedStorage(wrap_storage=raw.untyped_storage(), dtype=pid[1].dtype,
                                                           _internal=True)
            return storages[key]

        unpickler = AllowListUnpickler(io.BytesIO(zf.read(pkl[0])), _torchscript_resolver)
        unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
        top = unpickler.load()
    out: Dict[str, torch.Tensor] = {}
    _flatten(top, "", out)
    return out

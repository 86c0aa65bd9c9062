"""Loading SMPL body models without chumpy, wrapped for the plugin's needs.

Official SMPL pickles (Python 2 era) store some arrays as ``chumpy.ch.Ch`` objects, and chumpy
does not import on current Python. :class:`ChumpyFreeUnpickler` maps every ``chumpy.*`` class to a
stub that only records its pickled state, and refuses every name outside numpy's and scipy.sparse's
data types and plain builtins, so a file from elsewhere can never run code. :func:`read_smpl_pickle`
then replaces each stub by the numpy array it wraps (chumpy stores it under ``x``). The cleaned dict goes to
``smplx.SMPL(data_struct=...)`` directly, so no cleaned copy of the licensed file is ever written.

Expected files (``smplx.create`` uses the same tree)::

    <model_dir>/smpl/SMPL_NEUTRAL.pkl
    <model_dir>/smpl/SMPL_MALE.pkl
    <model_dir>/smpl/SMPL_FEMALE.pkl

``model_dir`` may also be the ``smpl`` folder itself or a single ``.pkl`` file. The official
release names (``basicmodel_{neutral,m,f}_lbs_10_207_0_v1.*.pkl``) are accepted inside the folder
too.
"""
from __future__ import annotations

import contextlib
import glob
import io
import logging
import os.path as osp
from typing import Any, BinaryIO, Dict, List, Optional, Union

import numpy as np
import scipy.sparse
import smplx
import torch
import torch.nn as nn
from smplx.lbs import blend_shapes, vertices2joints
from smplx.utils import Struct
from smplx.vertex_ids import vertex_ids as smplx_ids

from clip3dreid_plugin.body.skeleton import NUM_BODY_JOINTS, NUM_JOINTS
from clip3dreid_plugin.errors import UserError
from clip3dreid_plugin.utils.safe_pickle import AllowListUnpickler, RefusedGlobalError, builtin_resolver, numpy_resolver

__all__ = ["BodyModelError", "BodyModel", "ChumpyFreeUnpickler", "read_smpl_pickle", "find_smpl_file",
           "load_body_model", "SMPL_HELP"]

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
SMPL_NUM_VERTICES = 6890
_OFFICIAL_NAMES = {
    "neutral": "basic[mM]odel_neutral_lbs_10_207_0_v1.*.pkl",
    "male": "basic[mM]odel_m_lbs_10_207_0_v1.*.pkl",
    "female": "basic[mM]odel_f_lbs_10_207_0_v1.*.pkl",
}
SMPL_HELP = (
    "SMPL is licensed and cannot be downloaded automatically: register at https://smpl.is.tue.mpg.de, "
    "download 'SMPL for Python' (version 1.1.0), and arrange its pickles as\n"
    "  <model_dir>/\n"
    "    smpl/\n"
    "      SMPL_NEUTRAL.pkl   (basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl)\n"
    "      SMPL_MALE.pkl      (basicmodel_m_lbs_10_207_0_v1.1.0.pkl)\n"
    "      SMPL_FEMALE.pkl    (basicmodel_f_lbs_10_207_0_v1.1.0.pkl)\n"
    "then set body.model_dir=<model_dir>. Without SMPL, `clip3dreid-make-body-model --out <model_dir>` "
    "writes a license-free procedural body in the same format (not SMPL's shape space)."
)


class BodyModelError(UserError, RuntimeError):
    """The body model files are missing, unreadable, or not in SMPL's format."""


# ------------------------------------------------------------------------------------------ unpickling
class _ChumpyStub:
    """Stand-in for any chumpy class: keeps the pickled state so the wrapped array can be recovered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        self._state = state


# scipy's sparse classes; Python 2 pickles name private modules such as scipy.sparse.csc, which SciPy 2 removes.
_SPARSE_CLASSES = frozenset(f"{fmt}_{kind}" for fmt in ("csc", "csr", "coo", "bsr", "dia", "dok", "lil")
                            for kind in ("matrix", "array"))


def _body_model_resolver(module: str, name: str) -> Any:
    """What SMPL / SMPL-X / SMPL-H files hold: numpy and scipy.sparse data, chumpy objects (stubbed), builtins."""
    if module == "chumpy" or module.startswith("chumpy."):
        return type(name, (_ChumpyStub,), {"__module__": "clip3dreid_stub." + module})
    if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE_CLASSES:
        return getattr(scipy.sparse, name, None)
    return numpy_resolver(module, name) or builtin_resolver(module, name)


class ChumpyFreeUnpickler(AllowListUnpickler):
    """Reads body-model pickles as data: never imports chumpy, and refuses every class a body model never holds.

    Raises:
        RefusedGlobalError: from :meth:`load`, before anything of the refused name is constructed.
    """

    def __init__(self, file: BinaryIO, **kwargs: Any) -> None:
        super().__init__(file, _body_model_resolver, **kwargs)


def _unstub(obj: Any, key: str, path: str) -> Any:
    """Replaces chumpy stubs by numpy arrays and sparse matrices by their usual types."""
    if isinstance(obj, _ChumpyStub):
        state = getattr(obj, "_state", None)
        if isinstance(state, dict):
            # a plain chumpy.Ch keeps its value under "x"; derived expressions (sums, slices) would need chumpy
            # itself to evaluate, and SMPL releases do not store any
            if "x" in state:
                return np.asarray(_unstub(state["x"], key, path))
            arrays = [v for v in state.values() if isinstance(v, np.ndarray)]
            if len(arrays) == 1:
                return arrays[0]
        if isinstance(state, np.ndarray):
            return state
        raise BodyModelError(f"{path}: cannot recover the array under key {key!r} from its chumpy object "
                             f"({type(obj).__name__}); re-export the model without chumpy")
    return obj


def read_smpl_pickle(path: str) -> Dict[str, Any]:
    """Reads an SMPL-format pickle (official or procedural) into a dict of plain numpy/scipy objects.

    Args:
        path: ``.pkl`` file.

    Returns:
        The model dict; ``shapedirs``/``v_template``/``weights``/... are numpy arrays, ``J_regressor`` a
        numpy array or scipy sparse matrix.

    Raises:
        BodyModelError: unreadable file or missing SMPL keys (the message names the file).
    """
    try:
        with open(path, "rb") as fh:
            data = ChumpyFreeUnpickler(fh, encoding="latin1").load()
    except FileNotFoundError as exc:
        raise BodyModelError(f"SMPL model file {path} does not exist.\n{SMPL_HELP}") from exc
    except RefusedGlobalError as exc:
        # one line and no download help: the file is not a damaged SMPL file but something else, maybe hostile
        raise BodyModelError(f"SMPL model file {path} was not loaded: it asks for '{exc.module}.{exc.name}', "
                             "which body-model files never hold (a pickle can run code)") from None
    except Exception as exc:
        raise BodyModelError(f"SMPL model file {path} is not a readable SMPL pickle "
                             f"({type(exc).__name__}: {exc}); re-download it.\n{SMPL_HELP}") from exc
    if not isinstance(data, dict):
        raise BodyModelError(f"SMPL model file {path} holds a {type(data).__name__}, not the dict SMPL pickles hold")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise BodyModelError(f"SMPL model file {path} lacks the keys {missing} (found {sorted(data)})")
    return {k: _unstub(v, k, path) for k, v in data.items()}


# ------------------------------------------------------------------------------------------ files
def find_smpl_file(model_dir: str, gender: str = "neutral") -> str:
    """Locates the pickle of ``gender`` under ``model_dir`` (see the module docstring for the layout).

    Raises:
        BodyModelError: no such file; the message explains where SMPL comes from and the expected tree.
    """
    gender = str(gender).lower()
    if gender not in _OFFICIAL_NAMES:
        raise BodyModelError(f"gender must be neutral, male or female, got {gender!r}")
    if not model_dir:
        raise BodyModelError(f"No body model folder given (body.model_dir is empty).\n{SMPL_HELP}")
    if osp.isfile(model_dir):
        return model_dir
    candidates: List[str] = []
    for folder in (osp.join(model_dir, "smpl"), model_dir):
        candidates.append(osp.join(folder, f"SMPL_{gender.upper()}.pkl"))
        if osp.isfile(candidates[-1]):
            return candidates[-1]
        official = sorted(glob.glob(osp.join(folder, _OFFICIAL_NAMES[gender])))
        if official:
            return official[-1]
    raise BodyModelError(f"SMPL {gender} model not found: looked for {candidates[0]} (and {candidates[1]}).\n"
                         f"{SMPL_HELP}")


# ------------------------------------------------------------------------------------------ wrapper
def _default_vertex_ids(num_vertices: int, data: Dict[str, Any]) -> Optional[Dict[str, int]]:
    """smplx's hard-coded extra-joint vertex ids only fit 6890-vertex meshes; small meshes bring their own."""
    if num_vertices == SMPL_NUM_VERTICES:
        return None  # smplx's defaults
    stored = data.get("vertex_ids")
    if isinstance(stored, dict):
        return {str(k): int(v) for k, v in stored.items()}
    # the extra joints are never used by the plugin; any valid index keeps smplx happy
    return {k: 0 for k in smplx_ids["smplh"]}


class BodyModel(nn.Module):
    """An SMPL(-format) body model: canonical shapes for the 3D loss, posed meshes for rendering.

    Attributes:
        smpl: the underlying ``smplx.SMPL`` module (10 betas).
        gender: ``neutral`` | ``male`` | ``female``.
        path: file the model was read from.
        faces: int64 numpy [F, 3].
        faces_tensor: long tensor [F, 3] (buffer, moves with ``.to``).
    """

    def __init__(self, data: Dict[str, Any], gender: str = "neutral", path: str = "", num_betas: int = 10) -> None:
        super().__init__()
        self.gender = gender
        self.path = path
        num_vertices = int(np.asarray(data["v_template"]).shape[0])
        try:
            # smplx prints a warning for 10-beta files; it is expected for SMPL 1.x, keep stdout clean
            with contextlib.redirect_stdout(io.StringIO()):
                self.smpl = smplx.SMPL(model_path="", data_struct=Struct(**data), gender=gender, num_betas=num_betas,
                                       vertex_ids=_default_vertex_ids(num_vertices, data), batch_size=1,
                                       # no nn.Parameters: every call passes its own tensors, and a body model
                                       # attached to a student must add nothing to its optimiser
                                       create_betas=False, create_body_pose=False, create_global_orient=False,
                                       create_transl=False)
        except Exception as exc:
            raise BodyModelError(f"{path or 'body model'}: smplx could not build SMPL from it "
                                 f"({type(exc).__name__}: {exc})") from exc
        if self.smpl.J_regressor.shape[0] != NUM_JOINTS:
            raise BodyModelError(f"{path}: J_regressor has {self.smpl.J_regressor.shape[0]} joints, SMPL has 24")
        self.faces = np.asarray(self.smpl.faces, dtype=np.int64)
        self.register_buffer("faces_tensor", torch.as_tensor(self.faces), persistent=False)

    @property
    def num_betas(self) -> int:
        return int(self.smpl.num_betas)

    @property
    def num_vertices(self) -> int:
        return int(self.smpl.v_template.shape[0])

    def _betas(self, betas: torch.Tensor) -> torch.Tensor:
        """Pads or checks betas [B, k] to [B, num_betas] (missing coefficients are 0)."""
        betas = torch.as_tensor(betas, dtype=self.smpl.v_template.dtype, device=self.smpl.v_template.device)
        if betas.dim() == 1:
            betas = betas[None]
        k = betas.shape[1]
        if k > self.num_betas:
            raise ValueError(f"got {k} shape coefficients, the model has {self.num_betas}")
        if k < self.num_betas:
            betas = torch.cat([betas, betas.new_zeros(betas.shape[0], self.num_betas - k)], 1)
        return betas

    def canonical_vertices(self, betas: torch.Tensor) -> torch.Tensor:
        """Vertices of the zero pose (SMPL's T-pose) for ``betas``; differentiable w.r.t. ``betas``.

        Args:
            betas: [B, k] shape coefficients, k <= num_betas.

        Returns:
            [B, V, 3] vertices in metres.
        """
        betas = self._betas(betas)
        # with zero pose, linear blend skinning is the identity: the shaped template is the answer
        return self.smpl.v_template[None] + blend_shapes(betas, self.smpl.shapedirs)

    def canonical_joints(self, betas: torch.Tensor) -> torch.Tensor:
        """Joints [B, 24, 3] of the zero pose (regressed from ``canonical_vertices``)."""
        return vertices2joints(self.smpl.J_regressor, self.canonical_vertices(betas))

    def posed_vertices(self, betas: torch.Tensor, body_pose: torch.Tensor, global_orient: Optional[torch.Tensor] = None,
                       transl: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Posed vertices.

        Args:
            betas: [B, k] shape coefficients.
            body_pose: [B, 69] axis-angle rotations of joints 1..23.
            global_orient: [B, 3] pelvis rotation (default zeros).
            transl: [B, 3] translation (default zeros).

        Returns:
            [B, V, 3] vertices.
        """
        betas = self._betas(betas)
        dev, dt = betas.device, betas.dtype
        body_pose = torch.as_tensor(body_pose, dtype=dt, device=dev).reshape(-1, 3 * NUM_BODY_JOINTS)
        b = max(betas.shape[0], body_pose.shape[0])
        betas = betas.expand(b, -1) if betas.shape[0] == 1 else betas
        body_pose = body_pose.expand(b, -1) if body_pose.shape[0] == 1 else body_pose
        go = torch.zeros(b, 3, dtype=dt, device=dev) if global_orient is None else \
            torch.as_tensor(global_orient, dtype=dt, device=dev).reshape(-1, 3).expand(b, -1)
        tr = torch.zeros(b, 3, dtype=dt, device=dev) if transl is None else \
            torch.as_tensor(transl, dtype=dt, device=dev).reshape(-1, 3).expand(b, -1)
        out = self.smpl(betas=betas, body_pose=body_pose, global_orient=go, transl=tr)
        return out.vertices

    def forward(self, betas: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`canonical_vertices` (the form the 3D loss needs)."""
        return self.canonical_vertices(betas)


def load_body_model(model_dir: str, gender: str = "neutral", device: Union[str, torch.device] = "cpu",
                    num_betas: int = 10) -> BodyModel:
    """Loads an SMPL(-format) model without chumpy.

    Args:
        model_dir: root holding ``smpl/SMPL_{GENDER}.pkl`` (or that folder, or a ``.pkl`` file).
        gender: ``neutral`` | ``male`` | ``female``.
        device: torch device for the buffers.
        num_betas: shape coefficients to use (SMPL 1.x files have 10).

    Returns:
        A :class:`BodyModel` in eval mode on ``device``.

    Raises:
        BodyModelError: missing/corrupt file, with instructions to obtain SMPL.
    """
    path = find_smpl_file(model_dir, gender)
    data = read_smpl_pickle(path)
    model = BodyModel(data, gender=str(gender).lower(), path=path, num_betas=num_betas)
    logger.debug("loaded %s body model from %s (%d vertices)", gender, path, model.num_vertices)
    return model.to(device).eval()

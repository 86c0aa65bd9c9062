"""Headless, untextured mesh rendering with pyrender (EGL or OSMesa, CPU-only machines included).

PyOpenGL binds its platform (GLX, EGL, OSMesa) when ``OpenGL`` is first imported and pyrender
reads ``PYOPENGL_PLATFORM`` when it creates a context, so the platform must be chosen before
either is imported. :func:`select_gl_platform` does that:

* a ``PYOPENGL_PLATFORM`` already set in the environment is respected as it is;
* otherwise EGL is probed with ctypes (``libEGL`` loads and reports at least one device, the same
  query pyrender makes) and used when it works: Debian's ``libegl1 libegl-mesa0
  libgl1-mesa-dri`` give a software (llvmpipe) EGL device on machines without a GPU;
* otherwise OSMesa is used when ``libOSMesa`` loads and PyOpenGL is >= 3.1.5 (pyrender pins
  3.1.0, whose ``OpenGL.osmesa`` lacks ``OSMesaCreateContextAttribs``);
* otherwise, or when creating the context fails, :class:`HeadlessGLError` says what to install.

The probe runs in-process and costs a few milliseconds; switching platform after a failed
context creation is not attempted because PyOpenGL cannot rebind its platform in a running
process.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import logging
import math
import os
import sys
from importlib import metadata
from typing import Optional, Sequence, Tuple

import numpy as np

from clip3dreid_plugin.errors import UserError

__all__ = ["HeadlessGLError", "select_gl_platform", "MeshRenderer", "INSTALL_HINT", "vertex_normals"]

logger = logging.getLogger(__name__)

PLATFORM_ENV = "PYOPENGL_PLATFORM"
INSTALL_HINT = (
    "Headless OpenGL is needed to render synthetic bodies. Install EGL with Mesa's software driver "
    "(Debian/Ubuntu: `apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri`, then PYOPENGL_PLATFORM=egl), "
    "or OSMesa (`apt-get install libosmesa6` and `pip install 'PyOpenGL>=3.1.5'`, then PYOPENGL_PLATFORM=osmesa). "
    "On a machine with an NVIDIA driver, EGL uses the GPU."
)


class HeadlessGLError(UserError, RuntimeError):
    """No usable headless OpenGL platform (EGL or OSMesa) on this machine."""


def _egl_usable() -> bool:
    """True when libEGL loads and reports a device (pyrender's own EGL code path)."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("EGL") or "libEGL.so.1")
    except OSError:
        return False
    try:
        lib.eglGetProcAddress.restype = ctypes.c_void_p
        lib.eglGetProcAddress.argtypes = [ctypes.c_char_p]
        addr = lib.eglGetProcAddress(b"eglQueryDevicesEXT")
        if not addr:
            # pyrender then falls back to the default display; accept it and let context creation decide
            return True
        query = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int))(addr)
        count = ctypes.c_int(0)
        return bool(query(0, None, ctypes.byref(count))) and count.value >= 1
    except (AttributeError, OSError):
        return False


def _pyopengl_version() -> Tuple[int, ...]:
    try:
        text = metadata.version("PyOpenGL")
    except metadata.PackageNotFoundError:
        return (0,)
    return tuple(int(x) for x in text.split(".")[:3] if x.isdigit())


def _osmesa_usable() -> bool:
    """True when libOSMesa loads and PyOpenGL is new enough for pyrender's OSMesa context."""
    name = ctypes.util.find_library("OSMesa")
    if not name:
        return False
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return _pyopengl_version() >= (3, 1, 5)


def select_gl_platform() -> str:
    """Chooses the headless platform and exports ``PYOPENGL_PLATFORM`` (see the module docstring).

    Returns:
        The platform name (``egl``, ``osmesa`` or whatever the environment already said).

    Raises:
        HeadlessGLError: neither EGL nor OSMesa is usable.
    """
    env = os.environ.get(PLATFORM_ENV, "")
    if env:
        return env
    if "OpenGL" in sys.modules:
        logger.warning("PyOpenGL was imported before %s was set; rendering may use a non-headless platform",
                       PLATFORM_ENV)
    if _egl_usable():
        choice = "egl"
    elif _osmesa_usable():
        choice = "osmesa"
    else:
        raise HeadlessGLError("No headless OpenGL platform found (EGL has no device; OSMesa is missing or "
                              f"PyOpenGL is older than 3.1.5). {INSTALL_HINT}")
    os.environ[PLATFORM_ENV] = choice
    logger.debug("headless OpenGL platform: %s", choice)
    return choice


def _load_bundled_llvm_first() -> None:
    """Imports triton, when installed, before Mesa creates a context.

    Why: Mesa's software rasteriser (llvmpipe) loads the system ``libLLVM`` with global symbols. triton
    (which ``import open_clip`` pulls in through ``torch._dynamo``) bundles its own LLVM; loaded after
    Mesa, its static initialisers bind to the system copy and the process dies with SIGSEGV in
    ``llvm::cl::Option::addArgument``. Loaded first, each copy keeps to itself. So rendering and then
    labelling with the CLIP teacher in one process (the quickstart) works.
    """
    if "triton" in sys.modules:
        return
    try:
        importlib.import_module("triton")
    except Exception as exc:  # no triton (CPU wheels), or one that cannot load here: nothing to protect
        logger.debug("triton not preloaded before rendering: %s: %s", type(exc).__name__, exc)


def _rotation_y(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [V, 3] (float32) for smooth shading.

    Computed here rather than by trimesh: trimesh's angle-weighted normals cost as much as rasterising the
    mesh (``benchmarks/bench_render.py``).
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 * area: area weighting for free
    vn = np.zeros_like(v)
    for k in range(3):
        for d in range(3):
            vn[:, d] += np.bincount(f[:, k], weights=fn[:, d], minlength=len(v))
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return (vn / np.maximum(norm, 1e-12)).astype(np.float32)


class MeshRenderer:
    """Renders one untextured, shaded body mesh per call into an RGB image, reusing one GL context.

    The camera sits on +z looking down -z (the body's front faces it at yaw 0); ``yaw_deg`` turns the
    body about the vertical axis through its centre, so yaw 90 shows its left side. The framing puts the
    whole body in view and fills the frame (up to ``margin`` and ``distance_scale``).

    Args:
        height: image height H (pixels).
        width: image width W (pixels).
        background: RGB in [0, 1] of the plain background.
        color: RGB in [0, 1] of the body's material.
        yfov_deg: vertical field of view (a mild telephoto, as surveillance crops are).
        margin: >= 1; the body's bounding box times this fits the frame at ``distance_scale`` 1.
        ambient: ambient light level in [0, 1].
        light_intensity: key light intensity.
    """

    def __init__(self, height: int = 384, width: int = 192, background: Sequence[float] = (0.5, 0.5, 0.5),
                 color: Sequence[float] = (0.80, 0.64, 0.54), yfov_deg: float = 25.0, margin: float = 1.06,
                 ambient: float = 0.3, light_intensity: float = 2.0) -> None:
        self.height, self.width = int(height), int(width)
        self.background = tuple(float(c) for c in background)
        self.margin = float(margin)
        self.yfov = math.radians(yfov_deg)
        self.platform = select_gl_platform()
        _load_bundled_llvm_first()
        try:
            import pyrender  # optional at import time, and it needs OpenGL: only a renderer loads it

            self._renderer = pyrender.OffscreenRenderer(self.width, self.height)
        except Exception as exc:  # pyrender raises ValueError, ImportError, RuntimeError or GL errors
            raise HeadlessGLError(f"Could not create a headless OpenGL context with {PLATFORM_ENV}="
                                  f"{os.environ.get(PLATFORM_ENV)!r}: {type(exc).__name__}: {exc}. {INSTALL_HINT}"
                                  ) from exc
        self._pyrender = pyrender
        self._material = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=(*[float(c) for c in color], 1.0), metallicFactor=0.0, roughnessFactor=0.8)
        self._scene = pyrender.Scene(bg_color=(*self.background, 1.0), ambient_light=(ambient,) * 3)
        self._camera = pyrender.PerspectiveCamera(yfov=self.yfov, aspectRatio=self.width / self.height)
        self._cam_node = self._scene.add(self._camera, pose=np.eye(4))
        # key light from above-left of the camera and a weaker fill from the right, both riding with the camera
        key = pyrender.DirectionalLight(color=np.ones(3), intensity=light_intensity)
        fill = pyrender.DirectionalLight(color=np.ones(3), intensity=0.35 * light_intensity)
        self._scene.add(key, pose=self._light_pose(-25.0, 30.0), parent_node=self._cam_node)
        self._scene.add(fill, pose=self._light_pose(10.0, -40.0), parent_node=self._cam_node)
        # kept so that per-call overrides (render(..., light_intensity=...)) can be applied and undone
        self._key, self._fill = key, fill
        self._light_intensity = float(light_intensity)
        self._ambient = float(ambient)
        # white base colour: the shader multiplies the lit colour by the per-vertex colour (COLOR_0)
        self._vc_material = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=(1.0, 1.0, 1.0, 1.0), metallicFactor=0.0, roughnessFactor=0.8)
        self._mesh_node = None

    @staticmethod
    def _light_pose(pitch_deg: float, yaw_deg: float) -> np.ndarray:
        """Pose of a directional light (it shines along its -z) tilted from the camera's view direction."""
        p, y = math.radians(pitch_deg), math.radians(yaw_deg)
        rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
        pose = np.eye(4)
        pose[:3, :3] = _rotation_y(y) @ rx
        return pose

    def frame(self, vertices: np.ndarray, yaw_deg: float = 0.0, distance_scale: float = 1.0
              ) -> Tuple[np.ndarray, np.ndarray, float]:
        """Turns the body by ``yaw_deg`` and places the camera.

        Args:
            vertices: [V, 3] posed body vertices (SMPL frame: y up, facing +z).
            yaw_deg: rotation of the body about the vertical axis (degrees).
            distance_scale: >= 1 moves the camera back (smaller body in the frame).

        Returns:
            (turned vertices [V, 3], camera pose [4, 4], camera-to-body-centre distance in metres).
        """
        v = np.asarray(vertices, dtype=np.float64)
        centre = 0.5 * (v.min(0) + v.max(0))
        v = (v - centre) @ _rotation_y(math.radians(yaw_deg)).T
        lo, hi = v.min(0), v.max(0)
        half_h = 0.5 * (hi[1] - lo[1]) * self.margin
        half_w = 0.5 * (hi[0] - lo[0]) * self.margin
        tan_y = math.tan(0.5 * self.yfov)
        tan_x = tan_y * self.width / self.height
        # the bounding box's front face must fit both fields of view; anything behind it projects smaller
        d_front = max(half_h / tan_y, half_w / tan_x) * float(distance_scale)
        mid = 0.5 * (lo + hi)
        pose = np.eye(4)
        pose[:3, 3] = (mid[0], mid[1], hi[2] + d_front)
        return v, pose, float(hi[2] + d_front - mid[2])

    def render(self, vertices: np.ndarray, faces: np.ndarray, yaw_deg: float = 0.0,
               distance_scale: float = 1.0, *, vertex_colors: Optional[np.ndarray] = None,
               background: Optional[Sequence[float]] = None, light_intensity: Optional[float] = None,
               ambient: Optional[float] = None) -> np.ndarray:
        """Renders one body.

        Args:
            vertices: [V, 3] posed vertices in metres.
            faces: [F, 3] triangle indices.
            yaw_deg: body rotation about the vertical axis (0 = facing the camera).
            distance_scale: camera distance relative to the tightest framing (>= 1).
            vertex_colors: optional [V, 3] RGB in [0, 1] per vertex (clothes, skin); None = the uniform
                material colour given to the constructor.
            background: optional RGB in [0, 1] for this image only; None = the constructor's.
            light_intensity: optional key-light intensity for this image only (the fill light keeps its
                ratio); None = the constructor's.
            ambient: optional ambient level in [0, 1] for this image only; None = the constructor's.

        Returns:
            uint8 image [H, W, 3] (RGB).
        """
        rgb, _ = self.render_rgbd(vertices, faces, yaw_deg, distance_scale, vertex_colors=vertex_colors,
                                  background=background, light_intensity=light_intensity, ambient=ambient)
        return rgb

    def render_rgbd(self, vertices: np.ndarray, faces: np.ndarray, yaw_deg: float = 0.0,
                    distance_scale: float = 1.0, *, vertex_colors: Optional[np.ndarray] = None,
                    background: Optional[Sequence[float]] = None, light_intensity: Optional[float] = None,
                    ambient: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Like :meth:`render`, also returning the depth map (0 where no surface: the background mask).

        Returns:
            (uint8 image [H, W, 3] RGB, float32 depth [H, W] in metres, 0 on the background).
        """
        v, pose, _ = self.frame(vertices, yaw_deg, distance_scale)
        f = np.asarray(faces, dtype=np.int64)
        if vertex_colors is None:
            color_0, material = None, self._material
        else:
            vc = np.asarray(vertex_colors, dtype=np.float32)
            if vc.shape != (len(v), 3):
                raise ValueError(f"vertex_colors must be [{len(v)}, 3], got {list(vc.shape)}")
            color_0 = np.concatenate([np.clip(vc, 0.0, 1.0), np.ones((len(v), 1), np.float32)], 1)
            material = self._vc_material
        prim = self._pyrender.Primitive(positions=v.astype(np.float32), normals=vertex_normals(v, f),
                                        color_0=color_0, indices=f.astype(np.uint32), material=material)
        mesh = self._pyrender.Mesh([prim])
        if self._mesh_node is not None:
            self._scene.remove_node(self._mesh_node)
        self._mesh_node = self._scene.add(mesh)
        self._scene.set_pose(self._cam_node, pose)
        # per-call overrides are set every call (back to the defaults when None), so no state leaks between calls
        bg = self.background if background is None else tuple(float(c) for c in background)
        self._scene.bg_color = (*bg, 1.0)
        li = self._light_intensity if light_intensity is None else float(light_intensity)
        self._key.intensity, self._fill.intensity = li, 0.35 * li
        self._scene.ambient_light = np.full(3, self._ambient if ambient is None else float(ambient))
        color, depth = self._renderer.render(self._scene)
        return np.ascontiguousarray(color[..., :3]), np.asarray(depth, dtype=np.float32)

    def close(self) -> None:
        """Releases the GL context (safe to call twice)."""
        if getattr(self, "_renderer", None) is not None:
            self._renderer.delete()
            self._renderer = None

    def __enter__(self) -> "MeshRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter shutdown
        try:
            self.close()
        except Exception:
            pass

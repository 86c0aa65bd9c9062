"""Builds a face-blurred copy of a dataset folder (e.g. Celeb-reID -> Celeb-reID-blur).

Example::

    clip3dreid-blur-faces --src /data/Celeb-reID --dst /data/Celeb-reID-blur

The output mirrors the input tree file for file. Faces are found with OpenCV's bundled Haar
cascade (``haarcascade_frontalface_default.xml`` under ``cv2.data.haarcascades``) and each
detected box is Gaussian-blurred; nothing else is touched. As in the CLIP3DReID paper, only
detected faces are blurred: an image without a detection is copied byte for byte (no fallback
region is blurred), and the number of such images is logged. Non-image files are copied as they
are. JPEG images with a detection are re-encoded (``--quality``), PNG images losslessly.

OpenCV 5 removed ``CascadeClassifier`` from the main modules; with such a build the script stops
with an explanation (install ``opencv-python-headless<5``, or pass a cascade file to an OpenCV
build that has ``CascadeClassifier``).
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import shutil
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from clip3dreid_plugin.errors import InputError, UserError
from clip3dreid_plugin.tools.common import CLIParser, cli_main, start_cli
from clip3dreid_plugin.utils.progress import progress

logger = logging.getLogger("blur_faces")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"

Box = Tuple[int, int, int, int]  # x, y, w, h
Detector = Callable[[np.ndarray], List[Box]]


class DetectorUnavailable(UserError, RuntimeError):
    """The Haar cascade detector cannot be built with this OpenCV installation."""


class DestinationNotEmptyError(UserError, FileExistsError):
    """``--dst`` holds files and ``--overwrite`` was not given."""


def haar_detector(cascade_path: Optional[str] = None, scale_factor: float = 1.1, min_neighbors: int = 5,
                  min_size: int = 12) -> Detector:
    """Returns ``detect(bgr_image) -> [(x, y, w, h), ...]`` using a Haar cascade.

    Args:
        cascade_path: cascade XML file; default: OpenCV's bundled frontal-face cascade.
        scale_factor: ``detectMultiScale`` pyramid step.
        min_neighbors: ``detectMultiScale`` minNeighbors (higher = fewer false positives).
        min_size: smallest face side in pixels (ReID crops hold small faces).

    Raises:
        DetectorUnavailable: OpenCV has no ``CascadeClassifier`` or the cascade file is missing/invalid.
    """
    if not hasattr(cv2, "CascadeClassifier"):
        raise DetectorUnavailable(
            f"OpenCV {cv2.__version__} has no CascadeClassifier (removed from the main modules in OpenCV 5); "
            "install opencv-python-headless<5 to use the bundled Haar cascade"
        )
    if cascade_path is None:
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
        cascade_path = osp.join(folder, DEFAULT_CASCADE)
    if not osp.isfile(cascade_path):
        raise DetectorUnavailable(f"Haar cascade file not found: '{cascade_path}' (pass --cascade FILE)")
    clf = cv2.CascadeClassifier(cascade_path)
    if clf.empty():
        raise DetectorUnavailable(f"cannot load Haar cascade '{cascade_path}'")

    def detect(img: np.ndarray) -> List[Box]:
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        gray = cv2.equalizeHist(gray)
        boxes = clf.detectMultiScale(gray, scaleFactor=scale_factor, minNeighbors=min_neighbors,
                                     minSize=(min_size, min_size))
        return [tuple(int(v) for v in b) for b in boxes]

    return detect


def blur_boxes(img: np.ndarray, boxes: Sequence[Box], kernel_frac: float = 0.5, sigma: float = 0.0) -> np.ndarray:
    """Returns a copy of ``img`` with each box Gaussian-blurred and every other pixel unchanged.

    Args:
        img: ``H x W x C`` (or ``H x W``) uint8 image.
        boxes: ``(x, y, w, h)`` boxes; clipped to the image, empty ones ignored.
        kernel_frac: kernel side as a fraction of the box's shorter side (made odd, at least 3),
            so the blur strength follows the face size.
        sigma: Gaussian sigma; 0 lets OpenCV derive it from the kernel size.
    """
    out = img.copy()
    h_img, w_img = img.shape[:2]
    for x, y, w, h in boxes:
        x0, y0 = max(0, int(x)), max(0, int(y))
        x1, y1 = min(w_img, int(x + w)), min(h_img, int(y + h))
        if x1 <= x0 or y1 <= y0:
            continue
        k = max(3, int(min(x1 - x0, y1 - y0) * kernel_frac))
        k += 1 - k % 2
        # Blurring the crop alone keeps pixels outside the box bit-identical.
        out[y0:y1, x0:x1] = cv2.GaussianBlur(img[y0:y1, x0:x1], (k, k), sigma)
    return out


def _check_paths(src: str, dst: str, overwrite: bool) -> None:
    if not osp.isdir(src):
        raise FileNotFoundError(f"--src '{src}' does not exist or is not a folder")
    s, d = osp.realpath(src), osp.realpath(dst)
    if d == s or d.startswith(s + os.sep) or s.startswith(d + os.sep):
        raise InputError(f"--dst '{dst}' must not be --src or nested in/around it")
    if osp.isdir(dst) and os.listdir(dst) and not overwrite:
        raise DestinationNotEmptyError(f"--dst '{dst}' is not empty (pass --overwrite to write into it)")


def process_tree(src: str, dst: str, detect: Detector, overwrite: bool = False, kernel_frac: float = 0.5,
                 jpeg_quality: int = 95, show_progress: bool = True) -> Dict[str, int]:
    """Mirrors ``src`` into ``dst``, blurring detected faces in every image.

    Args:
        src: input dataset folder.
        dst: output folder (created; must not overlap ``src``).
        detect: face detector, ``bgr_image -> boxes``.
        overwrite: allow a non-empty ``dst``.
        kernel_frac: see :func:`blur_boxes`.
        jpeg_quality: quality of re-encoded JPEG files.
        show_progress: show a tqdm bar.

    Returns:
        Counts: ``images``, ``blurred`` (at least one face), ``no_face`` (copied unchanged),
        ``other_files`` (non-images, copied).

    Raises:
        FileNotFoundError, ValueError, FileExistsError: bad ``src``/``dst``.
        OSError: an image cannot be decoded or written (the message names it).
    """
    _check_paths(src, dst, overwrite)
    files: List[str] = []
    for folder, dirs, names in os.walk(src):
        dirs.sort()
        rel = osp.relpath(folder, src)
        os.makedirs(osp.join(dst, rel), exist_ok=True)
        files.extend(osp.normpath(osp.join(rel, n)) for n in sorted(names))

    counts = {"images": 0, "blurred": 0, "no_face": 0, "other_files": 0}
    first_no_face = ""
    for rel in progress(files, total=len(files), desc="blurring faces", enabled=show_progress):
        s_path, d_path = osp.join(src, rel), osp.join(dst, rel)
        ext = osp.splitext(rel)[1].lower()
        if ext not in IMAGE_EXTS:
            shutil.copy2(s_path, d_path)
            counts["other_files"] += 1
            continue
        counts["images"] += 1
        img = cv2.imread(s_path, cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f"cannot read image '{s_path}'")
        boxes = detect(img)
        if not boxes:
            shutil.copy2(s_path, d_path)
            counts["no_face"] += 1
            first_no_face = first_no_face or s_path
            continue
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext in (".jpg", ".jpeg") else []
        if not cv2.imwrite(d_path, blur_boxes(img, boxes, kernel_frac), params):
            raise OSError(f"cannot write image '{d_path}'")
        counts["blurred"] += 1

    logger.info("blurred faces in %d of %d images; copied %d other files", counts["blurred"], counts["images"],
                counts["other_files"])
    if counts["no_face"]:
        logger.warning("no face detected in %d of %d images (copied unchanged); first: '%s'",
                       counts["no_face"], counts["images"], first_no_face)
    return counts


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad arguments or no detector)."""
    parser = CLIParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help="dataset folder to read, e.g. ROOT/Celeb-reID")
    parser.add_argument("--dst", required=True, help="folder to write, e.g. ROOT/Celeb-reID-blur")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --dst")
    parser.add_argument("--cascade", default=None, help=f"Haar cascade XML (default: OpenCV's {DEFAULT_CASCADE})")
    parser.add_argument("--scale-factor", type=float, default=1.1)
    parser.add_argument("--min-neighbors", type=int, default=5)
    parser.add_argument("--min-size", type=int, default=12, help="smallest face side in pixels")
    parser.add_argument("--kernel-frac", type=float, default=0.5, help="blur kernel side / face box side")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images")
    args = parser.parse_args(argv)
    start_cli(stream=sys.stderr)

    detect = haar_detector(args.cascade, args.scale_factor, args.min_neighbors, args.min_size)
    counts = process_tree(args.src, args.dst, detect, overwrite=args.overwrite, kernel_frac=args.kernel_frac,
                          jpeg_quality=args.quality)
    print(f"{counts['images']} images: {counts['blurred']} blurred, {counts['no_face']} without a detected face "
          f"(copied unchanged); {counts['other_files']} other files copied -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Image reading that fails fast.

torchreid's ``read_image`` retries forever on an ``IOError`` (a truncated or corrupt file hangs
training). This reader raises once, naming the file.
"""
from __future__ import annotations

from PIL import Image, UnidentifiedImageError

from datasets_ext.errors import DatasetError

__all__ = ["ImageReadError", "read_image"]


class ImageReadError(DatasetError, IOError):
    """An image file is missing or cannot be decoded."""


def read_image(path: str) -> Image.Image:
    """Reads ``path`` as an RGB PIL image.

    Raises:
        ImageReadError: the file is missing, truncated or not an image; the message names it.
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: '{path}'") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read image '{path}': {err}") from None

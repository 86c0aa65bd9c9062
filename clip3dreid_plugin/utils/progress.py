"""tqdm progress bars that stay quiet in CI logs unless asked for."""
from __future__ import annotations

import os
import sys
from typing import Iterable, Optional

from tqdm.auto import tqdm

__all__ = ["progress"]


def progress(iterable: Iterable, total: Optional[int] = None, desc: str = "", enabled: bool = True) -> Iterable:
    """Wraps ``iterable`` in a tqdm bar (on stderr) when ``enabled``.

    ``CLIP3DREID_PROGRESS=0`` disables every bar, e.g. in CI.
    """
    if not enabled or os.environ.get("CLIP3DREID_PROGRESS", "1") == "0":
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                mininterval=1.0)

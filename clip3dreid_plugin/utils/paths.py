"""Whether a path named by a file from elsewhere (an archive member, a metadata entry) stays inside its folder."""
from __future__ import annotations

__all__ = ["stays_inside"]


def stays_inside(relative: str) -> bool:
    """True when ``relative`` is a relative path without a ``..`` component: joined to a folder, it can only descend.

    The check is on the name alone, so links the user made inside the folder (a dataset on another disk) keep
    working, while a name that climbs out (``../x``), or climbs through a link an archive made first
    (``y -> .`` then ``y/../x``), is refused.

    Args:
        relative: the path as the file names it (``/`` or ``\\`` separators).
    """
    if not relative or relative.startswith(("/", "\\")) or relative[1:2] == ":":
        return False
    return ".." not in relative.replace("\\", "/").split("/")

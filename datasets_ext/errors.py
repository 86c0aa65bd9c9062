"""The base of the dataset loaders' errors. ``datasets_ext`` imports nothing of the plugin, so it has its own base;
the plugin's commands count it among the user errors (``clip3dreid_plugin.tools.common.user_error_types``)."""
from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(Exception):
    """A dataset on disk is not what its loader expects (a layout, a file); the message names it and the fix."""

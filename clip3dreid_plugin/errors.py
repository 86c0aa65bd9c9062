"""The base of every error a user can fix: its message names the file or option and the fix, so a command prints it
as one line (``error: ...``, exit status 2) instead of a traceback.

The bottom layer: it imports nothing of the plugin, and every package may import it. Each error keeps the built-in
base its callers caught before (``ValueError``, ``RuntimeError``, ``KeyError``, ``OSError``) as a second base.
"""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "InputError", "WriteError"]


class UserError(Exception):
    """An error caused by the user's input or machine (a config value, a file, a missing package), not by a bug."""


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the file and key.

    Defined here, at the bottom, so that a lower layer (``utils.runtime`` choosing the device) can raise it without
    importing the config package; :mod:`clip3dreid_plugin.config.loader` re-exports it.
    """


class InputError(UserError, ValueError):
    """A command's argument, or a file given to it, is not what it takes; the message names it and the fix."""


class WriteError(UserError, OSError):
    """A file could not be written (no space left, permission denied); the message names the file and the cause.

    ``errno`` is the failed OS call's, ``filename`` (and ``path``) the file that was to be written, ``cause`` the OS
    error's text (its ``strerror``).
    """

    def __init__(self, path: str, err: OSError) -> None:
        """Args: path: the file that was to be written. err: the failed OS call's error."""
        self.path, self.cause = path, err.strerror or str(err) or type(err).__name__
        super().__init__(err.errno, f"cannot write '{path}': {self.cause}", path)

    def __str__(self) -> str:  # OSError's own str would print "[Errno 28] ..." before the message
        return str(self.strerror)

    def __reduce__(self):  # rebuilt from its own arguments (a DataLoader worker or a spawned process pickles it)
        return type(self), (self.path, OSError(self.errno, self.cause))

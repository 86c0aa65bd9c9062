"""The code a process runs: the checkout's commit, so that a result names the code that measured it."""
from __future__ import annotations

import os.path as osp
import subprocess

__all__ = ["code_version"]


def code_version() -> str:
    """The commit of the checkout this package is loaded from (``+dirty`` with uncommitted changes), or
    ``unknown`` outside a git checkout (an installed wheel).

    Call it when a process starts: a commit made while a campaign runs must not be credited with its results.
    """
    here = osp.dirname(osp.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        # benchmarks/results/ is left out: a campaign's own tracked log changes while it runs.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)benchmarks/results"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")

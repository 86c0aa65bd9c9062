"""The harness that runs every fenced ``bash`` / ``python`` / ``yaml`` block of README.md and docs/*.md.

A block not meant to run is marked on the line just before its fence with ``<!-- doc-test: skip (reason) -->``; the
reason is required. The only changes made to a block before it runs are the substitutions declared once in
``substitutions.yaml`` next to this file (documented fixture paths and sizes), applied where their text occurs.

Bash blocks run under ``bash -euo pipefail``; python blocks with ``python -c``; yaml blocks must parse. Console
scripts (``clip3dreid-*``) resolve through a PATH shim generated from setup.py's ``COMMANDS``, so the blocks run
from a checkout as from an install.
"""
from __future__ import annotations

import ast
import os
import os.path as osp
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

import yaml

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SUBSTITUTIONS = osp.join(osp.dirname(osp.abspath(__file__)), "substitutions.yaml")
LANGS = ("bash", "python", "yaml")
_FENCE = re.compile(r"^```(\S*)\s*$")
_MARK = re.compile(r"^<!--\s*doc-test:(.*?)-->\s*$")
_SKIP = re.compile(r"^\s*skip\s*\((.*\S.*)\)\s*$")


class DocBlockError(Exception):
    """A marker or fence that the harness cannot read; the message names ``file:line``."""


@dataclass
class Block:
    """One fenced block: ``path`` relative to the repository, ``line`` the 1-based line of its opening fence."""

    path: str
    line: int
    lang: str
    code: str
    skip: Optional[str] = None  # the marker's reason; None: the block runs

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def doc_files(repo: str = REPO) -> List[str]:
    """README.md and docs/*.md (BENCHMARKS.md is a lab notebook of its own, not run)."""
    docs = osp.join(repo, "docs")
    return ["README.md"] + sorted(f"docs/{n}" for n in os.listdir(docs) if n.endswith(".md"))


def extract(path: str, repo: str = REPO) -> List[Block]:
    """Every bash / python / yaml block of ``path`` (relative to ``repo``), with its skip marker.

    Raises:
        DocBlockError: a skip marker without a reason, an unknown marker, a marker not followed by a fence, or an
            unclosed fence; the message names ``path:line``.
    """
    lines = open(osp.join(repo, path), encoding="utf-8").read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        mark = _MARK.match(lines[i].strip())
        if mark:
            if not _SKIP.match(mark.group(1)):
                raise DocBlockError(f"{path}:{i + 1}: a doc-test marker must read '<!-- doc-test: skip (reason) -->' "
                                    f"with the reason (network, GPU, ...), got {lines[i].strip()!r}")
            if i + 1 >= len(lines) or not _FENCE.match(lines[i + 1]) or not _FENCE.match(lines[i + 1]).group(1):
                raise DocBlockError(f"{path}:{i + 1}: a doc-test marker must stand on the line just before a fence")
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        lang, start = fence.group(1), i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise DocBlockError(f"{path}:{start + 1}: the fence is never closed")
        if lang in LANGS:
            prev = _MARK.match(lines[start - 1].strip()) if start else None
            reason = _SKIP.match(prev.group(1)).group(1).strip() if prev else None
            blocks.append(Block(path, start + 1, lang, "\n".join(lines[start + 1:end]) + "\n", reason))
        i = end + 1
    return blocks


def all_blocks(repo: str = REPO) -> List[Block]:
    return [b for p in doc_files(repo) for b in extract(p, repo)]


def load_substitutions(path: str = SUBSTITUTIONS) -> List[Dict[str, str]]:
    """The declared substitutions: a list of ``{old, new, why}``; ``new`` may name ``{root}`` / ``{tmp}`` / ``{repo}``."""
    with open(path, encoding="utf-8") as f:
        subs = yaml.safe_load(f) or []
    for k, s in enumerate(subs):
        missing = {"old", "new", "why"} - set(s)
        if missing:
            raise DocBlockError(f"{path}: substitution {k + 1} lacks {sorted(missing)}")
    return subs


def substitute(code: str, subs: List[Dict[str, str]], places: Dict[str, str]) -> str:
    """Applies ``subs`` in order; an ``old`` that starts or ends with a word character matches only as a whole word
    there (``reid-data`` is replaced, the ``reid-data`` inside ``clip3dreid-dataset-info`` is not)."""
    for s in subs:
        old = s["old"]
        head = r"(?<![\w-])" if re.match(r"\w", old) else ""
        tail = r"(?![\w-])" if re.match(r"\w", old[-1]) else ""
        new = s["new"].format(**places)
        code = re.sub(head + re.escape(old) + tail, lambda _: new, code)
    return code


def write_path_shim(folder: str, repo: str = REPO) -> str:
    """One executable per setup.py ``COMMANDS`` entry: ``clip3dreid-X`` -> ``python -m clip3dreid_plugin.tools.M``."""
    tree = ast.parse(open(osp.join(repo, "setup.py"), encoding="utf-8").read())
    commands = next(ast.literal_eval(n.value) for n in tree.body
                    if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "COMMANDS")
    os.makedirs(folder, exist_ok=True)
    for cmd, module in commands.items():
        exe = osp.join(folder, cmd)
        with open(exe, "w", encoding="utf-8") as f:
            f.write(f'#!/bin/sh\nexec "{sys.executable}" -m clip3dreid_plugin.tools.{module} "$@"\n')
        os.chmod(exe, os.stat(exe).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def run_block(block: Block, code: str, cwd: str, env: Dict[str, str], timeout: float = 900) -> None:
    """Runs ``code`` (the block after substitution) as its language asks.

    Raises:
        AssertionError: the block failed; the message starts with ``file:line`` and ends with its output's tail.
    """
    if block.lang == "yaml":
        try:
            yaml.safe_load(code)
        except yaml.YAMLError as e:
            raise AssertionError(f"{block.id}: yaml block does not parse: {e}") from None
        return
    argv = ["bash", "-euo", "pipefail", "-c", code] if block.lang == "bash" else [sys.executable, "-c", code]
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        tail = (r.stdout + r.stderr)[-3000:]
        raise AssertionError(f"{block.id}: {block.lang} block failed with exit status {r.returncode}:\n{tail}")

"""File fingerprints: one streamed SHA-256 for every file the plugin identifies by content."""
from __future__ import annotations

import hashlib

__all__ = ["file_sha256"]


def file_sha256(path: str, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes, streamed in ``chunk_size`` blocks (CLIP ViT-L/14 is ~0.9 GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()

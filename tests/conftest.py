"""Shared fixtures: a tiny Market-1501-format dataset and quiet, single-threaded torch."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("CLIP3DREID_PROGRESS", "0")


@pytest.fixture(scope="session")
def toy_market_root(tmp_path_factory):
    """Root folder holding ``market1501/`` with 6 train ids, 4 test ids, 3 cameras (64x32 images)."""
    from fixtures.toy_market import write_toy_market

    root = tmp_path_factory.mktemp("toy_reid_c1_data_2")
    counts = write_toy_market(str(root))
    return str(root), counts


@pytest.fixture(scope="session", autouse=True)
def _registered():
    import clip3dreid_plugin
    from clip3dreid_plugin.utils.runtime import quiet_torchreid_warnings

    quiet_torchreid_warnings()
    clip3dreid_plugin.register()

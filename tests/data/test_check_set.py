"""``body.check_set``: a rendered mesh set whose metadata differs from the ``body.*`` keys stops the run."""
from __future__ import annotations

import numpy as np
import pytest

from clip3dreid_plugin.body import procedural
from clip3dreid_plugin.body.meshset import render_synthetic_set
from clip3dreid_plugin.config import get_cfg
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.data.meshset import build_synthetic_stream, check_synthetic_set, synthetic_set_description


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    body = str(tmp_path_factory.mktemp("check_body"))
    procedural.write_procedural_smpl(body, num_vertices=300)
    out = str(tmp_path_factory.mktemp("check_set"))
    meta = render_synthetic_set(body, out, num_female=3, num_male=2, poses_per_subject=2, height=64, width=32,
                                seed=7, sigma=0.5, show_progress=False)
    return out, meta


def _cfg(folder: str, **body):
    cfg = get_cfg()
    cfg.body.synthetic_dir = folder
    cfg.body.num_female, cfg.body.num_male, cfg.body.poses_per_subject = 3, 2, 2
    cfg.body.seed, cfg.body.beta_sigma = 7, 0.5
    cfg.data.height, cfg.data.width = 64, 32
    for k, v in body.items():
        setattr(cfg.body, k, v)
    return cfg


def test_description_counts_the_rendered_set(tiny_set):
    out, meta = tiny_set
    got = synthetic_set_description(meta)
    # independent count: subjects by gender from the per-image arrays, images per subject
    subjects = {int(s): str(g) for s, g in zip(meta["subject"], meta["gender"])}
    assert got["num_female"] == sum(g == "female" for g in subjects.values()) == 3
    assert got["num_male"] == 2 and got["poses_per_subject"] == len(meta["files"]) // 5 == 2
    assert got["seed"] == 7 and got["beta_sigma"] == 0.5 and got["size"] == [64, 32]


def test_a_matching_set_passes_and_a_mismatch_names_every_key_and_the_folder(tiny_set):
    out, _ = tiny_set
    check_synthetic_set(_cfg(out), out)
    cfg = _cfg(out, num_male=500, seed=0)
    cfg.data.width = 64
    with pytest.raises(ConfigError) as err:
        check_synthetic_set(cfg, out)
    msg = str(err.value)
    assert "\n" not in msg and out in msg
    assert "body.num_male 500 (set: 2)" in msg and "body.seed 0 (set: 7)" in msg
    assert "data.height/width [64, 64] (set: [64, 32])" in msg
    assert "num_female" not in msg and "poses_per_subject" not in msg and "beta_sigma" not in msg
    with pytest.raises(ConfigError, match=r"body.beta_sigma 1.0 \(set: 0.5\)"):
        check_synthetic_set(_cfg(out, beta_sigma=1.0), out)


def test_the_stream_checks_only_when_asked(tiny_set):
    out, meta = tiny_set

    class _DM:
        transform_tr = None

    cfg = _cfg(out, poses_per_subject=10)
    cfg.train.batch_size, cfg.data.workers = 3, 0
    stream = build_synthetic_stream(cfg, _DM())  # default check_set False: the set is used as it is
    assert len(stream.loader.dataset) == len(np.atleast_1d(meta["files"]))
    cfg.body.check_set = True
    with pytest.raises(ConfigError, match=r"body.poses_per_subject 10 \(set: 2\)"):
        build_synthetic_stream(cfg, _DM())

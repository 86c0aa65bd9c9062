"""``clip3dreid-compare --group``: runs whose config.yaml differ only in seed and output folder form one row, with
mean ± sd over seeds and the paired difference from the first group (checked against numpy/scipy here)."""
from __future__ import annotations

import json
import math
import os.path as osp

import numpy as np
import pytest
import yaml
from scipy.stats import t as student_t

from clip3dreid_plugin.tools import compare

MAPS = {("a", 1): 0.20, ("a", 2): 0.26, ("b", 1): 0.31, ("b", 2): 0.33}


def _run(tmp_path, name, lr, seed):
    d = tmp_path / f"{name}_seed{seed}"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump({"train": {"lr": lr, "seed": seed}, "data": {"save_dir": str(d)},
                                                   "model": {"name": "resnet50"}}))
    m = MAPS[(name, seed)]
    ev = {"epoch": 1, "metrics": {"ltcc": {"general_mAP": m, "general_rank1": m + 0.3}},
          "cmc": {"ltcc": {"general": [m + 0.3, 0.9, 1.0]}}}
    (d / "metrics.json").write_text(json.dumps({"model": "resnet50", "seed": seed, "last": ev, "best": ev}))
    return str(d)


def test_group_rows_are_the_seed_statistics(tmp_path, capsys):
    dirs = [_run(tmp_path, "a", 0.1, 1), _run(tmp_path, "b", 0.2, 1), _run(tmp_path, "a", 0.1, 2),
            _run(tmp_path, "b", 0.2, 2)]
    out = tmp_path / "cmp"
    assert compare.main([*dirs, "--group", "--output", str(out)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip().strip("|").split("|")] for ln in table[2:]}
    assert set(rows) == {"a (reference)", "b"}
    a, b = (np.array([100 * MAPS[(n, s)] for s in (1, 2)]) for n in ("a", "b"))
    assert rows["a (reference)"][1:3] == ["2", f"{a.mean():.1f} ± {a.std(ddof=1):.1f}"]
    assert rows["b"][2] == f"{b.mean():.1f} ± {b.std(ddof=1):.1f}"
    d = b - a
    half = student_t.ppf(0.975, 1) * d.std(ddof=1) / math.sqrt(2)
    assert rows["b"][4] == f"{d.mean():+.1f} [{d.mean() - half:+.1f}, {d.mean() + half:+.1f}]"
    assert (out / "cmc_ltcc_general.png").read_bytes()[:4] == b"\x89PNG"
    # without --group: today's table, one row per run
    assert compare.main(dirs + ["--output", str(out)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2 + 4


def test_group_needs_config_yaml_and_distinct_seeds(tmp_path, capsys):
    d1, d2 = _run(tmp_path, "a", 0.1, 1), _run(tmp_path, "b", 0.2, 1)
    cfg = yaml.safe_load(open(osp.join(d2, "config.yaml")))
    cfg["train"]["lr"] = 0.1
    open(osp.join(d2, "config.yaml"), "w").write(yaml.safe_dump(cfg))  # b is now a's config, with a's seed
    assert compare.main([d1, d2, "--group", "--output", str(tmp_path / "o")]) == 2
    assert "one config and one seed (1)" in capsys.readouterr().err
    (tmp_path / "b_seed1" / "config.yaml").unlink()
    assert compare.main([d1, d2, "--group", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "config.yaml" in err and "b_seed1" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("folder, label", [("x/ce_only_seed3", "ce_only"), ("x/ce_only/seed3", "ce_only"),
                                           ("x/plain", "plain")])
def test_group_label(folder, label):
    assert compare._group_label(folder) == label

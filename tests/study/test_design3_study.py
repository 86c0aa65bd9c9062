"""The Design 3 study file (benchmarks/studies/design3_synthcc.yaml): every row resolves, merges, and differs from
its recipe only in the keys the study documents."""
from __future__ import annotations

import importlib.util
import os.path as osp
import re
from typing import List

import pytest
import yaml

from clip3dreid_plugin.config.flat import flatten_config
from clip3dreid_plugin.config.loader import load_config, resolve_config_file

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
STUDY = osp.join(REPO, "benchmarks", "studies", "design3_synthcc.yaml")
WORK = "/prepared/work"
# The study's common options, and what a row may change on top of its recipe.
COMMON = {"data.root", "body.model_dir", "teacher.cache_dir", "body.check_set", "runtime.ckpt_freq"}
MESH_SET = {"body.synthetic_dir", "body.num_female", "body.num_male", "body.poses_per_subject"}
ROW_KEYS = MESH_SET | {"body.synthetic_ratio", "teacher.mode", "loss.clip3dreid.global_reduction",
                       "loss.clip3dreid.use_ot", "loss.clip3dreid.use_global", "loss.clip3dreid.use_3d"}


def _study() -> dict:
    with open(STUDY) as fh:
        return yaml.safe_load(fh)


def _expand(opts: List) -> List[str]:
    return [str(v).replace("${WORK}", WORK) for v in opts]


def _method_study_rows() -> dict:
    spec = importlib.util.spec_from_file_location("method_study", osp.join(REPO, "benchmarks", "method_study.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ROWS


def test_the_study_file_has_the_format_the_study_tool_reads():
    study = _study()
    assert {"output", "seeds", "reference", "opts", "rows"} <= set(study)
    assert study["seeds"] == [1, 2, 3, 4, 5]
    labels = [r["label"] for r in study["rows"]]
    assert len(set(labels)) == len(labels) and study["reference"] in labels
    assert all(set(r) == {"label", "config", "opts"} and len(r["opts"]) % 2 == 0 for r in study["rows"])
    assert all(isinstance(v, str) for r in study["rows"] for v in r["opts"])  # quoted: passed as on a command line
    assert {"shape_probe", "shape_probe_meshset_200x5", "shape_probe_meshset_1000x10",
            "ce_3d_ideal_1000x10_share0.25"} <= set(labels)
    for size in ("80x2", "200x5", "1000x10"):
        assert {f"full_ideal_{size}_share0.25", f"full_ideal_{size}_share0.5"} <= set(labels)


@pytest.mark.parametrize("row", _study()["rows"], ids=lambda r: r["label"])
def test_each_row_merges_into_its_recipe_and_changes_only_documented_keys(row):
    study = _study()
    assert osp.isfile(resolve_config_file(row["config"]))
    recipe = flatten_config(load_config(row["config"]))
    cfg = load_config(row["config"], _expand(study["opts"]) + _expand(row["opts"]))
    merged = flatten_config(cfg)
    changed = {k for k in merged if merged[k] != recipe[k]}
    assert changed <= COMMON | ROW_KEYS, changed - COMMON - ROW_KEYS
    assert cfg.body.check_set and cfg.data.root == f"{WORK}/data"
    # The label names the mesh set and the share it trains with: bodies x poses = the set's folder and body.* keys.
    size = re.search(r"_(\d+)x(\d+)", row["label"])
    if size:
        bodies, poses = int(size.group(1)), int(size.group(2))
        assert cfg.body.synthetic_dir == f"{WORK}/meshes_{bodies}x{poses}"
        assert (cfg.body.num_female + cfg.body.num_male, cfg.body.poses_per_subject) == (bodies, poses)
        assert cfg.body.num_female == cfg.body.num_male
    else:
        assert not (changed & ROW_KEYS), changed
    share = re.search(r"_share([0-9.]+)$", row["label"])
    if share:
        assert cfg.body.synthetic_ratio == float(share.group(1)) and cfg.loss.clip3dreid.use_3d
    if row["label"].startswith("full_ideal_"):
        # the method study's full_ideal_global_mean, with the mesh set and share of the row
        cfg_name, opts, _ = _method_study_rows()["full_ideal_global_mean"]
        assert row["config"] == cfg_name
        expect = flatten_config(load_config(cfg_name, list(opts)))
        assert all(merged[k] == expect[k] for k in merged if k not in COMMON | MESH_SET | {"body.synthetic_ratio"})
    if row["label"].startswith("ce_3d_"):
        c = cfg.loss.clip3dreid
        assert (c.use_ot, c.use_global, c.use_3d) == (False, False, True)
    if row["label"].startswith("shape_probe_meshset"):
        assert cfg.model.name == "shape_probe_meshset"


def test_the_summary_of_the_committed_records_is_benchmarks_md_table(monkeypatch):
    """ACCEPTANCE (issue 27): the Design 3 table of BENCHMARKS.md is ``--summary`` of the committed records, 5 seeds."""
    from clip3dreid_plugin.study.spec import read_study
    from clip3dreid_plugin.tools import study as study_tool

    monkeypatch.chdir(REPO)  # the study's output is relative to the checkout
    monkeypatch.setenv("WORK", "/tmp/d3work")  # the records' fingerprints hold the campaign's paths
    study = read_study(STUDY)
    labels = [r.label for r in study.rows]
    planned = study_tool.plan_runs(study, study.output, labels, study.seeds, "cpu")
    assert [p.state for p in planned] == ["done"] * 11 * 5
    table = study_tool.summarise_study(study, study.output, planned, write=False)["table"]
    text = open(osp.join(REPO, "BENCHMARKS.md"), encoding="utf-8").read()
    assert text.count(table) == 1
    # each row's 5 seeds, and no row short of them
    rows = [ln.split("|") for ln in table.splitlines()[2:-1]]
    assert [r[2].strip() for r in rows] == ["5"] * 11

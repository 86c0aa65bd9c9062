"""The study files installed with the package (``clip3dreid_plugin/studies/``): each parses, names recipes that
exist, and every row reads the data, image size, augmentation and evaluation of its reference row."""
from __future__ import annotations

import importlib.util
import os
import os.path as osp

import pytest

from clip3dreid_plugin.config import load_config
from clip3dreid_plugin.config.loader import resolve_config_file
from clip3dreid_plugin.study.spec import STUDIES_DIR, read_study, resolve_study_file, shipped_studies

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# A model's input normalisation is part of the model (CLIP-ReID's ViT was trained on [0.5]-normalised images), not
# of the data a study compares on.
OWN = ("data.norm_mean", "data.norm_std")
SKIP = (*OWN, "data.save_dir")
CC_DATASETS = {"ltcc", "prcc", "vcclothes", "deepchange", "last", "celebreid", "ccvid"}


def _recipe_keys():
    """The recipe-pair test's keys (tests/models/test_fair_comparison.py), those of data and evaluation."""
    spec = importlib.util.spec_from_file_location("fair", osp.join(REPO, "tests", "models", "test_fair_comparison.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [k for k in mod.RECIPE_KEYS if k.split(".")[0] in ("data", "video", "test", "eval") and k not in OWN]


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_a_study_file_ships_for_every_cloth_changing_dataset():
    assert CC_DATASETS <= set(shipped_studies())
    assert osp.normpath(STUDIES_DIR) == osp.join(REPO, "clip3dreid_plugin", "studies")
    assert resolve_study_file("ltcc") == osp.join(STUDIES_DIR, "ltcc.yaml")


@pytest.mark.parametrize("name", sorted(CC_DATASETS))
def test_a_shipped_study_runs_recipes_that_agree_with_its_reference(name, monkeypatch):
    monkeypatch.setenv("REID_DATA", "/data/reid")
    study = read_study(resolve_study_file(name))
    assert len(study.seeds) == 3 and study.opts == ["data.root", "/data/reid"]
    labels = [r.label for r in study.rows]
    assert labels[:2] == ["baseline", "clip3dreid"] and study.reference == "baseline"
    for family in ("cal", "clip_reid"):
        has_recipe = any(f.startswith(family.replace("clip_reid", "clip_reid_")) for f in
                         os.listdir(osp.join(REPO, "configs", name)))
        assert (family in labels) == has_recipe, (name, family)
    keys = _recipe_keys()
    assert {"data.height", "data.width", "data.transforms", "test.dist_metric", "eval.flip"} <= set(keys)
    cfgs = {}
    for row in study.rows:
        path = resolve_config_file(row.config)
        assert osp.isfile(path) and osp.basename(osp.dirname(path)) == name
        cfgs[row.label] = load_config(path, study.row_opts(row))
    ref = cfgs["baseline"]
    assert ref.model.name == "resnet50" and cfgs["clip3dreid"].model.name == "clip3dreid"
    for label, cfg in cfgs.items():
        assert cfg.data.root == "/data/reid"
        for key in keys:
            assert _get(cfg, key) == _get(ref, key), (name, label, key)
        # and the whole data and evaluation sections, but where each run writes
        for section in ("test", "eval", "video"):
            assert cfg[section] == ref[section], (name, label, section)
        assert {k: v for k, v in cfg.data.items() if f"data.{k}" not in SKIP} == \
            {k: v for k, v in ref.data.items() if f"data.{k}" not in SKIP}, (name, label)


def test_the_readme_ltcc_study_is_the_installed_one():
    """README.md's "Comparing methods over seeds" shows the LTCC study in full; it must be the file that
    ``clip3dreid-study ltcc`` runs, key for key."""
    import re

    import yaml

    with open(osp.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## Comparing methods over seeds", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "README.md's 'Comparing methods over seeds' has no yaml block"
    with open(osp.join(STUDIES_DIR, "ltcc.yaml"), encoding="utf-8") as f:
        installed = yaml.safe_load(f)
    assert yaml.safe_load(block.group(1)) == installed

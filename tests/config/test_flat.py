"""flatten_config: the one flat form in which configs are compared (study fingerprints, compare --group, docgen)."""
from __future__ import annotations

import yaml

from clip3dreid_plugin.config.defaults import get_cfg
from clip3dreid_plugin.config.flat import flatten_config


def test_nested_mapping_becomes_dotted_keys_and_tuples_become_lists():
    node = {"loss": {"clip3dreid": {"alpha": 0.3, "use_ot": True}}, "data": {"sources": ("ltcc", "prcc")},
            "seed": 1}
    assert flatten_config(node) == {"loss.clip3dreid.alpha": 0.3, "loss.clip3dreid.use_ot": True,
                                    "data.sources": ["ltcc", "prcc"], "seed": 1}


def test_a_config_and_its_yaml_dump_flatten_to_the_same_entries():
    cfg = get_cfg()
    flat = flatten_config(cfg)
    assert flat["loss.clip3dreid.alpha"] == cfg.loss.clip3dreid.alpha
    assert flatten_config(yaml.safe_load(cfg.dump())) == flat

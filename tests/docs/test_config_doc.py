"""docs/config.md is generated from ``add_clip3dreid_config``: it must equal the generated text, and every key the
plugin adds must carry its one-line comment (the comment is the key's only description)."""
from __future__ import annotations

import os.path as osp
import subprocess
import sys

from clip3dreid_plugin.config import defaults, docgen

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _leaves(node, prefix=""):
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_committed_reference_equals_generated():
    committed = open(osp.join(REPO, "docs", "config.md"), encoding="utf-8").read()
    assert committed == docgen.render(), (
        "docs/config.md differs from defaults.py: run python -m clip3dreid_plugin.config.docgen")


def test_every_plugin_key_is_documented_with_a_comment():
    # The independent list of plugin keys: the built config's leaves minus torchreid's.
    base = _leaves(defaults.get_default_config())
    built = _leaves(defaults.get_cfg())
    plugin = {k for k in built if k not in base}
    rows = {key: comment for key, _, comment in docgen.plugin_keys()}
    assert set(rows) == plugin, f"keys the generator misses: {sorted(plugin - set(rows))}"
    missing = sorted(k for k, c in rows.items() if not c)
    assert not missing, f"keys without a one-line comment in defaults.py: {missing}"
    for key, default, _ in docgen.plugin_keys():
        assert default == built[key], key


def test_check_names_the_drift(tmp_path):
    out = tmp_path / "config.md"
    ok = subprocess.run([sys.executable, "-m", "clip3dreid_plugin.config.docgen", "--out", str(out)],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert out.read_text(encoding="utf-8") == docgen.render()
    clean = subprocess.run([sys.executable, "-m", "clip3dreid_plugin.config.docgen", "--check", "--out", str(out)],
                           capture_output=True, text=True, cwd=REPO)
    assert clean.returncode == 0, clean.stderr
    out.write_text(out.read_text(encoding="utf-8").replace("| `runtime.ckpt_freq` | `1` |",
                                                           "| `runtime.ckpt_freq` | `7` |"), encoding="utf-8")
    drift = subprocess.run([sys.executable, "-m", "clip3dreid_plugin.config.docgen", "--check", "--out", str(out)],
                           capture_output=True, text=True, cwd=REPO)
    assert drift.returncode == 1
    assert "runtime.ckpt_freq" in drift.stderr and "`7`" in drift.stderr

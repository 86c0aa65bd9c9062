"""The layers of pyproject.toml: every subpackage is placed, the tree keeps them, and a broken layering is caught."""
from __future__ import annotations

import os
import os.path as osp
import pkgutil
import re
import subprocess
import sys

import pytest
from importlinter.api import read_configuration

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PYPROJECT = osp.join(REPO, "pyproject.toml")


def _lint(config_file: str) -> subprocess.CompletedProcess:
    """``lint-imports`` on the checkout (its cwd goes first on the path, so this tree is the one analysed)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
                           "--no-cache", "--no-logo", config_file],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _layers_contract() -> dict:
    contracts = read_configuration(PYPROJECT)["contracts_options"]
    found = [c for c in contracts if c.get("type") == "layers" and c.get("containers") == ["clip3dreid_plugin"]]
    assert len(found) == 1, f"pyproject.toml should hold one layers contract on clip3dreid_plugin, found {found}"
    return found[0]


def _layer_names(layers) -> set:
    """``["tools", "(study)", "teacher | losses"]`` -> ``{"tools", "study", "teacher", "losses"}``."""
    return {name.strip().strip("()") for layer in layers for name in re.split(r"[|:]", layer)}


def test_the_contract_places_every_subpackage_and_top_level_module():
    package_dir = osp.join(REPO, "clip3dreid_plugin")
    modules = {m.name for m in pkgutil.iter_modules([package_dir])}
    assert {"tools", "engine", "body", "teacher", "errors", "shape"} <= modules  # the listing itself works
    missing = modules - _layer_names(_layers_contract()["layers"])
    assert not missing, f"place {sorted(missing)} in the layers of pyproject.toml [tool.importlinter]"


def test_the_tree_keeps_its_layers():
    res = _lint(PYPROJECT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"Contracts: 2 kept, 0 broken", res.stdout), res.stdout


@pytest.mark.parametrize("how", ["reversed", "errors_on_top"])
def test_a_layering_the_tree_breaks_is_reported(tmp_path, how):
    """The same tree against wrong layers: the check must fail and name an import that points up."""
    layers = list(_layers_contract()["layers"])
    layers = layers[::-1] if how == "reversed" else [layers[-1]] + layers[:-1]  # errors above everything
    config = tmp_path / "pyproject.toml"
    listed = ",\n".join(f'    "{layer}"' for layer in layers)
    config.write_text(f"""[tool.importlinter]
root_packages = ["clip3dreid_plugin", "datasets_ext"]

[[tool.importlinter.contracts]]
id = "layers"
name = "wrong layers"
type = "layers"
containers = ["clip3dreid_plugin"]
layers = [
{listed}
]
""")
    res = _lint(str(config))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "wrong layers BROKEN" in res.stdout, res.stdout
    # every module imports errors (through config.loader at least), so config -> errors is among the reported edges
    assert re.search(r"clip3dreid_plugin\.config\.loader -> clip3dreid_plugin\.errors", res.stdout), res.stdout

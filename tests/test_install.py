"""A non-editable install works from any folder: `pip install .` into a fresh virtual environment, then the
installed `clip3dreid-train` trains a recipe named without a path and the quickstart module runs."""
from __future__ import annotations

import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains models end to end or starts processes

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# What a fresh clone holds; local run outputs and build products stay behind.
IGNORE = shutil.ignore_patterns(".git", "work_dirs", "log", "build", "dist", "*.egg-info", "__pycache__", ".benchmarks")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A virtual environment with the plugin installed from a copy of the checkout (not editable).

    It sees this interpreter's site-packages for the heavy dependencies (torch is 5 GB), and installs with
    ``--no-deps --no-build-isolation --no-index``, so no network is needed.
    """
    base = tmp_path_factory.mktemp("install")
    src, env_dir = base / "src", base / "venv"
    shutil.copytree(REPO, src, ignore=IGNORE)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], check=True, timeout=300)
    bin_dir = env_dir / "bin"
    proc = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.rmtree(src)  # the installed package must not lean on the source tree
    return bin_dir


def _run(cmd, cwd, timeout=900):
    env = dict(os.environ, CLIP3DREID_PROGRESS="0")
    env.pop("PYTHONPATH", None)
    return subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, timeout=timeout, env=env)


def test_installed_package_and_recipes_come_from_the_environment(venv, tmp_path):
    out = _run([str(venv / "python"), "-c", "import clip3dreid_plugin, datasets_ext\n"
                "from clip3dreid_plugin.config.loader import recipe_dirs, resolve_config_file\n"
                "print(clip3dreid_plugin.__file__); print(datasets_ext.__file__); print(recipe_dirs())\n"
                "print(resolve_config_file('ltcc/clip3dreid_r50_vitl14_384x192'))"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    env_root = str(venv.parent)
    assert all(line.startswith(env_root) or line.startswith(f"['{env_root}") for line in lines), lines
    assert lines[3].endswith(osp.join("configs", "ltcc", "clip3dreid_r50_vitl14_384x192.yaml"))


def test_installed_train_command_runs_a_named_recipe_from_any_folder(venv, tmp_path, toy_market_root):
    out = _run([str(venv / "clip3dreid-train"), "--config-file", "toy/resnet50_baseline_64x32", "--device", "cpu",
                "--output-dir", str(tmp_path / "run"), "data.root", toy_market_root[0], "train.max_epoch", "1",
                "model.name", "resnet18"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    ckpt = tmp_path / "run" / "model" / "model.pth.tar-1"
    assert ckpt.is_file()
    # A recipe that exists nowhere gets one line naming it.
    bad = _run([str(venv / "clip3dreid-train"), "--config-file", "toy/no_such_recipe"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: config file not found")
    assert "toy/no_such_recipe" in bad.stderr


def test_installed_quickstart_module_runs(venv, tmp_path):
    work = tmp_path / "qs"
    out = _run([str(venv / "python"), "-m", "clip3dreid_plugin.tools.quickstart", "--work-dir", str(work), "--device",
                "cpu", "--num-ids", "16", "--epochs", "1"], tmp_path, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    res = json.load(open(work / "results.json"))
    # offline auto = ideal; CAL trains unless --no-cal
    assert set(res["results"]) == {"resnet50 (torchreid)", "clip3dreid (teacher: ideal)", "cal (clothes labels)"}
    assert res["teacher"] == "ideal" and set(res["verdicts"]) == set(res["results"]) - {"resnet50 (torchreid)"}
    assert set(res["chance"]) == {"general", "sc", "cc"}

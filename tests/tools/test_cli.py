"""Every command reads its options anywhere on the line, and a token it cannot place ends in one line saying where it
belongs."""
from __future__ import annotations

import importlib
import os
import pkgutil
import re

import pytest

import clip3dreid_plugin.tools
from clip3dreid_plugin.config import load_config
from clip3dreid_plugin.tools import label_descriptors, train_net

TOOLS = sorted(m.name for m in pkgutil.iter_modules(clip3dreid_plugin.tools.__path__) if m.name != "common")


def _cfg(argv):
    return train_net.setup_cfg(train_net.build_parser().parse_args(argv))


def _exit_line(capsys, parse, argv) -> str:
    """The one stderr line of a parser that refuses ``argv`` (exit status 2)."""
    with pytest.raises(SystemExit) as err:
        parse(argv)
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_options_after_the_overrides_mean_what_they_mean_before_them():
    overrides = ["data.root", "/data/mine", "train.max_epoch", "3", "test.eval_freq", "-1", "train.lr", "-1e-4"]
    options = ["--output-dir", "log/mine", "--seed", "7", "--eval-only"]
    first = _cfg(["--config-file", "toy/resnet50_baseline_64x32", *options, *overrides])
    after = _cfg(["--config-file", "toy/resnet50_baseline_64x32", *overrides, *options])
    between = _cfg(["--config-file", "toy/resnet50_baseline_64x32", *overrides[:4], *options, *overrides[4:]])
    assert first.dump() == after.dump() == between.dump()
    assert after.data.save_dir == "log/mine" and after.train.seed == 7 and after.test.evaluate is True
    assert after.data.root == "/data/mine" and after.test.eval_freq == -1 and after.train.lr == -1e-4


def test_an_option_after_a_bare_double_dash_is_refused_with_where_it_goes(capsys):
    line = _exit_line(capsys, train_net.build_parser().parse_args,
                      ["--config-file", "CFG", "--", "data.root", "/d", "--output-dir", "o"])
    assert "'--output-dir' is an option of" in line and "put it before the '--'" in line


def test_unknown_option_names_the_command_options_and_where_they_go(capsys):
    line = _exit_line(capsys, train_net.build_parser().parse_args, ["data.root", "/d", "--report", "out"])
    assert "unknown option '--report'" in line and "--output-dir" in line and "before or after" in line
    line = _exit_line(capsys, train_net.build_parser().parse_args, ["--data.root", "/d"])
    assert "config overrides are KEY VALUE pairs without dashes" in line and "'data.root VALUE'" in line


def test_label_report_after_the_overrides(monkeypatch):
    """``clip3dreid-label ... KEY VALUE --report DIR`` (the README's form) reaches the labeller with --report."""
    seen = {}

    def stop(config_file, opts):
        seen.update(config_file=config_file, opts=list(opts))
        raise SystemExit(0)

    monkeypatch.setattr("clip3dreid_plugin.config.loader.load_config", stop)
    with pytest.raises(SystemExit):
        label_descriptors.main(["--config-file", "CFG", "data.root", "/data", "--report", "reports/"])
    assert seen == {"config_file": "CFG", "opts": ["data.root", "/data"]}


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_refuses_an_unknown_option_in_one_line(capsys, tool):
    module = importlib.import_module(f"clip3dreid_plugin.tools.{tool}")
    line = _exit_line(capsys, module.main, ["--no-such-option"])
    # Tools with required options report those first; either way the line is the shared parser's.
    assert "unknown option '--no-such-option'" in line or "the following arguments are required" in line, line


def test_yaml_lists_on_the_command_line():
    cfg = load_config(None, ["data.sources", "[market1501, ltcc]", "test.ranks", "[1, 5]"])
    assert cfg.data.sources == ["market1501", "ltcc"] and cfg.test.ranks == [1, 5]


@pytest.mark.parametrize("tool", TOOLS)
def test_every_file_a_tools_docstring_names_exists(tool):
    """A usage example or a pointer that names a recipe or a source file names one of this tree."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    doc = importlib.import_module(f"clip3dreid_plugin.tools.{tool}").__doc__ or ""
    named = re.findall(r"(?<![\w/.])((?:configs|clip3dreid_plugin|datasets_ext|scripts)/[\w/.-]+\.(?:yaml|py|sh))", doc)
    missing = [p for p in named if not os.path.isfile(os.path.join(repo, p))]
    assert not missing, f"clip3dreid_plugin/tools/{tool}.py names files that do not exist: {missing}"

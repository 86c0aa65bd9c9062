"""ACCEPTANCE: ``clip3dreid-study benchmarks/studies/method_study_synthcc.yaml --summary`` gives the numbers of
BENCHMARKS.md's method-study table from the committed records (``benchmarks/results/method_study``)."""
from __future__ import annotations

import importlib.util
import os.path as osp
import re

import pytest

from clip3dreid_plugin.study.spec import read_study
from clip3dreid_plugin.tools import study as study_tool

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
STUDY_FILE = osp.join("benchmarks", "studies", "method_study_synthcc.yaml")
NUM = re.compile(r"[+-]?\d+\.\d+")


def _tables(text: str):
    """Every markdown table of ``text`` as (header cells, [row cells])."""
    tables, cur = [], None
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cur is None:
                cur = (cells, [])
            elif not set("".join(cells)) <= set("-: "):
                cur[1].append(cells)
        elif cur is not None:
            tables.append(cur)
            cur = None
    return tables


def _benchmarks_table():
    text = open(osp.join(REPO, "BENCHMARKS.md"), encoding="utf-8").read()
    found = [t for t in _tables(text) if t[0][:3] == ["row", "teacher", "seeds"] and "Δ CC mAP [95% CI]" in t[0]
             and any(r[0] == "ce_only" for r in t[1])]
    assert len(found) == 1, "BENCHMARKS.md should hold one method-study table"
    head, rows = found[0]
    return {r[0]: dict(zip(head, r)) for r in rows}


# BENCHMARKS.md's column -> the tool's (its one target is synthcc)
COLUMNS = {"general mAP": "synthcc general mAP", "general R1": "synthcc general R1", "CC mAP": "synthcc cc mAP",
           "CC R1": "synthcc cc R1", "Δ CC mAP [95% CI]": "Δ synthcc cc mAP [95% CI]",
           "Δ CC R1 [95% CI]": "Δ synthcc cc R1 [95% CI]", "Δ general mAP [95% CI]": "Δ synthcc general mAP [95% CI]"}


def _numbers(cell: str):
    return [float(x) for x in NUM.findall(cell)]


def test_the_summary_of_the_study_file_reproduces_benchmarks_md(monkeypatch):
    monkeypatch.chdir(REPO)  # the study file's paths are relative to the checkout
    study = read_study(STUDY_FILE)
    labels = [r.label for r in study.rows]
    planned = study_tool.plan_runs(study, study.output, labels, study.seeds, "cpu")
    assert {p.state for p in planned} == {"legacy"}  # every committed record is read as a finished run
    summary = study_tool.summarise_study(study, study.output, planned, write=False)
    ours = {r[0].replace(" (reference)", ""): dict(zip(h, r)) for h, rows in _tables(summary["table"]) for r in rows}
    expected = _benchmarks_table()
    assert len(expected) >= 12
    checked = 0
    for row, cells in expected.items():
        mine = ours[row]
        if row.startswith("chance"):
            for col in ("general mAP", "general R1", "CC mAP", "CC R1"):
                assert _numbers(mine[COLUMNS[col]]) == _numbers(cells[col]), (row, col)
            continue
        assert mine["seeds"] == cells["seeds"], row
        for col, their in COLUMNS.items():
            assert _numbers(mine[their]) == _numbers(cells[col]), (row, col, mine[their], cells[col])
            checked += 1
    assert checked == 7 * (len(expected) - 1)


def test_the_study_file_has_the_rows_of_method_study():
    spec = importlib.util.spec_from_file_location("method_study", osp.join(REPO, "benchmarks", "method_study.py"))
    ms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ms)
    study = read_study(osp.join(REPO, STUDY_FILE))
    assert [r.label for r in study.rows] == list(ms.ROWS)
    for r in study.rows:
        cfg, opts, _ = ms.ROWS[r.label]
        assert (r.config, r.opts) == (cfg, list(opts)), r.label


@pytest.mark.parametrize("edit", ["summary.json", "chance.json"])
def test_the_summary_writes_nothing(monkeypatch, edit, tmp_path):
    """``--summary`` reads: method_study.py's own summary.json (another format) must stay as committed."""
    monkeypatch.chdir(REPO)
    path = osp.join(REPO, "benchmarks", "results", "method_study", edit)
    before = open(path, "rb").read()
    assert study_tool.main([STUDY_FILE, "--summary"]) == 0
    assert open(path, "rb").read() == before
    assert not osp.exists(osp.join(REPO, "benchmarks", "results", "method_study", "table.md"))

"""Fast tests of the study tool's parts: study-file validation, the legacy-record reader, the table's one-seed and
chance rows, the statistics helpers."""
from __future__ import annotations

import math
import statistics

import pytest
from scipy.stats import t as student_t

from clip3dreid_plugin.errors import ConfigError
from clip3dreid_plugin.study.run_records import legacy_run
from clip3dreid_plugin.study.spec import read_study
from clip3dreid_plugin.study.stats import mean_ci, mean_sd, paired_difference, t_quantile_975
from clip3dreid_plugin.study.summary import markdown, summarise

GOOD = """output: out
seeds: [1, 2]
reference: a
opts: [data.root, "${ROOT_FOR_TEST}"]
rows:
  - label: a
    config: toy/resnet50_baseline_64x32
    opts: [train.max_epoch, 1, train.lr, 0.05, test.rerank, False]
  - label: b
    config: toy/resnet50_baseline_64x32
    opts: []
"""


def _write(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return str(p)


def test_a_good_study_file_is_read_with_variables_and_words(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOT_FOR_TEST", "/data/x")
    s = read_study(_write(tmp_path, GOOD))
    assert s.opts == ["data.root", "/data/x"] and s.seeds == [1, 2] and s.chance_draws == 200
    assert s.rows[0].opts == ["train.max_epoch", "1", "train.lr", "0.05", "test.rerank", "False"]
    assert s.row_opts(s.rows[0])[:2] == ["data.root", "/data/x"]


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.replace("reference: a", "reference: c"), ["reference", "'c'", "not a row"]),
    (lambda t: t.replace("label: b", "label: a"), ["rows[1].label", "duplicate"]),
    (lambda t: t.replace("seeds: [1, 2]\n", ""), ["missing key 'seeds'"]),
    (lambda t: t + "colour: red\n", ["unknown key 'colour'"]),
    (lambda t: t.replace("    opts: []", "    opts: []\n    seed: 3"), ["unknown key 'seed'", "rows[1]"]),
    (lambda t: t.replace("[train.max_epoch, 1, ", "[train.max_epoch, "), ["rows[0].opts", "KEY VALUE pairs"]),
    (lambda t: t.replace("seeds: [1, 2]", "seeds: [1, 1]"), ["seeds", "distinct"]),
    (lambda t: t.replace("${ROOT_FOR_TEST}", "${NOT_SET_FOR_TEST}"), ["NOT_SET_FOR_TEST", "not set", "opts"]),
])
def test_a_bad_study_file_is_one_error_naming_the_file_and_key(tmp_path, monkeypatch, edit, words):
    monkeypatch.setenv("ROOT_FOR_TEST", "/data/x")
    monkeypatch.delenv("NOT_SET_FOR_TEST", raising=False)
    path = _write(tmp_path, edit(GOOD))
    with pytest.raises(ConfigError) as err:
        read_study(path)
    msg = str(err.value)
    assert "\n" not in msg and path in msg
    for w in words:
        assert w in msg


def test_the_cli_reports_a_bad_study_file_in_one_line(tmp_path, capsys, monkeypatch):
    from clip3dreid_plugin.tools import study as study_tool

    monkeypatch.setenv("ROOT_FOR_TEST", "/data/x")
    path = _write(tmp_path, GOOD.replace("reference: a", "reference: zz"))
    assert study_tool.main([path, "--summary"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: study file") and "'zz'" in err and len(err.splitlines()) == 1


def test_the_legacy_record_reader_maps_metrics_to_the_target():
    rec = {"row": "ce_only", "seed": 3, "metrics": {"general_mAP": 0.25, "cc_rank1": 0.05}, "config": "x"}
    run = legacy_run(rec, "synthcc", "f.json")
    assert run["label"] == "ce_only" and run["seed"] == 3 and run["legacy"] and run["cmc"] == {}
    assert run["metrics"] == {"synthcc": {"general_mAP": 0.25, "cc_rank1": 0.05}}
    with pytest.raises(ConfigError, match="f.json"):
        legacy_run({"seed": 1}, "synthcc", "f.json")


def _run(label, seed, mAP, r1):
    return {"label": label, "seed": seed, "metrics": {"ds": {"general_mAP": mAP, "general_rank1": r1}},
            "cmc": {}, "chance_cmc": {}}


def test_a_one_seed_row_says_so_and_the_chance_row_is_there():
    runs = {"ref": {1: _run("ref", 1, 0.20, 0.40), 2: _run("ref", 2, 0.30, 0.50)},
            "one": {2: _run("one", 2, 0.35, 0.45)}}
    chance = {"ds": {"general": {"mAP": 0.048, "rank1": 0.034, "rank1_sd": 0.01}}}
    summary = summarise(runs, "ref", ["ref", "one"], chance=chance)
    lines = markdown(summary).splitlines()
    one = [c.strip() for c in lines[3].strip("|").split("|")]
    assert one[:4] == ["one", "1", "35.0 (1 seed)", "45.0 (1 seed)"]
    # the paired difference over the one common seed (2): 35 - 30, 45 - 50
    assert one[4:] == ["+5.0 (1 seed)", "-5.0 (1 seed)"]
    ref = [c.strip() for c in lines[2].strip("|").split("|")]
    assert ref[2] == f"25.0 ± {statistics.stdev([20.0, 30.0]):.1f}" and ref[4:] == ["-", "-"]
    assert lines[-1].split("|")[1:5] == [" chance (random ranking) ", " - ", " 4.8 ", " 3.4 "]


def test_the_statistics_against_a_hand_computation():
    vals = [1.0, 2.0, 4.0]
    m, sd = mean_sd(vals)
    assert m == pytest.approx(7 / 3) and sd == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2
                                                                         + (4 - 7 / 3) ** 2) / 2))
    assert t_quantile_975(2) == pytest.approx(4.302652729911275)
    assert mean_ci(vals)[1] == pytest.approx(student_t.ppf(0.975, 2) * sd / math.sqrt(3))
    assert math.isnan(mean_sd([5.0])[1]) and math.isnan(mean_ci([5.0])[1])
    d = paired_difference({1: 3.0, 2: 5.0, 3: 9.0}, {1: 1.0, 2: 2.0, 4: 0.0})
    assert d["seeds"] == [1, 2] and d["n"] == 2 and d["mean"] == pytest.approx(2.5)
    assert paired_difference({1: 1.0}, {2: 1.0})["n"] == 0

"""ACCEPTANCE of ``clip3dreid-study``: a 2-row x 2-seed study on fixture trees, cut short after its first finished
run, resumed; the finished run is not retrained, the table equals statistics computed here from the four
``metrics.json`` files, and a changed row is reported (then retrained with ``--rerun-stale``)."""
from __future__ import annotations

import json
import math
import os
import os.path as osp

import numpy as np
import pytest
from scipy.stats import t as student_t

from clip3dreid_plugin.tools import study as study_tool
from clip3dreid_plugin.tools import train_net

SEEDS = (1, 2)
ROWS = ("base", "other")


def _write_study(path, out, row2_opts="[train.lr, 0.001]"):
    path.write_text(f"""output: {out}
seeds: [1, 2]
reference: base
opts: [data.root, "${{STUDY_TEST_DATA}}", data.targets, "['market1501', 'ltcc']", model.name, resnet18,
       train.max_epoch, 1]
device: cpu
chance_draws: 20
rows:
  - label: base
    config: toy/resnet50_baseline_64x32
    opts: []
  - label: other
    config: toy/resnet50_baseline_64x32
    opts: {row2_opts}
""")


@pytest.fixture()
def data_root(tmp_path, monkeypatch):
    """A toy Market-1501 tree (trained on) and the LTCC fixture (a second target with a CC protocol), one root."""
    from fixtures.dataset_trees import make_ltcc
    from fixtures.toy_market import write_toy_market

    root = str(tmp_path / "data")
    write_toy_market(root)
    make_ltcc(root)
    monkeypatch.setenv("STUDY_TEST_DATA", root)
    return root


def _counting_run(monkeypatch, calls, interrupt_at=None):
    real = train_net.run

    def run(cfg, config_file=""):
        calls.append(cfg.data.save_dir)
        if len(calls) == interrupt_at:
            # Killed mid-run: the trainer has started writing its folder, study_run.json never comes.
            os.makedirs(cfg.data.save_dir, exist_ok=True)
            open(osp.join(cfg.data.save_dir, "config.yaml"), "w").write("partial\n")
            raise KeyboardInterrupt
        return real(cfg, config_file)

    monkeypatch.setattr(train_net, "run", run)


def _expected(out):
    """mean, sd (over seeds) and the paired difference from ``base`` with its 95% t interval, from metrics.json."""
    vals = {}
    for row in ROWS:
        for seed in SEEDS:
            rec = json.load(open(osp.join(out, row, f"seed{seed}", "metrics.json")))
            for target, metrics in rec["last"]["metrics"].items():
                for key, value in metrics.items():
                    vals.setdefault((target, key), {}).setdefault(row, []).append(100 * value)
    return vals


@pytest.mark.slow
def test_a_study_cut_short_resumes_and_its_table_is_the_seed_statistics(tmp_path, data_root, monkeypatch, capsys):
    out = str(tmp_path / "study")
    study_file = tmp_path / "study.yaml"
    _write_study(study_file, out)
    calls = []
    _counting_run(monkeypatch, calls, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        study_tool.main([str(study_file)])
    first = osp.join(out, "base", "seed1")
    assert osp.isfile(osp.join(first, "study_run.json"))
    assert not osp.isfile(osp.join(out, "other", "seed1", "study_run.json"))
    stamps = {f: os.stat(osp.join(first, f)).st_mtime_ns for f in ("metrics.json", "study_run.json")}

    # resumed: the finished run is skipped, the one cut short retrained from scratch, the other two trained
    assert study_tool.main([str(study_file)]) == 0
    assert calls[2:] == [osp.join(out, "other", "seed1"), osp.join(out, "base", "seed2"),
                         osp.join(out, "other", "seed2")]
    assert {f: os.stat(osp.join(first, f)).st_mtime_ns for f in stamps} == stamps
    assert open(osp.join(out, "other", "seed1", "config.yaml")).read() != "partial\n"

    summary = json.load(open(osp.join(out, "summary.json")))
    vals = _expected(out)
    groups = [tuple(g) for g in summary["groups"]]
    assert set(groups) == {("market1501", "general"), ("ltcc", "general"), ("ltcc", "cc")}
    table = open(osp.join(out, "table.md")).read()
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip().strip("|").split("|")]
             for ln in table.splitlines()[2:]}
    head = [c.strip() for c in table.splitlines()[0].strip().strip("|").split("|")]
    tq = student_t.ppf(0.975, len(SEEDS) - 1)
    for target, proto in groups:
        for key, col in (("mAP", "mAP"), ("rank1", "R1")):
            v = vals[(target, f"{proto}_{key}")]
            for row in ROWS:
                got = summary["rows"][row]["metrics"][f"{target}/{proto}"][key]
                assert got["mean"] == pytest.approx(np.mean(v[row]), abs=1e-9)
                assert got["sd"] == pytest.approx(np.std(v[row], ddof=1), abs=1e-9)
                label = row + (" (reference)" if row == "base" else "")
                cell = lines[label][head.index(f"{target} {proto} {col}")]
                assert cell == f"{np.mean(v[row]):.1f} ± {np.std(v[row], ddof=1):.1f}"
            diffs = np.array(v["other"]) - np.array(v["base"])
            half = tq * np.std(diffs, ddof=1) / math.sqrt(len(diffs))
            got = summary["rows"]["other"]["paired"][f"{target}/{proto}"][key]
            assert got["n"] == 2 and got["mean"] == pytest.approx(diffs.mean(), abs=1e-9)
            assert got["ci95"] == pytest.approx(half, abs=1e-9)
            cell = lines["other"][head.index(f"Δ {target} {proto} {col} [95% CI]")]
            lo, hi = diffs.mean() - half, diffs.mean() + half
            assert cell == f"{diffs.mean():+.1f} [{lo:+.1f}, {hi:+.1f}]"
    assert "chance (random ranking)" in lines and set(summary["chance"]) == {"market1501", "ltcc"}
    for target, proto in groups:
        assert osp.isfile(osp.join(out, f"cmc_{target}_{proto}.png"))

    # --summary --reference: the differences taken the other way round, and the study's own files untouched
    seen = []
    real_summarise = study_tool.summarise_study
    monkeypatch.setattr(study_tool, "summarise_study", lambda *a, **k: seen.append(real_summarise(*a, **k)))
    written = {f: os.stat(osp.join(out, f)).st_mtime_ns for f in ("summary.json", "table.md")}
    assert study_tool.main([str(study_file), "--summary", "--reference", "other"]) == 0
    (other_ref,) = seen
    assert other_ref["reference"] == "other" and not other_ref["rows"]["other"]["paired"]
    for target, proto in groups:
        diffs = np.array(vals[(target, f"{proto}_mAP")]["base"]) - np.array(vals[(target, f"{proto}_mAP")]["other"])
        assert other_ref["rows"]["base"]["paired"][f"{target}/{proto}"]["mAP"]["mean"] == pytest.approx(diffs.mean())
    assert "base |" in other_ref["table"] and "other (reference)" in other_ref["table"]
    assert {f: os.stat(osp.join(out, f)).st_mtime_ns for f in written} == written
    monkeypatch.setattr(study_tool, "summarise_study", real_summarise)
    n = len(calls)
    for argv, words in ((["--reference", "other"], "pass it with --summary"),
                        (["--summary", "--reference", "nope"], "'nope' is not a row")):
        capsys.readouterr()
        assert study_tool.main([str(study_file), *argv]) == 2
        assert words in capsys.readouterr().err and len(calls) == n

    # a changed row is reported, with the key that changed, and nothing is trained
    _write_study(study_file, out, "[train.lr, 0.002]")
    n = len(calls)
    capsys.readouterr()
    assert study_tool.main([str(study_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "2 finished run(s) no longer match" in err and "train.lr: 0.001 -> 0.002" in err
    assert len(calls) == n
    # --summary leaves them out (with a warning) and trains nothing
    assert study_tool.main([str(study_file), "--summary"]) == 0 and len(calls) == n
    # --rerun-stale retrains just the two changed runs
    assert study_tool.main([str(study_file), "--rerun-stale"]) == 0
    assert sorted(calls[n:]) == [osp.join(out, "other", "seed1"), osp.join(out, "other", "seed2")]
    assert {f: os.stat(osp.join(first, f)).st_mtime_ns for f in stamps} == stamps


@pytest.mark.slow
def test_a_study_under_torchrun_runs_every_run_distributed_and_rank_0_writes(tmp_path, toy_market_root):
    """2 CPU processes, 2 rows x 1 seed: two distributed trainings in one torchrun job (one process group)."""
    import subprocess
    import sys

    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    out = tmp_path / "out"
    study_file = tmp_path / "study.yaml"
    study_file.write_text(f"""output: {out}
seeds: [1]
reference: base
opts: [data.root, {toy_market_root[0]}, model.name, resnet18, train.max_epoch, 1,
       sampler.train_sampler, RandomIdentitySampler]
device: cpu
chance_draws: 10
rows:
  - {{label: base, config: toy/resnet50_baseline_64x32, opts: []}}
  - {{label: other, config: toy/resnet50_baseline_64x32, opts: [train.lr, 0.001]}}
""")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", "--master_port=29633", osp.join(repo, "scripts", "study.py"),
                          str(study_file)], env=env, capture_output=True, text=True, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert log.count("(rank 0/2)") == 2  # each training ran distributed
    for row in ("base", "other"):
        rec = json.load(open(out / row / "seed1" / "study_run.json"))
        assert rec["device"] == "cpu" and rec["seed"] == 1
    summary = json.load(open(out / "summary.json"))
    assert set(summary["rows"]) == {"base", "other"}


def test_a_key_added_after_a_run_at_its_default_keeps_the_run_and_one_the_row_sets_does_not(tmp_path, data_root):
    from clip3dreid_plugin.config.defaults import get_cfg
    from clip3dreid_plugin.study.run_records import write_study_run
    from clip3dreid_plugin.study.spec import read_study

    out = str(tmp_path / "study")
    study_file = tmp_path / "study.yaml"
    _write_study(study_file, out)
    study = read_study(str(study_file))
    (p,) = study_tool.plan_runs(study, out, ["other"], [1], "cpu")
    assert p.state == "todo"
    default = get_cfg()
    at_default = "runtime.keep_checkpoints"
    assert p.fingerprint[at_default] == default.runtime.keep_checkpoints
    assert p.fingerprint["train.lr"] == 0.001 != default.train.lr  # the row's own value

    def record_without(key):
        os.makedirs(p.folder, exist_ok=True)
        write_study_run(p.folder, {k: v for k, v in p.fingerprint.items() if k != key}, p.row.config, [], 1,
                        "abc", "cpu", 1.0)
        (q,) = study_tool.plan_runs(study, out, ["other"], [1], "cpu")
        return q

    # the plugin added keep_checkpoints after this run: the row leaves it at its default, so the run still counts
    q = record_without(at_default)
    assert (q.state, q.diff) == ("done", [])
    # a key the row sets away from its default was not what the run ran with: stale, and the line names it
    q = record_without("train.lr")
    assert q.state == "stale" and q.diff == ["train.lr: None -> 0.001"]

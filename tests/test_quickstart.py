"""The README's main job end to end at a tiny size, as the installed module (the full default is run by hand; see
BENCHMARKS.md): every step runs, the table has a chance row, and the baseline beats chance."""
from __future__ import annotations

import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from clip3dreid_plugin.tools import quickstart


@pytest.mark.parametrize("teacher", ["auto", "stand-in"])
def test_quickstart_runs_every_step_and_the_baseline_beats_chance(tmp_path, teacher):
    """A fresh process matters: rendering and then importing open_clip in one process once crashed (see
    test_render), which an in-process call after other tests cannot see."""
    work = str(tmp_path / "qs")
    proc = subprocess.run([sys.executable, "-m", "clip3dreid_plugin.tools.quickstart", "--work-dir", work,
                           "--device", "cpu", "--num-ids", "16", "--epochs", "1", "--teacher", teacher],
                          capture_output=True, text=True, timeout=1200, cwd=str(tmp_path),
                          env=dict(os.environ, CLIP3DREID_PROGRESS="0"))
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    res = json.load(open(osp.join(work, "results.json")))
    used = "ideal" if teacher == "auto" else teacher  # offline, auto means the ideal teacher
    assert res["teacher"] == used
    assert set(res["results"]) == {"resnet50 (torchreid)", f"clip3dreid (teacher: {used})"}
    chance = res["chance"]
    assert set(chance) == {"general", "sc", "cc"}
    base = res["results"]["resnet50 (torchreid)"]["synthcc"]
    # Beating chance: above the mean of random rankings by more than three of their standard deviations.
    assert base["general_rank1"] > chance["general"]["rank1"] + 3 * chance["general"]["rank1_sd"], (base, chance)
    assert base["general_mAP"] > chance["general"]["mAP"], (base, chance)
    # The table is printed once, with the chance row, the teacher of each row and one verdict line.
    assert proc.stdout.count("| resnet50 (torchreid) |") == 1 and "| random ranking (chance" in proc.stdout
    assert proc.stdout.count(f"| clip3dreid (teacher: {used}) |") == 1
    student = res["results"][f"clip3dreid (teacher: {used})"]["synthcc"]
    line = quickstart.verdict(100 * (student["cc_mAP"] - base["cc_mAP"]), used)
    assert res["verdict"] == line and proc.stdout.count("verdict: ") == 1 and line in proc.stdout
    if used == "stand-in":
        from clip3dreid_plugin.body.synthcc import synthcc_ground_truth
        from clip3dreid_plugin.teacher.cache import TeacherCache

        # The cache's labels are synthcc's ground truth.
        paths, labels = synthcc_ground_truth(osp.join(work, "data"))
        cache = TeacherCache.load(glob.glob(osp.join(work, "teacher_cache", "synthcc__*.pt"))[0])
        assert (cache.lookup(paths)[1] == labels).all()
    else:
        assert not osp.isdir(osp.join(work, "teacher_cache"))  # the ideal teacher needs no labelling pass


def test_quickstart_refuses_too_few_identities_for_the_sampler(tmp_path, capsys):
    assert quickstart.main(["--work-dir", str(tmp_path / "qs"), "--num-ids", "4"]) == 2
    assert "--num-ids must be at least 16" in capsys.readouterr().out
    assert not (tmp_path / "qs" / "data").exists()  # refused before building anything


def test_quickstart_user_error_is_one_line(tmp_path, capsys):
    missing = str(tmp_path / "no_body_model")
    assert quickstart.main(["--work-dir", str(tmp_path / "qs"), "--body-model", missing]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and missing in err[0], err

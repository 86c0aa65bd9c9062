"""The README's main command end to end, at a tiny size (the full default is run by hand; see BENCHMARKS.md)."""
from __future__ import annotations

import json
import os
import os.path as osp
import subprocess

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_quickstart_runs_every_step_and_reports_both_models(tmp_path):
    """``bash scripts/quickstart.sh`` in a fresh process, as a new user runs it (install step included: it is a
    no-op once the packages import). A fresh process matters: rendering and then importing open_clip in one
    process once crashed (see test_render), which an in-process call after other tests cannot see."""
    work = str(tmp_path / "qs")
    proc = subprocess.run(["bash", osp.join(REPO, "scripts", "quickstart.sh"), "--work-dir", work, "--device", "cpu",
                           "--num-ids", "16", "--epochs", "1"], capture_output=True, text=True, timeout=1200,
                          env=dict(os.environ, CLIP3DREID_PROGRESS="0"))
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    res = json.load(open(osp.join(work, "results.json")))
    assert res["descriptors"] == "ground-truth"  # no CLIP weights offline: the documented fallback
    for model in ("resnet50 (torchreid)", "clip3dreid"):
        m = res["results"][model]["synthcc"]
        for proto in ("general", "sc", "cc"):
            assert 0.0 <= m[f"{proto}_mAP"] <= 1.0 and 0.0 <= m[f"{proto}_rank1"] <= 1.0
    table = proc.stdout
    assert "| resnet50 (torchreid) |" in table and "| clip3dreid |" in table and "cc mAP" in table
    # The cache's labels are synthcc's ground truth.
    import glob

    from clip3dreid_plugin.data.synthcc import synthcc_ground_truth
    from clip3dreid_plugin.teacher.cache import TeacherCache

    paths, labels = synthcc_ground_truth(osp.join(work, "data"))
    cache = TeacherCache.load(glob.glob(osp.join(work, "teacher_cache", "synthcc__*.pt"))[0])
    assert (cache.lookup(paths)[1] == labels).all()

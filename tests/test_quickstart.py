"""The README's main command end to end, at a tiny size (the full default is run by hand; see BENCHMARKS.md)."""
from __future__ import annotations

import json
import os.path as osp

from clip3dreid_plugin.tools import quickstart


def test_quickstart_runs_every_step_and_reports_both_models(tmp_path, capsys):
    work = str(tmp_path / "qs")
    rc = quickstart.main(["--work-dir", work, "--device", "cpu", "--num-ids", "16", "--epochs", "1"])
    assert rc == 0
    res = json.load(open(osp.join(work, "results.json")))
    assert res["descriptors"] == "ground-truth"  # no CLIP weights offline: the documented fallback
    for model in ("resnet50 (torchreid)", "clip3dreid"):
        m = res["results"][model]["synthcc"]
        for proto in ("general", "sc", "cc"):
            assert 0.0 <= m[f"{proto}_mAP"] <= 1.0 and 0.0 <= m[f"{proto}_rank1"] <= 1.0
    table = capsys.readouterr().out
    assert "| resnet50 (torchreid) |" in table and "| clip3dreid |" in table and "cc mAP" in table
    # The cache's labels are synthcc's ground truth.
    from clip3dreid_plugin.data.synthcc import synthcc_ground_truth
    from clip3dreid_plugin.teacher.cache import TeacherCache
    import glob

    paths, labels = synthcc_ground_truth(osp.join(work, "data"))
    cache = TeacherCache.load(glob.glob(osp.join(work, "teacher_cache", "synthcc__*.pt"))[0])
    assert (cache.lookup(paths)[1] == labels).all()

"""benchmarks/gpu_check.sh and its summary: the CPU rehearsal passes, and the summary reads every figure it shows."""
from __future__ import annotations

import importlib.util
import json
import os
import os.path as osp
import subprocess

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _summary_module():
    spec = importlib.util.spec_from_file_location("gpu_summary", osp.join(REPO, "benchmarks", "gpu_summary.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_results(out, pytest_tail="23 passed, 1 skipped in 80.00s", drop=None):
    """The files gpu_check.sh leaves, with made-up figures."""
    os.makedirs(out, exist_ok=True)
    files = {
        "env.txt": "python 3.12.3, torch 2.11.0, NVIDIA H200 (compute capability 9.0), 1 GPU(s)\n",
        "pytest_cuda.txt": f"....s..\n{pytest_tail}\n",
        "torchrun_2gpu.txt": "2-GPU torchrun smoke run skipped: nvidia-smi lists 1 GPU(s), it needs 2\n",
    }
    for name, text in files.items():
        with open(osp.join(out, name), "w") as f:
            f.write(text)
    rows = [{"scope": sc, "reg": reg, "method": m, "speedup": sp} for sc in ("full", "solver") for reg in (1.0, 0.1)
            for m, sp in (("pot_loop", 1.0), ("batched", 31.5 if reg == 1.0 else 12.25), ("batched_host_checks", 20.0))]
    bench = {"config": {"teacher": "ViT-B-32-quickgelu"},
             "train": {"torchreid resnet50 (last stride 1)": {"time_vs_resnet50_ls1": 1.0},
                       "clip3dreid (last stride 1), cached teacher": {"time_vs_resnet50_ls1": 1.234},
                       "clip3dreid (last stride 1), online teacher (ViT-B-32-quickgelu)":
                           {"time_vs_resnet50_ls1": 1.9}},
             "labelling": {"images_per_s": 4321.0, "precision": "bf16"},
             "eval": {"size": "1000x10000", "speedup": 56.7},
             "peak_memory_bytes": {"train": 12 * 2 ** 30, "labelling": 2 ** 30, "eval": 3 * 2 ** 29}}
    if drop:
        del bench[drop]
    for name, obj in (("ot_cuda.json", {"settings": {}, "rows": rows}), ("bench_cuda.json", bench)):
        with open(osp.join(out, name), "w") as f:
            json.dump(obj, f)


def test_summary_shows_every_figure_and_its_status(tmp_path, capsys):
    mod = _summary_module()
    out = str(tmp_path / "r")
    _write_results(out)
    assert mod.main(["--out", out]) == 0
    text = capsys.readouterr().out
    for want in ("NVIDIA H200", "23 passed, 0 failed, 0 errors, 1 skipped", "reg 1     : 31.5x faster",
                 "reg 0.1   : 12.2x faster", "1.23x the time", "1.90x the time", "56.7x faster", "4321 (ViT-B-32",
                 "bf16)", "train 12.0 GiB, labelling 1.0 GiB, eval 1.5 GiB", "skipped: nvidia-smi lists 1"):
        assert want in text, want
    assert len(text.splitlines()) <= 20  # one screen
    with open(osp.join(out, "summary.txt")) as f:
        assert f.read() == text
    assert mod.main(["--out", out, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "31.5x" not in dry and dry.count("not run") == 10

    _write_results(out, pytest_tail="20 passed, 3 failed, 1 skipped in 80.00s")
    assert mod.main(["--out", out]) == 1
    _write_results(out, pytest_tail="")  # pytest killed by its time limit
    assert mod.main(["--out", out]) == 1
    assert "no result" in capsys.readouterr().out
    _write_results(out, drop="peak_memory_bytes")
    assert mod.main(["--out", out, "--dry-run"]) == 2
    assert "peak_memory_bytes" in capsys.readouterr().err


def test_gpu_check_dry_run_passes_on_the_cpu(tmp_path):
    """The rehearsal of the GPU window: every step but CUDA at tiny sizes, at most 8 files, the summary layout with
    every GPU figure "not run"."""
    out = str(tmp_path / "dry")
    env = dict(os.environ, OUT=out, PYTHONPATH=REPO)
    proc = subprocess.run(["bash", osp.join(REPO, "benchmarks", "gpu_check.sh"), "--dry-run"], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    text = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert len(os.listdir(out)) <= 8 and "summary.txt" in os.listdir(out)
    summary = text[text.index("== gpu_check summary"):]
    assert summary.count("not run") == 10 and "[gpu_check +" in text

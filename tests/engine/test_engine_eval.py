"""Engine evaluation: per-dataset protocols, TensorBoard, CC-based selection, cross-dataset, rerank, video."""
from __future__ import annotations

import glob
import os.path as osp
import threading

import pytest

from clip3dreid_plugin.config import engine_run_kwargs
from clip3dreid_plugin.engine.evaluator import selection_score
from clip3dreid_plugin.tools import train_net
from fixtures.dataset_trees import make_ccvid, make_ltcc, make_prcc

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, "configs", "toy", "resnet50_baseline_64x32.yaml")


@pytest.fixture(scope="module")
def cc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cc_c1_root_9")
    make_ltcc(str(root))
    make_prcc(str(root))
    make_ccvid(str(root))
    return str(root)


def _run(root, out, *opts):
    argv = ["--config-file", TOY, "--device", "cpu", "--output-dir", out, "data.root", root,
            "train.batch_size", "4", "train.max_epoch", "1", *opts]
    args = train_net.build_parser().parse_args(argv)
    return train_net.run(train_net.setup_cfg(args))


def _tb_tags(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(glob.glob(osp.join(out, "events.out.tfevents*"))[0])
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_cross_dataset_reports_each_targets_protocols_and_logs_them(cc_root, tmp_path):
    out = str(tmp_path / "ltcc2prcc")
    res = _run(cc_root, out, "data.sources", "['ltcc']", "data.targets", "['prcc', 'ltcc']")
    assert set(res) == {"prcc", "ltcc"}
    assert {"general_mAP", "sc_mAP", "cc_mAP", "sc_rank1", "cc_rank1"} <= set(res["prcc"])
    assert {"general_mAP", "cc_mAP", "cc_rank1"} <= set(res["ltcc"]) and "sc_mAP" not in res["ltcc"]
    tags = _tb_tags(out)
    for name, metrics in res.items():
        for k in metrics:
            assert f"Test/{name}/{k}" in tags, k
    assert {"Train/loss", "Train/lr"} <= tags


def test_run_closes_the_tensorboard_writer_it_opened(cc_root, tmp_path):
    """Left open, its background thread keeps writing into the output folder after run() returns."""
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    out = str(tmp_path / "closed")
    args = train_net.build_parser().parse_args(["--config-file", TOY, "--device", "cpu", "--output-dir", out,
                                                "data.root", cc_root, "data.sources", "['ltcc']", "data.targets",
                                                "['ltcc']", "train.batch_size", "4", "train.max_epoch", "1"])
    cfg = train_net.setup_cfg(args)
    engine = train_net.build(cfg)
    before = {t for t in threading.enumerate() if isinstance(t, _AsyncWriterThread)}
    engine.run(**engine_run_kwargs(cfg))
    assert engine.writer is None
    assert not [t for t in threading.enumerate() if isinstance(t, _AsyncWriterThread) and t not in before]
    assert "Train/loss" in _tb_tags(out)  # closing flushed what it logged


def test_rerank_works_with_every_protocol(cc_root, tmp_path):
    res = _run(cc_root, str(tmp_path / "rr"), "data.sources", "['prcc']", "data.targets", "['prcc']",
               "test.rerank", "True")
    for mode in ("general", "sc", "cc"):
        assert 0.0 <= res["prcc"][f"{mode}_mAP"] <= 1.0


def test_rerank_too_large_for_the_host_stops_before_training(cc_root, tmp_path, monkeypatch, capsys):
    """test.rerank on a target rank 0 cannot re-rank in its memory: the run ends with one line before the first
    training step (no checkpoint), not at its first evaluation."""
    from clip3dreid_plugin.evaluation import rerank

    monkeypatch.setattr(rerank, "available_memory_bytes", lambda: 1000)  # the fixture needs a few kB
    out = str(tmp_path / "rr_big")
    rc = train_net.main(["--config-file", TOY, "--device", "cpu", "--output-dir", out, "data.root", cc_root,
                         "data.sources", "['prcc']", "data.targets", "['prcc']", "train.batch_size", "4",
                         "train.max_epoch", "1", "test.rerank", "True"])
    err = capsys.readouterr().err
    assert rc == 2
    line = [ln for ln in err.splitlines() if "test.rerank True" in ln]
    assert len(line) == 1 and "re-ranking prcc's" in line[0] and "GB of host memory" in line[0], err
    assert not glob.glob(osp.join(out, "model", "*"))


def test_video_dataset_trains_and_evaluates_tracklets(cc_root, tmp_path):
    res = _run(cc_root, str(tmp_path / "vid"), "data.type", "video", "data.sources", "['ccvid']",
               "data.targets", "['ccvid']", "video.seq_len", "2", "train.batch_size", "2")
    assert {"general_mAP", "cc_mAP"} <= set(res["ccvid"])


def test_selection_prefers_cc_rank1_and_validates_key():
    metrics = {"ltcc": {"general_rank1": 0.9, "cc_rank1": 0.2}, "prcc": {"general_rank1": 0.1}}
    assert selection_score(metrics) == 0.2
    assert selection_score({"m": {"general_rank1": 0.7}}) == 0.7
    assert selection_score({"m": {"general_mAP": 0.4}}, "general_mAP") == 0.4
    with pytest.raises(KeyError, match="sc_rank1"):
        selection_score(metrics, "sc_rank1")

"""Your own data: a manifest CSV loads with exactly its ids, cameras and outfits, trains both models through
scripts/train.py, every bad input is named with its line, runs write metrics.json, and clip3dreid-compare reads them."""
from __future__ import annotations

import csv
import json
import logging
import os
import os.path as osp

import pytest
import torch
import torchreid

import clip3dreid_plugin
from clip3dreid_plugin.tools import train_net
from datasets_ext.base import DatasetLayoutError
from datasets_ext.manifest import read_manifest
from fixtures.dataset_trees import write_image

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, "configs", "toy", "resnet50_baseline_64x32.yaml")
HEADER = ["path", "pid", "camid", "clothes_id", "split"]


def _rows():
    """4 train ids x 4 images (2 outfits, cameras 0-3); 2 query ids on camera 0; 6 gallery images each on cameras
    1-3, outfit 1 (the query's) or 2 (another)."""
    rows = []
    for pid in (7, 8, 9, 10):
        for k in range(4):
            rows.append([f"people/{pid}/t{k}.png", pid, k, 1 + k % 2, "train"])
    for pid in (20, 21):
        rows.append([f"people/{pid}/q.png", pid, 0, 1, "query"])
        for k in range(6):
            rows.append([f"people/{pid}/g{k}.png", pid, 1 + k % 3, 1 + k % 2, "gallery"])
    return rows


def _write(root, rows, header=HEADER, make_files=True, name="manifest.csv"):
    os.makedirs(root, exist_ok=True)
    path = osp.join(root, name)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    if make_files:
        for i, r in enumerate(rows):
            if not osp.isfile(osp.join(root, r[0])):
                write_image(osp.join(root, r[0]), seed=i, size=(16, 32))
    return path


@pytest.fixture(scope="module")
def manifest_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mine"))
    _write(root, _rows())
    return root


def test_manifest_loads_exactly_its_labels(manifest_root):
    ds = torchreid.data.datasets.init_image_dataset("ccmanifest", root=manifest_root, mode="train", verbose=False)
    assert sorted({it[1] for it in ds.train}) == [0, 1, 2, 3]  # pids 7..10 relabelled
    assert sorted({it[2] for it in ds.train}) == [0, 1, 2, 3]
    assert len({it[4] for it in ds.train}) == 8  # 2 outfits of each of 4 ids
    assert len(ds.query) == 2 and len(ds.gallery) == 12
    assert sorted({it[1] for it in ds.query}) == [20, 21] and sorted({it[2] for it in ds.gallery}) == [1, 2, 3]
    # query + gallery outfits relabelled jointly: (20, 1), (20, 2), (21, 1), (21, 2)
    assert len({it[4] for it in ds.query + ds.gallery}) == 4
    first = next(it for it in ds.train if it[0].endswith(osp.join("people", "7", "t1.png")))
    assert first[1:3] == (0, 1)
    assert ds.eval_protocols == ("general", "sc", "cc")


def test_manifest_without_clothes_evaluates_general_only(tmp_path, caplog):
    rows = [r[:3] + [""] + r[4:] for r in _rows()]
    root = str(tmp_path / "noclothes")
    _write(root, rows)
    with caplog.at_level(logging.INFO, logger="datasets_ext.manifest"):
        ds = torchreid.data.datasets.init_image_dataset("ccmanifest", root=root, mode="train", verbose=False)
        torchreid.data.datasets.init_image_dataset("ccmanifest", root=root, mode="query", verbose=False)
    assert ds.eval_protocols == ("general",)
    said = [r for r in caplog.records if "no clothes_id" in r.getMessage()]
    assert len(said) == 1  # once, although torchreid builds the dataset several times


BAD_LINES = [
    (lambda rows: rows[:3] + [["people/nope.png", 1, 0, 1, "train"]] + rows[3:],
     r"manifest.csv: 1 listed file.*line 5: 'people/nope.png'"),
    (lambda rows: rows + [rows[2]], r"manifest.csv:\d+: duplicate path 'people/7/t2.png' \(first on line 4\)"),
    (lambda rows: rows[:1] + [["people/7/t1.png", "seven", 1, 2, "train"]] + rows[2:],
     r"manifest.csv:3: pid must be an integer, got 'seven'"),
    (lambda rows: rows[:1] + [["people/7/t1.png", 7, "1.5", 2, "train"]] + rows[2:],
     r"manifest.csv:3: camid must be an integer"),
    (lambda rows: rows[:1] + [["people/7/t1.png", 7, 1, 2, "test"]] + rows[2:],
     r"manifest.csv:3: split must be one of train, query, gallery, got 'test'"),
    (lambda rows: rows[:1] + [["people/7/t1.png", 7, 1, "", "train"]] + rows[2:],
     r"manifest.csv:3: clothes_id is empty here but set on line 2"),
    (lambda rows: [r[:2] + [0] + r[3:] for r in rows], r"the general protocol cannot be evaluated.*same camera"),
]


@pytest.mark.parametrize("edit, message", BAD_LINES)
def test_bad_manifest_lines_are_named(tmp_path, manifest_root, edit, message):
    rows = edit(_rows())
    root = str(tmp_path / "bad")
    for r in _rows():  # the images exist; only the manifest is wrong
        if osp.isfile(osp.join(manifest_root, r[0])):
            os.makedirs(osp.dirname(osp.join(root, r[0])), exist_ok=True)
            os.link(osp.join(manifest_root, r[0]), osp.join(root, r[0]))
    _write(root, rows, make_files=False)
    with pytest.raises(DatasetLayoutError, match=message):
        torchreid.data.datasets.init_image_dataset("ccmanifest", root=root, mode="train", verbose=False)


def test_bad_header_is_named(tmp_path):
    path = _write(str(tmp_path / "h"), _rows(), header=["file", "pid", "camid", "clothes_id", "split"])
    with pytest.raises(DatasetLayoutError, match=r"manifest.csv:1: the header must be 'path,pid,camid,clothes_id,"
                                                 r"split', got 'file,pid"):
        read_manifest(path)


def test_queries_without_a_match_are_counted_and_an_empty_protocol_is_reported(tmp_path, caplog):
    rows = _rows()
    # A third query identity seen in the gallery only from the query's camera: no match under any protocol.
    rows += [["people/30/q.png", 30, 0, 1, "query"], ["people/30/g.png", 30, 0, 2, "gallery"]]
    # Every gallery image of 20 and 21 wears another outfit: SC has no valid query at all.
    rows = [r[:3] + [2] + r[4:] if r[4] == "gallery" else r for r in rows]
    root = str(tmp_path / "lonely")
    _write(root, rows)
    with caplog.at_level(logging.WARNING, logger="datasets_ext.manifest"):
        ds = torchreid.data.datasets.init_image_dataset("ccmanifest", root=root, mode="train", verbose=False)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("1 of 3 queries have no gallery match under the general protocol" in m for m in msgs), msgs
    assert any("protocol sc cannot be evaluated" in m for m in msgs), msgs
    assert ds.eval_protocols == ("general", "cc")


def test_register_manifest_dataset_combines_sources(tmp_path, manifest_root):
    other = str(tmp_path / "other")
    _write(other, [[r[0], r[1] + 100] + r[2:] for r in _rows()])
    clip3dreid_plugin.register_manifest_dataset("mine_b", osp.join(other, "manifest.csv"))
    clip3dreid_plugin.register_manifest_dataset("mine_b", osp.join(other, "manifest.csv"))  # idempotent
    with pytest.raises(ValueError, match="already has a image dataset named 'mine_b'"):
        clip3dreid_plugin.register_manifest_dataset("mine_b", osp.join(manifest_root, "manifest.csv"))
    args = train_net.build_parser().parse_args(
        ["--config-file", TOY, "--device", "cpu", "--output-dir", str(tmp_path / "run"), "data.root", manifest_root,
         "data.sources", "['ccmanifest', 'mine_b']", "data.targets", "['mine_b']", "model.pretrained", "False",
         "train.batch_size", "8", "sampler.num_instances", "2"])
    from clip3dreid_plugin.data.build import build_datamanager

    dm = build_datamanager(train_net.setup_cfg(args), use_gpu=False)
    assert dm.num_train_pids == 8 and list(dm.test_loader) == ["mine_b"]


@pytest.mark.parametrize("model", ["resnet50", "clip3dreid"])
def test_manifest_trains_through_the_train_script_and_writes_metrics(manifest_root, tmp_path, model):
    out = str(tmp_path / model)
    argv = ["--config-file", TOY, "--device", "cpu", "--output-dir", out, "--seed", "5", "data.root", manifest_root,
            "data.sources", "['ccmanifest']", "data.targets", "['ccmanifest']", "model.name", model,
            "model.pretrained", "False", "train.max_epoch", "1", "train.batch_size", "8", "sampler.num_instances", "2",
            "loss.clip3dreid.use_ot", "False", "loss.clip3dreid.use_global", "False"]
    assert train_net.main(argv) == 0
    rec = json.load(open(osp.join(out, "metrics.json")))
    assert rec["model"] == model and rec["seed"] == 5 and rec["config_file"] == TOY and len(rec["config_sha256"]) == 64
    ckpt = torch.load(osp.join(out, "model", "model.pth.tar-1"), map_location="cpu", weights_only=False)
    for which in ("last", "best"):
        assert rec[which]["epoch"] == 1
        m = rec[which]["metrics"]["ccmanifest"]
        wanted = {f"{p}_{k}" for p in ("general", "sc", "cc") for k in ("mAP", "rank1", "rank5", "rank10", "rank20")}
        assert wanted <= set(m)
        # The same numbers the checkpoint recorded for that epoch.
        assert m == ckpt["metrics"]["ccmanifest"]
        cmc = rec[which]["cmc"]["ccmanifest"]["general"]
        assert cmc[0] == pytest.approx(m["general_rank1"]) and cmc[4] == pytest.approx(m["general_rank5"])
        # The random-ranking floor of each protocol, for clip3dreid-compare's plots (exactness: test_pictures.py).
        chance = rec[which]["chance_cmc"]["ccmanifest"]
        assert set(chance) == {"general", "sc", "cc"} and all(len(c) == 50 for c in chance.values())
        assert all(0 < c[0] <= c[-1] <= 1 for c in chance.values())


def test_dataset_info_works_on_a_manifest(manifest_root, capsys):
    from clip3dreid_plugin.tools import dataset_info

    assert dataset_info.main(["--dataset", "ccmanifest", "--root", manifest_root, "--json", "--check-images",
                              "--chance", "20"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"]["train"] == {"ids": 4, "images": 16, "clothes": 8, "cameras": 4}
    assert info["splits"]["gallery"] == {"ids": 2, "images": 12, "clothes": 4, "cameras": 3}
    assert info["unreadable_images"] == 0 and set(info["chance"]) == {"general", "sc", "cc"}


def _record(model, seed, general_map, cc_map, cmc):
    ev = {"epoch": 3, "metrics": {"ltcc": {"general_mAP": general_map, "general_rank1": cmc[0], "cc_mAP": cc_map,
                                           "cc_rank1": cmc[0] / 2}},
          "cmc": {"ltcc": {"general": cmc, "cc": [v / 2 for v in cmc]}}}
    return {"model": model, "seed": seed, "config_file": "x.yaml", "config_sha256": "0" * 64, "targets": ["ltcc"],
            "last": ev, "best": ev}


def test_compare_prints_the_runs_numbers_and_plots_one_curve_per_run(tmp_path, capsys):
    from clip3dreid_plugin.tools import compare

    dirs = []
    for name, rec in (("base", _record("resnet50", 1, 0.275, 0.081, [0.5, 0.7, 0.9])),
                      ("mine", _record("clip3dreid", 1, 0.301, 0.104, [0.6, 0.8, 1.0]))):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "metrics.json").write_text(json.dumps(rec))
        dirs.append(str(tmp_path / name))
    out = tmp_path / "cmp"
    assert compare.main([*dirs, "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| base | resnet50 | 1 | 3 | 27.5 | 50.0 | 8.1 | 25.0 |" in table
    assert "| mine | clip3dreid | 1 | 3 | 30.1 | 60.0 | 10.4 | 30.0 |" in table
    assert (out / "table.md").read_text().strip() == table.strip()
    for proto in ("general", "cc"):
        png = out / f"cmc_ltcc_{proto}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = compare.load_runs(dirs)
    fig = compare.plot_cmc(runs, "last", "ltcc", "general", str(tmp_path / "one.png"))
    lines = fig.axes[0].lines
    # Records without chance_cmc (written before runs stored it) get no chance line.
    assert [ln.get_label() for ln in lines] == ["base (mAP 27.5, R1 50.0)", "mine (mAP 30.1, R1 60.0)"]
    assert list(lines[1].get_ydata()) == pytest.approx([60.0, 80.0, 100.0])
    assert compare.main([str(tmp_path / "nothing_here")]) == 2

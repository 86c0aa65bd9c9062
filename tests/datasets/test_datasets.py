"""Cloth-changing dataset loaders, their registration, and the dataset scripts (offline, CPU, tiny trees)."""
from __future__ import annotations

import importlib
import json
import logging
import os
import os.path as osp
import shutil
import zipfile

import numpy as np
import pytest
import torch
import torchreid
import torchvision.transforms as T
from fixtures.dataset_trees import ALL_IMAGE_MAKERS, make_ccvid, make_celeb, make_deepchange
from fixtures.dataset_trees import make_last, make_ltcc, make_prcc, make_vcclothes, write_image

import clip3dreid_plugin
from datasets_ext import IMAGE_DATASETS, VIDEO_DATASETS
from datasets_ext.base import ClothesImageDataset, DatasetLayoutError
from datasets_ext.ccvid import CCVID
from datasets_ext.ltcc import LTCC
from datasets_ext.video_base import sample_frame_indices

ROOT_NAME = "my_c1_data_2"  # underscores, digits and "_c": loaders must parse basenames only


def load_script(name: str):
    """The command-line tool ``clip3dreid_plugin.tools.<name>`` (``scripts/<name>.py`` wraps it)."""
    return importlib.import_module(f"clip3dreid_plugin.tools.{name}")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """One root with every dataset tree; returns ``(root, {name: expected stats})``."""
    root = str(tmp_path_factory.mktemp("trees") / ROOT_NAME)
    expected = {}
    for maker in list(ALL_IMAGE_MAKERS.values()) + [make_ccvid]:
        expected.update(maker(root)["stats"])
    return root, expected


@pytest.fixture
def fresh(tmp_path):
    """A new root per test (for trees that the test breaks)."""
    return str(tmp_path / ROOT_NAME)


def build(name: str, root: str, **kw):
    if name in VIDEO_DATASETS:
        kw.setdefault("transform", T.ToTensor())
        return VIDEO_DATASETS[name](root=root, verbose=False, **kw)
    return IMAGE_DATASETS[name](root=root, verbose=False, **kw)


def find(data, suffix: str) -> tuple:
    """The one item of ``data`` whose (first frame) path ends with ``suffix``."""
    hits = [it for it in data if (it[0] if isinstance(it[0], str) else it[0][0]).replace(os.sep, "/").endswith(suffix)]
    assert len(hits) == 1, (suffix, hits)
    return hits[0]


# (split, path suffix, (pid, camid, dsetid, clothes_id)) written out from the fixture file lists.
EXPECTED_ITEMS = {
    "ccmanifest": [
        ("train", "mine/train/b.png", (0, 1, 0, 1)),  # pids 40, 41 -> 0, 1; cameras 2, 5 -> 0, 1; clothes (40,2) 2nd
        ("train", "mine/train/c.png", (1, 0, 0, 2)),
        ("query", "mine/query/q2.png", (51, 0, 0, 2)),  # query+gallery keys (50,1),(50,2),(51,4),(51,5)
        ("gallery", "mine/gallery/g3.png", (51, 1, 0, 3)),
    ],
    "synthcc": [
        ("train", "train/0007_02_c3_001.png", (1, 2, 0, 3)),  # clothes key (7, 2) is the 4th of 4 sorted keys
        ("query", "query/0010_01_c1_000.png", (10, 0, 0, 1)),
        ("gallery", "gallery/0011_00_c2_000.png", (11, 1, 0, 2)),  # clothes over query+gallery: (10,0),(10,1),(11,0)
    ],
    "ltcc": [
        ("train", "train/005_2_c3_000003.png", (0, 2, 0, 1)),
        ("train", "train/012_3_c11_000005.png", (1, 3, 0, 3)),
        ("query", "query/021_2_c4_000011.png", (21, 3, 0, 3)),
        ("gallery", "test/020_1_c2_000012.png", (20, 1, 0, 0)),
        ("gallery", "test/021_1_c4_000014.png", (21, 3, 0, 2)),
    ],
    "prcc": [
        ("train", "train/001/B_cropped_rgb002.jpg", (0, 1, 0, 0)),
        ("train", "train/003/C_cropped_rgb005.jpg", (1, 2, 0, 3)),
        ("query", "test/B/010/cropped_rgb004.jpg", (10, 1, 0, 0)),
        ("query", "test/C/011/cropped_rgb008.jpg", (11, 2, 0, 3)),
        ("gallery", "test/A/011/cropped_rgb003.jpg", (11, 0, 0, 2)),
    ],
    "celebreid": [
        ("train", "train/1_12_0.jpg", (0, 0, 0, 0)),
        ("train", "train/3_5_1.jpg", (1, 2, 0, 3)),
        ("query", "query/8_3_0.jpg", (8, 2, 0, 1)),
        ("gallery", "gallery/7_13_0.jpg", (7, 0, 0, 2)),
        ("gallery", "gallery/8_4_0.jpg", (8, 3, 0, 4)),
    ],
    "deepchange": [
        ("train", "train-set/P0001_C05_D20200301_0002.jpg", (0, 1, 0, 1)),
        ("train", "train-set/P0004_C03_D20200105_0003.jpg", (1, 0, 0, 2)),
        ("query", "test-set-query/P0101_C02_D20200602_0011.jpg", (101, 11, 0, 2)),
        ("gallery", "test-set-gallery/P0100_C04_D20201201_0013.jpg", (100, 12, 0, 1)),
        ("gallery", "test-set-gallery/P0100_C01_D20200601_0012.jpg", (100, 10, 0, 0)),
    ],
    "vcclothes": [
        ("train", "train/0003-03-01-04.jpg", (1, 2, 0, 2)),
        ("query", "query/0010-04-02-02.jpg", (10, 3, 0, 1)),
        ("gallery", "gallery/0011-04-02-07.jpg", (11, 3, 0, 3)),
    ],
    "vcclothes_sc": [
        ("query", "query/0010-02-01-01.jpg", (10, 1, 0, 0)),
        ("gallery", "gallery/0011-03-01-06.jpg", (11, 2, 0, 1)),
    ],
    "vcclothes_cc": [
        ("query", "query/0010-04-02-02.jpg", (10, 3, 0, 1)),
        ("gallery", "gallery/0011-04-02-07.jpg", (11, 3, 0, 3)),
    ],
    "last": [
        ("train", "train/000010/000010_01_0002_1.jpg", (0, 0, 0, 1)),
        ("train", "train/000042/000042_03_0003_0.jpg", (1, 0, 0, 2)),
        ("query", "test/query/000501_02_0002_0.jpg", (501, 1, 0, 1)),
        ("gallery", "test/gallery/000500/000500_02_0003_0.jpg", (500, 2, 0, 0)),
        ("gallery", "test/gallery/000501/000501_05_0005_0.jpg", (501, 4, 0, 1)),
    ],
    "ccvid": [
        ("train", "session3/001_05/00001.jpg", (0, 2, 0, 1)),
        ("train", "session2/002_03/00001.jpg", (1, 1, 0, 2)),
        ("query", "session3/011_02/00001.jpg", (11, 14, 0, 2)),
        ("gallery", "session2/010_03/00001.jpg", (10, 3, 0, 1)),
    ],
}
for _variant, _dir in (("celebreid_light", "Celeb-reID-light"), ("celebreid_blur", "Celeb-reID-blur"),
                       ("celebreid_light_blur", "Celeb-reID-light-blur"), ("ccda", "CCDA")):
    EXPECTED_ITEMS[_variant] = EXPECTED_ITEMS["celebreid"]

ALL_NAMES = sorted(IMAGE_DATASETS) + sorted(VIDEO_DATASETS)


def test_every_registered_name_has_a_fixture():
    assert set(EXPECTED_ITEMS) == set(ALL_NAMES)
    assert set(IMAGE_DATASETS) == {
        "ltcc", "prcc", "celebreid", "celebreid_light", "celebreid_blur", "celebreid_light_blur", "deepchange",
        "ccda", "vcclothes", "vcclothes_sc", "vcclothes_cc", "last", "synthcc", "ccmanifest",
    }
    assert set(VIDEO_DATASETS) == {"ccvid"}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_counts_and_num_train_clothes(trees, name):
    root, expected = trees
    ds = build(name, root)
    assert ds.stats() == expected[name]
    assert ds.num_train_clothes == expected[name]["train"]["clothes"]
    assert ds.num_train_pids == expected[name]["train"]["ids"]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_specific_items(trees, name):
    root, _ = trees
    ds = build(name, root)
    for split, suffix, want in EXPECTED_ITEMS[name]:
        item = find(getattr(ds, split), suffix)
        assert len(item) == 5
        assert tuple(item[1:]) == want, (split, suffix)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_train_labels_are_contiguous(trees, name):
    ds = build(name, trees[0])
    for field in (1, 2, 4):  # pid, camid, clothes id
        values = {it[field] for it in ds.train}
        assert values == set(range(len(values))), field


@pytest.mark.parametrize("name", ["ltcc", "prcc", "deepchange", "vcclothes", "last", "ccvid", "celebreid"])
def test_root_may_be_the_dataset_folder(trees, name):
    root, _ = trees
    nested = build(name, root)
    direct = build(name, nested.dataset_dir)
    assert direct.train == nested.train and direct.query == nested.query and direct.gallery == nested.gallery


def test_renamed_dataset_folder_is_found_by_its_contents(trees, tmp_path):
    root, _ = trees
    renamed = str(tmp_path / "ltcc_copy_c3")
    shutil.copytree(osp.join(root, "LTCC_ReID"), renamed)
    ds = build("ltcc", renamed)
    assert ds.dataset_dir == renamed and len(ds.train) == 5
    assert tuple(find(ds.query, "query/021_2_c4_000011.png")[1:]) == (21, 3, 0, 3)


def test_eval_protocols_and_camera_rules():
    want = {
        "ltcc": ("general", "cc"), "prcc": ("general", "sc", "cc"), "celebreid": ("general",),
        "celebreid_light": ("general",), "celebreid_blur": ("general",), "celebreid_light_blur": ("general",),
        "deepchange": ("general",), "ccda": ("general",), "vcclothes": ("general", "sc", "cc"),
        "vcclothes_sc": ("general",), "vcclothes_cc": ("general",), "last": ("general",), "ccvid": ("general", "cc"),
    }
    tables = {**IMAGE_DATASETS, **VIDEO_DATASETS}
    assert {n: tables[n].eval_protocols for n in want} == want
    for cls in tables.values():
        assert cls.camera_rule and "\n" not in cls.camera_rule
    assert "tracklet" in tables["deepchange"].camera_rule
    assert "first digit of k" in tables["celebreid"].camera_rule


def test_prcc_query_mixes_b_and_c(trees):
    ds = build("prcc", trees[0])
    assert [it[2] for it in ds.query] == [1, 1, 2, 2, 2]  # B first, then C
    assert {it[2] for it in ds.gallery} == {0}
    a_clothes = {it[1]: it[4] for it in ds.gallery}
    for _, pid, cam, _, clothes in ds.query:
        assert (clothes == a_clothes[pid]) == (cam == 1)  # B shares A's outfit, C does not


# ---------------------------------------------------------------- multi-source, combineall, getitem
def test_add_two_datasets_keeps_clothes(trees):
    root, _ = trees
    ltcc, prcc = build("ltcc", root), build("prcc", root)
    both = ltcc + prcc
    assert isinstance(both, ClothesImageDataset)
    assert len(both.train) == 10
    assert both.num_train_pids == 4 and both.num_train_clothes == 8
    moved = find(both.train, "train/003/C_cropped_rgb005.jpg")
    assert tuple(moved[1:]) == (1 + 2, 2 + 4, 0 + 1, 3 + 4)
    assert sum([ltcc, prcc]).train == both.train  # torchreid's data manager uses sum()
    # the sum evaluates on the first dataset's query and gallery, so it reports that dataset's protocols
    assert both.eval_protocols == ("general", "cc") and both.camera_rule == ltcc.camera_rule
    other_way = prcc + ltcc
    assert other_way.eval_protocols == ("general", "sc", "cc") and other_way.camera_rule == prcc.camera_rule
    assert other_way.query == prcc.query and both.query == ltcc.query


def test_add_torchreid_four_field_dataset(trees, toy_market_root):
    root, _ = trees
    market = torchreid.data.datasets.init_image_dataset("market1501", root=toy_market_root[0], verbose=False)
    assert len(market.train[0]) == 4
    both = build("ltcc", root) + market
    assert len(both.train) == 5 + toy_market_root[1]["train"]
    for _, pid, _, dsetid, clothes in both.train[5:]:
        assert dsetid == 1 and clothes == pid - 2 + 4  # one outfit per market identity, after LTCC's 4
    assert both.num_train_clothes == 4 + toy_market_root[1]["train_ids"]


def test_combineall_keeps_clothes(trees):
    ds = build("ltcc", trees[0], combineall=True)
    assert len(ds.train) == 5 + 2 + 4
    assert ds.num_train_pids == 4 and ds.num_train_clothes == 8
    assert tuple(find(ds.train, "query/021_2_c4_000011.png")[1:]) == (1 + 2, 3, 0, 3 + 4)
    video = build("ccvid", trees[0], combineall=True)
    assert len(video.train) == 3 + 2 + 3 and video.num_train_clothes == 3 + 3


def test_getitem_returns_clothes_id(trees):
    root, _ = trees
    ds = build("ltcc", root, transform=T.ToTensor(), mode="query")
    item = ds[1]
    assert item["clothes_id"] == 3 and item["pid"] == 21 and item["camid"] == 3
    assert tuple(item["img"].shape) == (3, 8, 4)
    both = build("ltcc", root, transform=T.ToTensor()) + build("prcc", root)
    assert both[len(both) - 1]["clothes_id"] == both.train[-1][4]


def test_video_getitem_add_and_sampling(trees):
    root, _ = trees
    ds = build("ccvid", root, seq_len=4, sample_method="evenly", mode="query")
    item = ds[1]
    assert tuple(item["img"].shape) == (4, 3, 8, 4)
    assert (item["pid"], item["camid"], item["clothes_id"]) == (11, 14, 2)
    # the 3-frame tracklet is padded with its last frame
    assert torch.equal(item["img"][2], item["img"][3]) and not torch.equal(item["img"][0], item["img"][1])
    # impath names the sampled frames, so a teacher can look each one up
    assert [osp.relpath(p, osp.join(root, "CCVID")) for p in item["impath"]] == [
        f"session3/011_02/{k:05d}.jpg" for k in (1, 2, 3, 3)]
    train = build("ccvid", root)
    both = train + build("ccvid", root)
    assert len(both.train) == 6 and both.num_train_clothes == 6
    assert [it[4] for it in both.train[3:]] == [c + 3 for c in (0, 1, 2)]
    assert both.seq_len == train.seq_len
    assert both.eval_protocols == train.eval_protocols == ("general", "cc") and both.camera_rule == train.camera_rule


def test_sample_frame_indices():
    assert sample_frame_indices(3, 4, "evenly").tolist() == [0, 1, 2, 2]
    assert sample_frame_indices(9, 4, "evenly").tolist() == [0, 2, 4, 6]
    assert sample_frame_indices(5, 4, "all").tolist() == [0, 1, 2, 3, 4]
    rnd = sample_frame_indices(10, 4, "random", np.random.default_rng(0))
    assert len(rnd) == 4 and len(set(rnd.tolist())) == 4 and list(rnd) == sorted(rnd)
    assert len(sample_frame_indices(2, 4, "random", np.random.default_rng(0))) == 4
    with pytest.raises(ValueError, match="unknown sample_method"):
        sample_frame_indices(3, 4, "middle")


# ---------------------------------------------------------------- torchreid registration
def test_register_then_torchreid_builds_plugin_datasets(trees):
    root, _ = trees
    clip3dreid_plugin.register()
    q = torchreid.data.datasets.init_image_dataset("ltcc", root=root, mode="query", verbose=False)
    assert isinstance(q, LTCC) and len(q) == 2 and q.data[1][1:] == (21, 3, 0, 3)
    v = torchreid.data.datasets.init_video_dataset("ccvid", root=root, transform=T.ToTensor(), mode="gallery",
                                                   verbose=False)
    assert isinstance(v, CCVID) and len(v) == 3


def test_plugin_datamanager_multi_source(trees):
    from clip3dreid_plugin.data.datamanager import ClothesImageDataManager

    dm = ClothesImageDataManager(root=trees[0], sources=["ltcc", "prcc"], targets=["prcc"], height=8, width=4,
                                 use_gpu=False, workers=0, batch_size_train=2, batch_size_test=4,
                                 transforms=None)
    assert dm.num_train_pids == 4 and dm.num_train_clothes == 8
    assert dm.eval_protocols["prcc"] == ("general", "sc", "cc")
    batch = next(iter(dm.test_loader["prcc"]["query"]))
    assert batch["clothes_id"].tolist() == [0, 2, 1, 3]


def test_only_the_training_loader_keeps_its_workers(trees):
    """With workers, the training loader's stay alive across epochs; every query and gallery loader starts its own
    at each evaluation (alive, they would add `workers` processes per loader and rank between evaluations)."""
    from clip3dreid_plugin.data.datamanager import ClothesImageDataManager

    dm = ClothesImageDataManager(root=trees[0], sources=["ltcc"], targets=["ltcc", "prcc"], height=8, width=4,
                                 use_gpu=False, workers=2, batch_size_train=2, batch_size_test=4, transforms=None)
    assert dm.train_loader.persistent_workers and dm.train_loader.num_workers == 2
    loaders = [ld for sets in dm.test_loader.values() for ld in sets.values()]
    assert len(loaders) == 4 and all(ld.num_workers == 2 and not ld.persistent_workers for ld in loaders)
    off = ClothesImageDataManager(root=trees[0], sources=["ltcc"], targets=["ltcc"], height=8, width=4,
                                  use_gpu=False, workers=2, batch_size_train=2, persistent_workers=False,
                                  transforms=None)
    assert not off.train_loader.persistent_workers


# ---------------------------------------------------------------- bad input
def test_missing_dataset_folder_names_the_path(fresh):
    os.makedirs(fresh)
    with pytest.raises(DatasetLayoutError, match="LTCC_ReID"):
        build("ltcc", fresh)


@pytest.mark.parametrize("maker,name,remove", [
    (make_ltcc, "ltcc", "LTCC_ReID/query"),
    (make_prcc, "prcc", "prcc/rgb/test/C"),
    (make_celeb, "celebreid", "Celeb-reID/gallery"),
    (make_deepchange, "deepchange", "DeepChangeDataset/test-set-gallery"),
    (make_deepchange, "deepchange", "DeepChangeDataset/train-set-bbox.txt"),
    (make_vcclothes, "vcclothes", "VC-Clothes/gallery"),
    (make_last, "last", "last/test/query"),
    (make_ccvid, "ccvid", "CCVID/query.txt"),
])
def test_missing_split_raises_naming_the_path(fresh, maker, name, remove):
    maker(fresh)
    path = osp.join(fresh, remove)
    shutil.rmtree(path) if osp.isdir(path) else os.remove(path)
    with pytest.raises(DatasetLayoutError) as info:
        build(name, fresh)
    assert path in str(info.value)


@pytest.mark.parametrize("maker,name,bad", [
    (make_ltcc, "ltcc", "LTCC_ReID/train/5_1_cam1_x.png"),
    (make_prcc, "prcc", "prcc/rgb/train/001/D_cropped_rgb009.jpg"),
    (make_celeb, "celebreid", "Celeb-reID/query/7-1-0.jpg"),
    (make_vcclothes, "vcclothes", "VC-Clothes/train/0001_01_01_01.jpg"),
])
def test_bad_file_name_raises_naming_the_file(fresh, maker, name, bad):
    maker(fresh)
    write_image(osp.join(fresh, bad))
    with pytest.raises(DatasetLayoutError, match="does not match the expected pattern") as info:
        build(name, fresh)
    assert osp.join(fresh, bad) in str(info.value)


def test_prcc_non_numeric_identity_folder_raises(fresh):
    make_prcc(fresh)
    write_image(osp.join(fresh, "prcc/rgb/test/A/extra/cropped_rgb001.jpg"))
    with pytest.raises(DatasetLayoutError, match="identity folder name is not a number"):
        build("prcc", fresh)


@pytest.mark.parametrize("maker,name,bad,split", [
    (ALL_IMAGE_MAKERS["ccda"], "ccda", "CCDA/query/stray.jpg", "query"),
    (make_last, "last", "last/test/gallery/000500/stray.jpg", "gallery"),
])
def test_bad_file_name_skipped_with_one_warning(fresh, caplog, maker, name, bad, split):
    expected = maker(fresh)["stats"][name]
    write_image(osp.join(fresh, bad))
    write_image(osp.join(fresh, osp.dirname(bad), "stray2.jpg"))
    with caplog.at_level(logging.WARNING, logger="datasets_ext"):
        ds = build(name, fresh)
    assert ds.stats() == expected
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 2 file(s)" in warnings[0].getMessage()
    assert osp.join(fresh, bad) in warnings[0].getMessage()


def test_empty_query_raises(fresh):
    make_ltcc(fresh)
    qdir = osp.join(fresh, "LTCC_ReID", "query")
    for f in os.listdir(qdir):
        os.remove(osp.join(qdir, f))
    with pytest.raises(DatasetLayoutError, match="query split is empty") as info:
        build("ltcc", fresh)
    assert qdir in str(info.value)


def test_deepchange_bad_list_line_and_missing_file(fresh):
    make_deepchange(fresh)
    lst = osp.join(fresh, "DeepChangeDataset", "test-set-query-bbox.txt")
    with open(lst, "a", encoding="utf-8") as f:
        f.write("P0102_C01_D20200601_0099.jpg\n")
    with pytest.raises(DatasetLayoutError, match=r"test-set-query-bbox.txt:3: expected"):
        build("deepchange", fresh)
    with open(lst, "w", encoding="utf-8") as f:
        f.write("P0100_C01_D20200601_0010.jpg,10\nP0102_C01_D20200601_0099.jpg,14\n")
    with pytest.raises(DatasetLayoutError, match="1 file.* listed .* missing; first: .*P0102_C01_D20200601_0099"):
        build("deepchange", fresh)
    with open(lst, "w", encoding="utf-8") as f:
        f.write("X0100_C01_D20200601_0010.jpg,10\n")
    with pytest.raises(DatasetLayoutError, match="X0100_C01"):
        build("deepchange", fresh)


def test_ccvid_bad_line_and_missing_tracklet(fresh):
    make_ccvid(fresh)
    lst = osp.join(fresh, "CCVID", "gallery.txt")
    with open(lst, "a", encoding="utf-8") as f:
        f.write("session1/010_09 010\n")
    with pytest.raises(DatasetLayoutError, match=r"gallery.txt:4: expected"):
        build("ccvid", fresh)
    with open(lst, "a", encoding="utf-8") as f:
        f.truncate(0)
        f.write("session1/010_09 010 u0_l0_s0_c0_a0\n")
    with pytest.raises(DatasetLayoutError, match="tracklet folder not found: .*010_09"):
        build("ccvid", fresh)


# ---------------------------------------------------------------- scripts
def test_dataset_info_json_and_table(trees, capsys):
    info = load_script("dataset_info")
    root, expected = trees
    assert info.main(["--dataset", "ltcc", "--root", root, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["splits"] == expected["ltcc"]
    assert out["eval_protocols"] == ["general", "cc"] and out["kind"] == "image"
    assert info.main(["--dataset", "ccvid", "--root", root]) == 0
    table = capsys.readouterr().out
    assert "tracklets" in table and "+12 for session3" in table
    assert "|      2 |         3 |       3 |       3" in table  # gallery row
    assert info.main(["--dataset", "market1501", "--root", trees[0] + "_missing"]) == 2


def test_dataset_info_check_images(fresh, capsys, caplog):
    info = load_script("dataset_info")
    make_ltcc(fresh)
    assert info.main(["--dataset", "ltcc", "--root", fresh, "--check-images", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unreadable_images"] == 0
    n_files = sum(len(files) for _, _, files in os.walk(osp.join(fresh, "LTCC_ReID")))
    assert f"--check-images: all {n_files} image files of train, query and gallery open" in caplog.text
    with open(osp.join(fresh, "LTCC_ReID", "test", "020_2_c5_000013.png"), "wb") as f:
        f.write(b"not an image")
    assert info.main(["--dataset", "ltcc", "--root", fresh, "--check-images", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["unreadable_images"] == 1
    assert info.main(["--dataset", "nope", "--root", fresh]) == 2


def test_dataset_info_check_images_reads_every_frame(fresh, capsys, caplog):
    info = load_script("dataset_info")
    make_ccvid(fresh)
    assert info.main(["--dataset", "ccvid", "--root", fresh, "--check-images", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unreadable_images"] == 0
    # A middle frame of a gallery tracklet: only a check that opens every frame of every split finds it.
    bad = osp.join(fresh, "CCVID", "session2", "010_03", "00002.jpg")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    assert info.main(["--dataset", "ccvid", "--root", fresh, "--check-images", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["unreadable_images"] == 1
    assert any(bad in rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR")


def test_download_prints_instructions_without_a_link(tmp_path, capsys, monkeypatch):
    dl = load_script("download_datasets")
    import gdown

    def no_network(*a, **k):
        raise AssertionError("gdown must not be called")

    monkeypatch.setattr(gdown, "download", no_network)
    assert dl.main(["--dataset", "ltcc", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "naiq.github.io" in out and "LTCC_ReID/" in out and "train/<pid>_<clothes>_c<cam>_<frame>.png" in out
    assert dl.main(["--dataset", "prcc", "--root", str(tmp_path), "--no-download"]) == 0
    out = capsys.readouterr().out
    assert "1yTYawRm4ap3M-j0PjLQJ--xmZHseFDLz" in out and "test/C/<pid>/*.jpg" in out
    assert dl.main(["--dataset", "vcclothes_cc", "--root", str(tmp_path)]) == 0
    assert "VC-Clothes/" in capsys.readouterr().out
    assert {n for n in dl.SOURCES} | set(dl.ALIASES) == set(ALL_NAMES)


def test_download_failure_and_success_with_fake_gdown(tmp_path, capsys, monkeypatch):
    dl = load_script("download_datasets")
    import gdown

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(gdown, "download", offline)
    assert dl.main(["--dataset", "ccvid", "--root", str(tmp_path / "a")]) == 1
    assert "CCVID/" in capsys.readouterr().out

    def fake(id=None, output=None, **k):
        path = osp.join(output, "CCVID.zip")
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("CCVID/train.txt", "session1/001_01 001 u0_l0_s0_c0_a0\n")
        return path

    monkeypatch.setattr(gdown, "download", fake)
    root = tmp_path / "b"
    assert dl.main(["--dataset", "ccvid", "--root", str(root)]) == 0
    assert (root / "CCVID" / "train.txt").is_file()
    assert dl.main(["--dataset", "ccvid", "--root", str(root)]) == 0  # already present: no download


def _blur_tree(src: str) -> None:
    """Three images; only the query one is 64 px high, which the stub detector below treats as a face."""
    write_image(osp.join(src, "train", "1_1_0.png"), 1, size=(30, 60))
    write_image(osp.join(src, "query", "7_1_0.png"), 2, size=(32, 64))
    write_image(osp.join(src, "gallery", "7_2_0.jpg"), 3, size=(30, 60))
    with open(osp.join(src, "readme.txt"), "w", encoding="utf-8") as f:
        f.write("not an image\n")


FACE_BOX = (8, 4, 16, 16)


def stub_detect(img: np.ndarray) -> list:
    return [FACE_BOX] if img.shape[0] == 64 else []


def test_blur_boxes_changes_only_the_box():
    bf = load_script("blur_faces")
    img = np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    out = bf.blur_boxes(img, [(8, 4, 16, 16), (30, 60, 10, 10)])  # the second is clipped to the image
    inside = np.zeros(img.shape[:2], bool)
    inside[4:20, 8:24] = True
    inside[60:64, 30:32] = True
    assert np.array_equal(out[~inside], img[~inside])
    assert not np.array_equal(out[4:20, 8:24], img[4:20, 8:24])
    assert out[4:20, 8:24].std() < img[4:20, 8:24].std()


def test_blur_tree_mirrors_input_and_blurs_detected_faces(tmp_path, caplog):
    bf = load_script("blur_faces")
    src, dst = str(tmp_path / "Celeb-reID"), str(tmp_path / "Celeb-reID-blur")
    _blur_tree(src)
    with caplog.at_level(logging.WARNING, logger="blur_faces"):
        counts = bf.process_tree(src, dst, stub_detect, show_progress=False)
    assert counts == {"images": 3, "blurred": 1, "no_face": 2, "other_files": 1}

    def listing(root):
        return sorted(osp.relpath(osp.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)

    assert listing(dst) == listing(src) == ["gallery/7_2_0.jpg", "query/7_1_0.png", "readme.txt", "train/1_1_0.png"]
    a = bf.cv2.imread(osp.join(src, "query", "7_1_0.png"))
    b = bf.cv2.imread(osp.join(dst, "query", "7_1_0.png"))
    x, y, w, h = FACE_BOX
    inside = np.zeros(a.shape[:2], bool)
    inside[y:y + h, x:x + w] = True
    assert np.array_equal(a[~inside], b[~inside]) and not np.array_equal(a[inside], b[inside])
    for rel in ("train/1_1_0.png", "gallery/7_2_0.jpg", "readme.txt"):  # no face: byte-identical copy
        with open(osp.join(src, rel), "rb") as f1, open(osp.join(dst, rel), "rb") as f2:
            assert f1.read() == f2.read(), rel
    assert any("no face detected in 2 of 3 images" in r.getMessage() for r in caplog.records)
    with pytest.raises(FileExistsError):
        bf.process_tree(src, dst, stub_detect, show_progress=False)
    with pytest.raises(ValueError, match="must not be --src"):
        bf.process_tree(src, osp.join(src, "out"), stub_detect, show_progress=False)


def test_haar_detector_available_or_explained(tmp_path):
    bf = load_script("blur_faces")
    src = tmp_path / "src"
    _blur_tree(str(src))
    if hasattr(bf.cv2, "CascadeClassifier"):
        assert bf.haar_detector()(np.full((64, 32, 3), 128, np.uint8)) == []
        with pytest.raises(bf.DetectorUnavailable, match="not found"):
            bf.haar_detector(str(tmp_path / "missing.xml"))
        assert bf.main(["--src", str(src), "--dst", str(tmp_path / "dst")]) == 0
        assert (tmp_path / "dst" / "query" / "7_1_0.png").is_file()
    else:  # OpenCV 5 dropped CascadeClassifier: the script must say so and stop cleanly
        with pytest.raises(bf.DetectorUnavailable, match="opencv-python-headless<5"):
            bf.haar_detector()
        assert bf.main(["--src", str(src), "--dst", str(tmp_path / "dst")]) == 2
        assert not (tmp_path / "dst").exists()


def test_dataset_info_chance_level_matches_the_expected_random_rank1(trees, capsys):
    """Random rankings: rank-1 is right with probability good / (gallery - junk) per query, averaged over the
    queries that have a true match; this reference is computed here from the protocol definitions."""
    info = load_script("dataset_info")
    root, _ = trees
    assert info.main(["--dataset", "ltcc", "--root", root, "--json", "--chance", "3000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chance_draws"] == 3000 and set(out["chance"]) == {"general", "cc"}
    from datasets_ext.base import to_clothes_items

    ds, _ = info.build_dataset("ltcc", root)
    q, g = to_clothes_items(ds.query), to_clothes_items(ds.gallery)
    for mode in ("general", "cc"):
        probs = []
        for _, pid, cam, _, clo in q:
            same = [it for it in g if it[1] == pid]
            if mode == "general":
                junk = [it for it in same if it[2] == cam]
            else:
                junk = [it for it in same if it[2] == cam or it[4] == clo]
            good = len(same) - len(junk)
            if good:
                probs.append(good / (len(g) - len(junk)))
        expected = sum(probs) / len(probs)
        # 3000 draws of the mean over queries: the standard error is below 0.01 on this tree.
        assert out["chance"][mode]["rank1"] == pytest.approx(expected, abs=0.02), (mode, expected)
        assert 0.0 < out["chance"][mode]["mAP"] <= 1.0
    assert info.main(["--dataset", "ltcc", "--root", root, "--chance", "5"]) == 0
    assert "chance level (5 random rankings):" in capsys.readouterr().out
    assert info.main(["--dataset", "ccvid", "--root", root, "--chance", "5"]) == 2  # video: refused, not skipped

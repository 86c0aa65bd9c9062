"""Body model layer: procedural SMPL-format model, chumpy-free loading, measurements, descriptor rules,
pose pool, synthetic plan/metadata and 3D shape evaluation (no rendering here; see test_render.py)."""
from __future__ import annotations

import importlib
import json
import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial import cKDTree

from clip3dreid_plugin.body import procedural
from clip3dreid_plugin.body.anthropometry import (
    MEASUREMENT_NAMES,
    measure_bodies,
    measure_body,
    mesh_volume,
    slice_points,
    unique_edges,
)
from clip3dreid_plugin.body.descriptor_rules import RULES, descriptor_scores, fit_thresholds, label_phrases, rule_labels
from clip3dreid_plugin.body.poses import PoseFileError, builtin_pose_pool, load_pose_file
from clip3dreid_plugin.body.shape_eval import chamfer_distance, evaluate_shapes, sample_surface
from clip3dreid_plugin.body.skeleton import J
from clip3dreid_plugin.body.smpl_io import BodyModelError, load_body_model, read_smpl_pickle
from clip3dreid_plugin.body.meshset_plan import make_plan, read_synthetic_meta, sample_subjects, write_synthetic_meta
from clip3dreid_plugin.teacher.descriptors import DESCRIPTOR_PAIRS


PAPER_PAIRS = [
    ("Muscular", "Slender"), ("Broad-Shouldered", "Narrow-Shouldered"), ("Heavyset", "Petite"), ("Tall", "Short"),
    ("Long Legs", "Short Legs"), ("Long Torso", "Short Torso"), ("Curvy", "Angular"), ("Full-Figured", "Skinny"),
    ("Stocky", "Willowy"), ("Pear-Shaped", "Apple-Shaped"), ("Athletic", "Non-Athletic"), ("Fit", "Unfit"),
    ("Large-Breasted", "Small-Breasted"), ("Long-Armed", "Short-Armed"), ("Long-Necked", "Short-Necked"),
    ("High-Waisted", "Low-Waisted"),
]


def load_script(name: str):
    """The command-line tool ``clip3dreid_plugin.tools.<name>`` (``scripts/<name>.py`` wraps it)."""
    return importlib.import_module(f"clip3dreid_plugin.tools.{name}")


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("body_models")
    procedural.write_procedural_smpl(str(root), num_vertices=600)
    return str(root)


@pytest.fixture(scope="module")
def neutral(model_root):
    return load_body_model(model_root, "neutral")


def _measure(model, betas):
    b = torch.as_tensor(betas, dtype=torch.float32)
    with torch.no_grad():
        v = model.canonical_vertices(b).numpy()
        j = model.canonical_joints(b).numpy()
    return measure_bodies(v, model.faces, j)


# ------------------------------------------------------------------------------------------ procedural model
def test_procedural_files_load_through_smplx_and_backprop(model_root, neutral):
    import smplx

    for g in ("NEUTRAL", "MALE", "FEMALE"):
        assert os.path.isfile(os.path.join(model_root, "smpl", f"SMPL_{g}.pkl"))
    # the files are plain SMPL-format pickles: smplx reads them itself (small meshes need vertex_ids)
    with open(os.path.join(model_root, "smpl", "SMPL_FEMALE.pkl"), "rb") as fh:
        vertex_ids = pickle.load(fh)["vertex_ids"]
    direct = smplx.create(model_root, model_type="smpl", gender="female", vertex_ids=vertex_ids)
    assert direct(betas=torch.zeros(1, 10)).vertices.shape == (1, neutral.num_vertices, 3)

    betas = torch.zeros(4, 10, requires_grad=True)
    verts = neutral.canonical_vertices(betas)
    assert verts.shape == (4, neutral.num_vertices, 3)
    verts.square().sum().backward()
    assert betas.grad is not None and betas.grad.abs().sum() > 0
    assert list(neutral.parameters()) == []  # attaching the body model adds nothing to an optimiser

    pose = torch.as_tensor(builtin_pose_pool()[:3])
    posed = neutral.posed_vertices(torch.zeros(1, 10), pose)
    assert posed.shape == (3, neutral.num_vertices, 3)
    # zero pose reproduces the canonical mesh
    zero = neutral.posed_vertices(torch.zeros(2, 10), torch.zeros(2, 69))
    assert torch.allclose(zero, neutral.canonical_vertices(torch.zeros(2, 10)), atol=1e-5)


def test_procedural_template_is_a_rigged_closed_body():
    import trimesh

    data = procedural.build_procedural_model("female", num_vertices=600)
    v, f = data["v_template"], data["f"].astype(np.int64)
    assert data["shapedirs"].shape == (len(v), 3, 10) and data["posedirs"].shape == (len(v), 3, 207)
    assert data["kintree_table"].shape == (2, 24) and data["weights"].shape == (len(v), 24)
    np.testing.assert_allclose(data["weights"].sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(data["J_regressor"] @ v, data["J"], atol=1e-9)  # regressor matches the skeleton
    assert abs((v[:, 1].max() - v[:, 1].min()) - procedural.TEMPLATE_HEIGHTS["female"]) < 0.005
    parts = trimesh.Trimesh(v, f, process=False).split(only_watertight=False)
    assert len(parts) == 9 and all(p.is_watertight and p.volume > 0 for p in parts)
    # SMPL frame: left side at +x, facing +z, y up
    j = data["J"]
    assert j[J.L_SHOULDER, 0] > 0 > j[J.R_SHOULDER, 0]
    assert j[J.HEAD, 1] > j[J.NECK, 1] > j[J.PELVIS, 1] > j[J.L_KNEE, 1] > j[J.L_ANKLE, 1]
    assert j[J.L_FOOT, 2] > j[J.L_ANKLE, 2]


def test_gender_templates_differ(model_root):
    male, female = (_measure(load_body_model(model_root, g), np.zeros((1, 10))) for g in ("male", "female"))
    assert male["height"][0] > female["height"][0]
    assert male["shoulder_width"][0] > female["shoulder_width"][0]
    assert female["hip_girth"][0] / female["waist_girth"][0] > male["hip_girth"][0] / male["waist_girth"][0]


@pytest.mark.parametrize("k,quantity", [
    (0, "height"), (1, "volume"), (1, "waist_girth"), (2, "shoulder_width"), (3, "hip_girth"), (4, "leg_length"),
    (5, "torso_length"), (6, "arm_length"), (7, "neck_length"), (8, "chest_depth"), (9, "waist_girth"),
])
def test_betas_move_the_body_in_the_documented_direction(neutral, k, quantity):
    betas = np.zeros((3, 10))
    betas[:, k] = (-1.0, 0.0, 1.0)
    m = _measure(neutral, betas)[quantity]
    assert m[0] < m[1] < m[2], (k, quantity, m)


def test_beta0_makes_the_body_taller_in_proportion(neutral):
    m = _measure(neutral, np.array([[0.0] * 10, [2.0] + [0.0] * 9]))
    assert m["height"][1] > m["height"][0] * 1.05


# ------------------------------------------------------------------------------------------ loading
def test_chumpy_free_loader_reads_chumpy_pickles(tmp_path, monkeypatch, neutral):
    data = procedural.build_procedural_model("neutral", num_vertices=600)

    # a stand-in for chumpy, registered only while the pickle is written
    chumpy = types.ModuleType("chumpy")
    ch_mod = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x)
            self.dterms = ("x",)

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    ch_mod.Ch = Ch
    chumpy.ch = ch_mod
    monkeypatch.setitem(sys.modules, "chumpy", chumpy)
    monkeypatch.setitem(sys.modules, "chumpy.ch", ch_mod)
    legacy = dict(data, v_template=Ch(data["v_template"]), shapedirs=Ch(data["shapedirs"]),
                  weights=Ch(data["weights"]))
    path = tmp_path / "smpl" / "SMPL_NEUTRAL.pkl"
    path.parent.mkdir()
    with open(path, "wb") as fh:
        pickle.dump(legacy, fh, protocol=2)
    monkeypatch.delitem(sys.modules, "chumpy")
    monkeypatch.delitem(sys.modules, "chumpy.ch")

    with pytest.raises(ModuleNotFoundError):  # a plain unpickler cannot read it any more
        with open(path, "rb") as fh:
            pickle.load(fh)
    loaded = read_smpl_pickle(str(path))
    assert "chumpy" not in sys.modules
    np.testing.assert_array_equal(loaded["v_template"], data["v_template"])
    np.testing.assert_array_equal(loaded["shapedirs"], data["shapedirs"])
    assert scipy.sparse.issparse(loaded["J_regressor"])
    model = load_body_model(str(tmp_path), "neutral")
    b = torch.randn(2, 10)
    torch.testing.assert_close(model.canonical_vertices(b), neutral.canonical_vertices(b))


def test_missing_model_gives_instructions(tmp_path):
    with pytest.raises(BodyModelError) as err:
        load_body_model(str(tmp_path / "nowhere"), "female")
    msg = str(err.value)
    assert "https://smpl.is.tue.mpg.de" in msg and "SMPL_FEMALE.pkl" in msg and "smpl/" in msg
    assert "clip3dreid-make-body-model --out" in msg  # the installed command, not a path into the checkout
    with pytest.raises(BodyModelError, match="body.model_dir is empty"):
        load_body_model("", "neutral")


def test_corrupt_or_incomplete_model_is_named(tmp_path):
    bad = tmp_path / "smpl" / "SMPL_NEUTRAL.pkl"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(BodyModelError, match="not a readable SMPL pickle") as err:
        load_body_model(str(tmp_path), "neutral")
    assert str(bad) in str(err.value)
    with open(bad, "wb") as fh:
        pickle.dump({"v_template": np.zeros((3, 3))}, fh)
    with pytest.raises(BodyModelError, match="lacks the keys"):
        load_body_model(str(tmp_path), "neutral")


# ------------------------------------------------------------------------------------------ anthropometry
def test_measurements_of_a_scaled_body_scale(neutral):
    with torch.no_grad():
        v = neutral.canonical_vertices(torch.zeros(1, 10))[0].numpy()
        j = neutral.canonical_joints(torch.zeros(1, 10))[0].numpy()
    base = measure_body(v, neutral.faces, j)
    assert abs(base["height"] - procedural.TEMPLATE_HEIGHTS["neutral"]) < 0.005
    s = 1.1
    scaled = measure_body(v * s, neutral.faces, j * s)
    for name in MEASUREMENT_NAMES:
        expected = base[name] * (s ** 3 if name == "volume" else s)
        assert scaled[name] == pytest.approx(expected, rel=1e-6), name
    shifted = measure_body(v + (0.3, -2.0, 0.1), neutral.faces, j + (0.3, -2.0, 0.1))
    for name in MEASUREMENT_NAMES:  # translation invariant
        assert shifted[name] == pytest.approx(base[name], rel=1e-6, abs=1e-9), name
    assert 0.5 < base["waist_girth"] < base["hip_girth"] < 1.3
    assert 0.04 < base["volume"] < 0.1  # ~65 kg at water density


def test_volume_and_girth_primitives():
    import trimesh

    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    assert mesh_volume(box.vertices, box.faces) == pytest.approx(6.0)
    cyl = trimesh.creation.cylinder(radius=0.5, height=2.0, sections=64)
    cyl.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0)))  # axis along y
    pts = slice_points(np.asarray(cyl.vertices), unique_edges(cyl.faces), 1, 0.1)
    from scipy.spatial import ConvexHull

    assert ConvexHull(pts[:, [0, 2]]).area == pytest.approx(2 * np.pi * 0.5, rel=0.01)


# ------------------------------------------------------------------------------------------ descriptors
def test_descriptor_rules_follow_the_papers_pairs_in_order():
    assert list(DESCRIPTOR_PAIRS) == PAPER_PAIRS
    assert [(r.first, r.second) for r in RULES] == PAPER_PAIRS


def test_descriptor_rules_are_monotone_in_their_score():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 16))
    thr = fit_thresholds(scores)
    labels = rule_labels(scores, thr)
    assert set(np.unique(labels)) <= {0, 1}
    assert np.all(np.abs(labels.mean(0) - 0.5) < 0.01)  # the median splits the population in halves
    for r in range(16):
        order = np.argsort(scores[:, r])
        assert np.all(np.diff(labels[order, r]) <= 0)  # never back from the first phrase to the second
    assert label_phrases(labels[0])[3] in ("Tall", "Short")


@pytest.mark.parametrize("k,rule", [(0, 3), (4, 4), (5, 5), (6, 13), (7, 14), (2, 1), (1, 2), (1, 7), (8, 12)])
def test_measured_descriptor_follows_the_shape(neutral, k, rule):
    """Sweeping one beta moves its rule's score one way, so the label flips at most once, the right way."""
    betas = np.zeros((7, 10))
    betas[:, k] = np.linspace(-3, 3, 7)
    scores = descriptor_scores(_measure(neutral, betas))[:, rule]
    assert np.all(np.diff(scores) > 0), (DESCRIPTOR_PAIRS[rule], scores)
    labels = rule_labels(descriptor_scores(_measure(neutral, betas)),
                               fit_thresholds(descriptor_scores(_measure(neutral, betas))))[:, rule]
    assert np.all(np.diff(labels) <= 0) and labels[0] == 1 and labels[-1] == 0


def test_tall_means_taller(model_root):
    betas, genders = sample_subjects(12, 12, seed=3)
    heights, scores = [], []
    for g in ("female", "male"):
        m = _measure(load_body_model(model_root, g), betas[genders == g])
        heights.append(m["height"])
        scores.append(descriptor_scores(m))
    heights, scores = np.concatenate(heights), np.concatenate(scores)
    labels = rule_labels(scores, fit_thresholds(scores))
    tall = labels[:, 3] == 0
    assert tall.any() and (~tall).any()
    assert heights[tall].min() >= heights[~tall].max()


# ------------------------------------------------------------------------------------------ poses and plan
def test_builtin_pose_pool_lowers_the_arms(neutral):
    pool = builtin_pose_pool()
    assert pool.shape[1] == 69 and 12 <= len(pool) <= 20 and np.isfinite(pool).all()
    with torch.no_grad():
        joints = neutral.smpl(betas=torch.zeros(len(pool), 10), body_pose=torch.as_tensor(pool),
                              global_orient=torch.zeros(len(pool), 3), transl=torch.zeros(len(pool), 3)).joints
    j = joints[:, :24].numpy()
    for side in ((J.L_SHOULDER, J.L_WRIST), (J.R_SHOULDER, J.R_WRIST)):
        drop = j[:, side[0], 1] - j[:, side[1], 1]
        assert np.all(drop > 0.3), drop  # wrists well below the shoulders: arms down, not a T-pose
    assert np.all(j[:, J.HEAD, 1] > j[:, J.PELVIS, 1] + 0.4)  # upright


def test_pose_file_shapes(tmp_path):
    good = tmp_path / "poses.npz"
    np.savez(good, body_pose=np.zeros((3, 23, 3)))
    assert load_pose_file(str(good)).shape == (3, 69)
    bad = tmp_path / "bad_poses.npz"
    np.savez(bad, body_pose=np.zeros((3, 72)))
    with pytest.raises(PoseFileError) as err:
        load_pose_file(str(bad))
    assert "bad_poses.npz" in str(err.value) and "[K, 69]" in str(err.value) and "(3, 72)" in str(err.value)
    nokey = tmp_path / "nokey.npz"
    np.savez(nokey, poses=np.zeros((3, 69)))
    with pytest.raises(PoseFileError, match="no key 'body_pose'"):
        load_pose_file(str(nokey))
    with pytest.raises(PoseFileError, match="does not exist"):
        load_pose_file(str(tmp_path / "missing.npz"))
    plan = make_plan(1, 1, 2, pose_file=str(good))
    assert len(plan.pose_pool) == len(builtin_pose_pool()) + 3


def test_plan_is_deterministic_and_follows_the_arguments():
    a = make_plan(3, 2, 4, seed=5, sigma=0.5)
    b = make_plan(3, 2, 4, seed=5, sigma=0.5)
    c = make_plan(3, 2, 4, seed=6, sigma=0.5)
    assert a.num_images == 20 and len(set(a.files.tolist())) == 20
    np.testing.assert_array_equal(a.betas, b.betas)
    np.testing.assert_array_equal(a.yaw_deg, b.yaw_deg)
    assert not np.allclose(a.betas, c.betas)
    assert list(a.genders) == ["female"] * 3 + ["male"] * 2
    for s in range(5):  # distinct poses per subject while the pool is large enough
        assert len(set(a.pose_id[a.subject == s].tolist())) == 4
    assert np.all((a.yaw_deg >= 0) & (a.yaw_deg < 360))
    big, _ = sample_subjects(500, 500, sigma=0.5, seed=1)
    assert abs(big.std() - 0.5) < 0.02


def test_metadata_round_trip(tmp_path):
    meta = {"files": np.array(["images/a.png", "images/b.png"]),
            "betas": np.arange(20, dtype=np.float32).reshape(2, 10),
            "labels": np.array([[0] * 16, [1] * 16], dtype=np.int8), "gender": np.array(["female", "male"]),
            "seed": np.int64(3), "fingerprint": np.str_("abc"), "complete": np.bool_(True)}
    path = tmp_path / "meta.npz"
    write_synthetic_meta(str(path), meta)
    back = read_synthetic_meta(str(tmp_path))
    assert set(back) == set(meta)
    for k, v in meta.items():
        np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(v))
    assert back["seed"] == 3 and back["fingerprint"] == "abc" and back["complete"] is True
    assert [p.name for p in tmp_path.iterdir()] == ["meta.npz"]  # no temporary file left behind


# ------------------------------------------------------------------------------------------ shape evaluation
def test_chamfer_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 3)), rng.normal(size=(200, 3)) + 0.3
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    ref = 0.5 * (d.min(1).mean() + d.min(0).mean())
    assert chamfer_distance(a, b) == pytest.approx(ref, rel=1e-12)
    ref_sq = 0.5 * ((d.min(1) ** 2).mean() + (d.min(0) ** 2).mean())
    assert chamfer_distance(torch.as_tensor(a), b, squared=True) == pytest.approx(ref_sq, rel=1e-12)
    assert chamfer_distance(a, a) == 0.0


def test_surface_sampling_is_area_weighted():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 2, 0]], dtype=float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])  # areas 0.5 and 3
    pts = sample_surface(verts, faces, n=20000, seed=0)
    frac_small = np.mean(pts[:, 0] < 5)
    assert frac_small == pytest.approx(0.5 / 3.5, abs=0.01)
    small = pts[pts[:, 0] < 5]
    assert np.all(small[:, 0] + small[:, 1] <= 1 + 1e-9) and np.all(small >= -1e-12)


def test_evaluate_shapes(neutral, model_root):
    betas = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
    same = evaluate_shapes(betas, betas, neutral, num_points=3000)
    assert same["chamfer_mm"].shape == (3,)
    # identical shapes differ only by sampling: about 0.5 * sqrt(area / n) ~ 13 mm at n = 3000
    assert same["mean_chamfer_mm"] < 16.0
    near = evaluate_shapes(betas + 0.5, betas, neutral, num_points=3000)["mean_chamfer_mm"]
    far = evaluate_shapes(betas + 2.0, betas, neutral, num_points=3000)["mean_chamfer_mm"]
    assert same["mean_chamfer_mm"] < near < far
    with torch.no_grad():
        gt_verts = neutral.canonical_vertices(torch.as_tensor(betas)).numpy()
    from_meshes = evaluate_shapes(betas, gt_verts, neutral, num_points=3000)
    np.testing.assert_allclose(from_meshes["chamfer_mm"], same["chamfer_mm"])
    # a brute-force check of one sample against cKDTree-free distances
    pa = sample_surface(gt_verts[0], neutral.faces, 500, seed=1)
    pb = sample_surface(gt_verts[1], neutral.faces, 500, seed=2)
    d = np.linalg.norm(pa[:, None] - pb[None], axis=-1)
    assert chamfer_distance(pa, pb) == pytest.approx(0.5 * (d.min(1).mean() + d.min(0).mean()))
    assert cKDTree(pb).query(pa)[0].mean() == pytest.approx(d.min(1).mean())


def test_eval_shape_script(tmp_path, model_root, caplog):
    main = load_script("eval_shape").main

    betas = np.random.default_rng(1).normal(size=(4, 10)).astype(np.float32)
    np.savez(tmp_path / "pred.npz", betas=betas)
    gt = betas.copy()
    gt[:2] += 2.0  # the first two predictions are wrong
    np.savez(tmp_path / "gt.npz", betas=gt, gender=np.array(["neutral", "female", "neutral", "neutral"]))
    out = tmp_path / "res.json"
    rc = main(["--body-model", model_root, "--pred-npz", str(tmp_path / "pred.npz"), "--gt-npz",
               str(tmp_path / "gt.npz"), "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert len(res["chamfer_mm"]) == 4
    # right predictions sit at the sampling floor (~7 mm at 10,000 points); wrong ones well above it
    assert res["chamfer_mm"][2] < 9.0 and res["chamfer_mm"][3] < 9.0
    assert res["chamfer_mm"][0] > 15.0 and res["chamfer_mm"][1] > 15.0
    # Beside it, the error of predicting the body model's mean shape (betas 0) for every image.
    neutral = load_body_model(model_root, "neutral")
    ref = np.zeros(4)
    for g, idx in (("neutral", [0, 2, 3]), ("female", [1])):  # scored per gender, as the script groups them
        ref[idx] = evaluate_shapes(np.zeros((len(idx), 10)), gt[idx], neutral, num_points=10000, seed=0,
                                   gt_body_model=load_body_model(model_root, g))["chamfer_mm"]
    assert res["mean_shape_chamfer_mm"] == pytest.approx(float(np.mean(ref)), rel=1e-6)
    assert f"predicting the mean shape (betas 0) for every one: {np.mean(ref):.2f} mm" in caplog.text
    assert main(["--body-model", model_root, "--pred-npz", str(tmp_path / "missing.npz"), "--gt-npz",
                 str(tmp_path / "gt.npz")]) == 2


def test_make_body_model_script(tmp_path, caplog):
    main = load_script("make_body_model").main

    assert main(["--out", str(tmp_path), "--num-vertices", "400"]) == 0
    assert f"written to {tmp_path / 'smpl'}" in caplog.text  # a line on success
    model = load_body_model(str(tmp_path), "male")
    assert 400 <= model.num_vertices < 600


def test_config_has_body_keys():
    from clip3dreid_plugin.config.defaults import get_cfg

    cfg = get_cfg()
    assert cfg.body.beta_sigma == 1.0 and cfg.body.num_female == 500 and cfg.body.poses_per_subject == 10

"""The frozen CLIP teacher, descriptor prompts, the teacher cache, the label script and the CLIP baselines.

Everything runs on a tiny open_clip model (``tests/fixtures/tiny_clip.py``) with seeded random
weights saved to a local ``.pt``; no network and no real CLIP weights are needed.
"""
from __future__ import annotations

import copy
import csv
import importlib
import os.path as osp
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from clip3dreid_plugin.teacher import clip_teacher as ct
from clip3dreid_plugin.teacher import weights as tw
from clip3dreid_plugin.teacher.cache import (
    TeacherCache,
    TeacherCacheMismatchError,
    TeacherCacheMissError,
    TeacherCacheStaleError,
    build_teacher_cache,
    cache_file_path,
)
from clip3dreid_plugin.teacher.clip_teacher import CLIPTeacher
from clip3dreid_plugin.teacher.weights import TeacherLoadError
from clip3dreid_plugin.teacher.descriptors import (
    DESCRIPTOR_PAIRS,
    PROMPT_TEMPLATE,
    build_prompts,
    parse_pairs,
    resolve_template,
)
from tests.fixtures.tiny_clip import register_tiny_clip, write_tiny_clip_weights

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
GUIDANCE = "teacher.pretrained=/path/to/file.pt"
ERROR_BOUND_S = 10.0  # an error-path bound (no 46 s hub retries), not a speed goal
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``(model_name, weights_path, folder)`` of the registered tiny CLIP with seed-0 weights."""
    folder = str(tmp_path_factory.mktemp("tiny_clip"))
    name = register_tiny_clip(folder)
    weights = write_tiny_clip_weights(osp.join(folder, "tiny_seed0.pt"), seed=0, name=name)
    return name, weights, folder


@pytest.fixture(scope="session")
def teacher(tiny):
    name, weights, _ = tiny
    return CLIPTeacher(name, weights)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """20 varied 128x64 RGB images (random blobs and gradients, so labels are not all equal)."""
    folder = tmp_path_factory.mktemp("teacher_images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(20):
        base = rng.integers(0, 255, size=(1, 1, 3))
        grad = np.linspace(0, 1, 128)[:, None, None] * rng.integers(0, 255, size=(1, 1, 3))
        arr = np.clip(base * 0.5 + grad + rng.normal(0, 40, size=(128, 64, 3)), 0, 255).astype(np.uint8)
        p = osp.join(folder, f"img_{i:03d}.png")
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def _student_batch(paths, size=(128, 64)):
    x = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize(size[::-1], Image.BICUBIC)))
                     .permute(2, 0, 1).float() / 255.0 for p in paths])
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def _count_encodes(monkeypatch, teacher_obj, fail_at=None):
    """Wraps ``teacher.encode_clip_input`` (one call per batch); optionally raises on call ``fail_at``."""
    calls = {"n": 0}
    original = CLIPTeacher.encode_clip_input.__get__(teacher_obj)

    def wrapped(x):
        calls["n"] += 1
        if fail_at is not None and calls["n"] == fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return original(x)

    monkeypatch.setattr(teacher_obj, "encode_clip_input", wrapped)
    return calls


# --------------------------------------------------------------------------- descriptors


def test_descriptor_pairs_and_template_follow_the_paper():
    assert len(DESCRIPTOR_PAIRS) == 16
    assert DESCRIPTOR_PAIRS[0] == ("Muscular", "Slender")
    assert DESCRIPTOR_PAIRS[4] == ("Long Legs", "Short Legs")
    assert DESCRIPTOR_PAIRS[9] == ("Pear-Shaped", "Apple-Shaped")
    assert DESCRIPTOR_PAIRS[15] == ("High-Waisted", "Low-Waisted")
    assert PROMPT_TEMPLATE == "A photo of a person; the person is/has {}."
    prompts = build_prompts()
    assert len(prompts) == 32
    assert prompts[0] == "A photo of a person; the person is/has Muscular."
    assert prompts[3] == "A photo of a person; the person is/has Narrow-Shouldered."


def test_parse_pairs_and_template_validation():
    assert parse_pairs([]) == DESCRIPTOR_PAIRS
    assert parse_pairs([" Tall | Short ", "Fit|Unfit"]) == (("Tall", "Short"), ("Fit", "Unfit"))
    for bad in (["Tall"], ["Tall|"], ["a|b|c"], ["|x"]):
        with pytest.raises(ValueError, match="teacher.descriptor_pairs"):
            parse_pairs(bad)
    with pytest.raises(ValueError, match="teacher.prompt_template"):
        resolve_template("a photo of a person")
    assert resolve_template("") == PROMPT_TEMPLATE
    assert build_prompts([("a", "b")], "x {} y") == ["x a y", "x b y"]


# --------------------------------------------------------------------------- teacher


def test_labels_equal_independent_open_clip_recomputation(tiny, teacher, images):
    import open_clip

    name, weights, _ = tiny
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights,
                                                                 image_resize_mode="longest")
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    texts = []
    for first, second in DESCRIPTOR_PAIRS:
        texts += [f"A photo of a person; the person is/has {first}.",
                  f"A photo of a person; the person is/has {second}."]
    with torch.no_grad():
        t = F.normalize(model.encode_text(tokenizer(texts)), dim=-1).view(16, 2, -1)
        x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images])
        g = F.normalize(model.encode_image(x), dim=-1)
    s1 = (g[:, None, :] * t[None, :, 0, :]).sum(-1)
    s2 = (g[:, None, :] * t[None, :, 1, :]).sum(-1)
    expected = torch.where(s1 > s2, 0, 1)

    ours_g = teacher.encode_pil([Image.open(p).convert("RGB") for p in images])
    ours = teacher.label(ours_g)
    assert ours.dtype == torch.long and ours.shape == (20, 16)
    torch.testing.assert_close(ours_g, g, atol=1e-5, rtol=0)
    torch.testing.assert_close(teacher.descriptor_text_features(), t, atol=1e-5, rtol=0)
    decided = (s1 - s2).abs() > 1e-5  # exact float ties could go either way between two code paths
    assert decided.float().mean() > 0.9
    assert torch.equal(ours[decided], expected[decided])
    assert 0 < ours.float().mean() < 1  # both phrases occur: the comparison is not vacuous


def test_label_rule_ties_and_gather():
    text = torch.zeros(3, 2, 4)
    text[:, 0, 0] = 1.0  # phrase 1 along e0
    text[:, 1, 1] = 1.0  # phrase 2 along e1
    text[2, 1] = text[2, 0]  # pair 3: identical phrases -> a tie -> phrase 2 (Eq. 2)
    g = torch.tensor([[2.0, 1.0, 0, 0], [0.1, 3.0, 0, 0]])
    labels = ct.descriptor_labels(g, text)
    assert labels.tolist() == [[0, 0, 1], [1, 1, 1]]
    h = ct.gather_text_features(text, labels)
    assert h.shape == (2, 3, 4)
    assert torch.equal(h[1, 0], text[0, 1]) and torch.equal(h[0, 0], text[0, 0])


def test_text_features_shape_norm_and_cached(teacher):
    t = teacher.descriptor_text_features()
    assert t.shape == (16, 2, 64)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(16, 2))
    assert teacher.descriptor_text_features() is t
    labels = torch.randint(0, 2, (5, 16))
    h = teacher.gather_text_features(labels)
    assert h.shape == (5, 16, 64)
    assert torch.equal(h[3, 7], t[7, labels[3, 7]])


def test_frozen_eval_and_absent_from_parent_checkpoint(teacher):
    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.teacher = teacher

    s = Student()
    s.train()
    assert s.training and s.fc.training
    assert not teacher.training and not teacher.clip_model.training
    assert all(not p.requires_grad for p in teacher.clip_model.parameters())
    assert set(s.state_dict()) == {"fc.weight", "fc.bias"}
    assert teacher.state_dict() == {}
    assert [n for n, _ in s.named_parameters()] == ["fc.weight", "fc.bias"]
    s.load_state_dict(copy.deepcopy(s.state_dict()), strict=True)
    s.requires_grad_(True)  # a parent unfreezing "everything" must not reach CLIP
    assert all(not p.requires_grad for p in teacher.clip_model.parameters())
    x = torch.randn(2, 3, 64, 32)
    f = teacher.encode_images(x)
    assert f.shape == (2, 64) and not f.requires_grad
    torch.testing.assert_close(f.norm(dim=1), torch.ones(2))


def test_encode_images_matches_pil_preprocessing(teacher, images):
    # Student-normalised 128x64 tensors vs the PIL path on the same 128x64 images: same pixels, same
    # pad-to-square geometry; only interpolation/rounding differ.
    x = _student_batch(images[:6])
    a = teacher.encode_images(x)
    b = teacher.encode_pil([Image.open(p).convert("RGB") for p in images[:6]])
    assert (a * b).sum(dim=1).min() > 0.99


def test_resize_modes(tiny, teacher, images):
    x = _student_batch(images[:2])
    pad = teacher.encode_images(x)
    for mode in ("squash", "crop"):
        other = CLIPTeacher(tiny[0], tiny[1], resize_mode=mode)
        assert other._resize(torch.rand(2, 3, 128, 64)).shape == (2, 3, 64, 64)
        f = other.encode_images(x)
        assert f.shape == (2, 64) and not torch.allclose(f, pad)
    padded = teacher._resize(torch.ones(1, 3, 128, 64))
    assert padded[..., :, :16].abs().sum() == 0 and padded[..., :, 16:48].min() > 0.99  # black side bars
    with pytest.raises(ValueError, match="teacher.resize_mode"):
        CLIPTeacher(tiny[0], tiny[1], resize_mode="stretch")


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_local_weight_formats_load_identically(tiny, teacher, tmp_path):
    from safetensors.torch import save_file

    name, weights, _ = tiny
    ref = teacher.descriptor_text_features()
    wrapped = write_tiny_clip_weights(str(tmp_path / "ddp.pth"), seed=0, name=name, wrap=True)
    sd = torch.load(weights, weights_only=True)
    st = str(tmp_path / "w.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items()}, st)
    for path in (wrapped, st):
        other = CLIPTeacher(name, path)
        assert torch.equal(other.descriptor_text_features(), ref), path
    # An OpenAI-style TorchScript archive (torch.load(weights_only=True) refuses these).
    import open_clip

    model = open_clip.create_model(name, pretrained=weights).eval()
    traced = torch.jit.trace(model, (torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)), strict=False)
    jit_path = str(tmp_path / "openai_style.pt")
    torch.jit.save(traced, jit_path)
    assert tw._is_torchscript_archive(jit_path) and not tw._is_torchscript_archive(weights)
    assert torch.equal(CLIPTeacher(name, jit_path).descriptor_text_features(), ref)


def _assert_fast_failure(fn, match):
    t0 = time.monotonic()
    with pytest.raises(TeacherLoadError, match=match) as info:
        fn()
    elapsed = time.monotonic() - t0
    assert elapsed < ERROR_BOUND_S, f"took {elapsed:.1f} s"
    assert GUIDANCE in str(info.value)
    return str(info.value)


def test_errors_fail_fast_with_guidance(tiny, tmp_path, monkeypatch):
    name, _, _ = tiny
    _assert_fast_failure(lambda: CLIPTeacher(name, str(tmp_path / "missing.pt")), "not found")
    msg = _assert_fast_failure(lambda: CLIPTeacher("ViT-L-14-quickgeluu", None), "unknown open_clip model name")
    assert "ViT-L-14-quickgelu" in msg
    _assert_fast_failure(lambda: CLIPTeacher("ViT-B-32", "no-such-tag"), "not an open_clip tag|neither")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    _assert_fast_failure(lambda: CLIPTeacher(name, str(garbage)), "cannot load teacher weights")

    # A hub tag that is not cached locally, with the hub unreachable (port 9 on localhost refuses at
    # once; this also keeps a networked CI from downloading 350 MB).
    monkeypatch.setattr(tw, "_tag_cache_candidates", lambda cfg: [])
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setattr(tw, "_hf_offline", lambda: False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")
    _assert_fast_failure(lambda: CLIPTeacher("ViT-B-32", "openai"), "unreachable")
    monkeypatch.setattr(tw, "_hf_offline", lambda: True)
    _assert_fast_failure(lambda: CLIPTeacher("ViT-B-32", "laion2b_s34b_b79k"), "HF_HUB_OFFLINE")


# --------------------------------------------------------------------------- cache


def test_cache_round_trip_is_bit_exact(teacher, images, tmp_path):
    path = str(tmp_path / "c.pt")
    built = build_teacher_cache(teacher, images, path, batch_size=8, progress=False, dataset="toy")
    loaded = TeacherCache.load(path)
    assert loaded.paths == sorted(images) and loaded.dataset == "toy"
    assert loaded.features.dtype == torch.float32 and loaded.labels.dtype == torch.uint8
    assert torch.equal(loaded.features, built.features) and torch.equal(loaded.labels, built.labels)
    assert torch.equal(loaded.text_features, teacher.descriptor_text_features())
    order = [images[7], images[2], images[7], images[19]]
    g, lab = loaded.lookup(order)
    direct = teacher.encode_pil([Image.open(p).convert("RGB") for p in order])
    assert g.shape == (4, 64) and lab.shape == (4, 16) and lab.dtype == torch.long
    torch.testing.assert_close(g, direct, atol=1e-6, rtol=0)
    assert torch.equal(lab, teacher.label(g))
    assert torch.equal(g[0], g[2])
    dotted = osp.join(osp.dirname(images[7]), ".", osp.basename(images[7]))  # same file, other spelling
    assert torch.equal(loaded.lookup([dotted])[0][0], g[0])
    assert torch.equal(loaded.gather_text_features(lab), teacher.gather_text_features(lab))
    fp = loaded.fingerprint
    assert fp["teacher"] == teacher.model_name and fp["weights"].startswith("sha256:")
    assert fp["template"] == PROMPT_TEMPLATE and len(fp["pairs"]) == 16 and "open_clip" in fp
    assert not osp.exists(path + ".partial")


def test_stale_cache_is_rebuilt_or_rejected(tiny, teacher, images, tmp_path, monkeypatch):
    name, _, folder = tiny
    path = str(tmp_path / "c.pt")
    build_teacher_cache(teacher, images[:10], path, batch_size=4, progress=False)
    calls = _count_encodes(monkeypatch, teacher)
    build_teacher_cache(teacher, list(reversed(images[:10])), path, batch_size=4, progress=False)
    assert calls["n"] == 0  # same image set (order irrelevant): reused

    with pytest.raises(TeacherCacheStaleError, match="image list"):
        build_teacher_cache(teacher, images[:12], path, batch_size=4, progress=False, on_stale="error")
    rebuilt = build_teacher_cache(teacher, images[:12], path, batch_size=4, progress=False)
    assert calls["n"] == 3 and len(rebuilt) == 12 and len(TeacherCache.load(path)) == 12

    other = CLIPTeacher(name, write_tiny_clip_weights(osp.join(folder, "tiny_seed1.pt"), seed=1, name=name))
    with pytest.raises(TeacherCacheStaleError, match="teacher weights"):
        build_teacher_cache(other, images[:12], path, batch_size=4, progress=False, on_stale="error")
    fresh = build_teacher_cache(other, images[:12], path, batch_size=4, progress=False)
    assert fresh.fingerprint["weights"] != rebuilt.fingerprint["weights"]
    assert not torch.equal(fresh.features, rebuilt.features)


def test_interrupted_labelling_resumes_and_equals_uninterrupted(teacher, images, tmp_path, monkeypatch):
    ref = build_teacher_cache(teacher, images, str(tmp_path / "ref.pt"), batch_size=4, progress=False)
    path = str(tmp_path / "c.pt")
    calls = _count_encodes(monkeypatch, teacher, fail_at=4)  # 5 batches; dies in the 4th
    with pytest.raises(KeyboardInterrupt):
        build_teacher_cache(teacher, images, path, batch_size=4, progress=False, save_every_s=0,
                            save_every_batches=2)
    assert not osp.exists(path)
    part = torch.load(path + ".partial", weights_only=True)
    assert part["done"] == 12  # 3 finished batches survive (saved at 2, then on the interruption)
    monkeypatch.undo()
    calls = _count_encodes(monkeypatch, teacher)
    resumed = build_teacher_cache(teacher, images, path, batch_size=4, progress=False)
    assert calls["n"] == 2  # only the remaining 8 images
    assert torch.equal(resumed.features, ref.features) and torch.equal(resumed.labels, ref.labels)
    assert resumed.paths == ref.paths and not osp.exists(path + ".partial")
    loaded = TeacherCache.load(path)
    assert torch.equal(loaded.features, ref.features)


def _write_old_format_cache(cache: TeacherCache, path: str) -> None:
    """The cache as the code before the fingerprint scheme 2 wrote it: no 'scheme' key, the image list hashed as
    SHA-256 of its newline-terminated lines."""
    import hashlib

    h = hashlib.sha256()
    for p in cache.paths:
        h.update(p.encode("utf-8", "surrogateescape") + b"\n")
    fp = {k: v for k, v in cache.fingerprint.items() if k != "scheme"}
    fp["images"] = h.hexdigest()
    data = cache.to_dict()
    data["fingerprint"] = fp
    torch.save(data, path)


def test_old_format_cache_keeps_loading_and_is_rebuilt_saying_why(teacher, images, tmp_path, monkeypatch, caplog):
    ref = build_teacher_cache(teacher, images[:8], str(tmp_path / "ref.pt"), batch_size=4, progress=False)
    path = str(tmp_path / "old.pt")
    _write_old_format_cache(ref, path)
    loaded = TeacherCache.load(path)  # training reads it as before
    assert torch.equal(loaded.features, ref.features) and "scheme" not in loaded.fingerprint
    loaded.check_compatible(images[:8], teacher.model_name, weights_id=teacher.weights_id(), pairs=DESCRIPTOR_PAIRS,
                            template=PROMPT_TEMPLATE)
    with pytest.raises(TeacherCacheStaleError) as info:
        build_teacher_cache(teacher, images[:8], path, batch_size=4, progress=False, on_stale="error")
    assert path in str(info.value) and "older plugin version (scheme 1, now 2)" in str(info.value)
    calls = _count_encodes(monkeypatch, teacher)
    with caplog.at_level("WARNING", logger="clip3dreid_plugin.utils.artefact"):
        rebuilt = build_teacher_cache(teacher, images[:8], path, batch_size=4, progress=False)
    assert calls["n"] == 2
    assert any(path in r.getMessage() and "older plugin version" in r.getMessage() for r in caplog.records)
    assert torch.equal(rebuilt.features, ref.features)
    assert TeacherCache.load(path).fingerprint == ref.fingerprint and ref.fingerprint["scheme"] == 2


def test_only_rebuild_and_error_are_stale_policies(teacher, images, tmp_path):
    from clip3dreid_plugin.config import ConfigError

    with pytest.raises(ConfigError, match=r"teacher.on_stale must be one of rebuild\|error, got 'overwrite'"):
        build_teacher_cache(teacher, images[:4], str(tmp_path / "c.pt"), progress=False, on_stale="overwrite")
    assert not osp.exists(str(tmp_path / "c.pt"))


def test_old_format_partial_is_ignored_with_a_warning(teacher, images, tmp_path, caplog):
    ref = build_teacher_cache(teacher, images[:8], str(tmp_path / "ref.pt"), batch_size=4, progress=False)
    path = str(tmp_path / "c.pt")
    # the partial file of the code before utils/artefact.py: the cache layout plus 'done', rows of other values
    old = dict(ref.to_dict(), done=4, features=torch.zeros_like(ref.features))
    torch.save(old, path + ".partial")
    with caplog.at_level("WARNING", logger="clip3dreid_plugin.utils.artefact"):
        built = build_teacher_cache(teacher, images[:8], path, batch_size=4, progress=False)
    assert any("older plugin version in another format" in r.getMessage() for r in caplog.records)
    assert torch.equal(built.features, ref.features) and not osp.exists(path + ".partial")


def test_lookup_of_missing_image_names_it(teacher, images, tmp_path):
    cache = build_teacher_cache(teacher, images[:5], str(tmp_path / "c.pt"), batch_size=8, progress=False)
    with pytest.raises(TeacherCacheMissError, match="img_017.png") as info:
        cache.lookup([images[0], images[17], images[18]])
    assert isinstance(info.value, KeyError)


def test_check_compatible_rejects_other_dataset_or_teacher(teacher, images, tmp_path):
    cache = build_teacher_cache(teacher, images[:5], str(tmp_path / "c.pt"), batch_size=8, progress=False,
                                dataset="market1501")
    cache.check_compatible(images[:5], teacher.model_name, weights_id=teacher.weights_id(), dataset="market1501",
                           pairs=DESCRIPTOR_PAIRS, template=PROMPT_TEMPLATE, resize_mode="pad")
    with pytest.raises(TeacherCacheMismatchError, match="'market1501', not 'ltcc'"):
        cache.check_compatible(dataset="ltcc")
    with pytest.raises(TeacherCacheMismatchError, match="teacher: .* -> 'ViT-L-14-quickgelu'"):
        cache.check_compatible(teacher_name="ViT-L-14-quickgelu")
    with pytest.raises(TeacherCacheMismatchError, match="img_009.png"):
        cache.check_compatible(images[:5] + [images[9]], dataset="market1501")
    with pytest.raises(TeacherCacheMismatchError, match="descriptor pairs"):
        cache.check_compatible(pairs=DESCRIPTOR_PAIRS[:15])


def test_cache_file_name_and_concat(teacher, images, tmp_path):
    p = cache_file_path("/c", "ltcc", "ViT-L-14-quickgelu", "openai")
    assert p == osp.join("/c", "ltcc__ViT-L-14-quickgelu__openai.pt")
    assert tw.weights_label_for("/w/ViT-L-14.pt") == "ViT-L-14" and tw.weights_label_for("") == "random"
    a = build_teacher_cache(teacher, images[:6], str(tmp_path / "a.pt"), batch_size=8, progress=False, dataset="a")
    b = build_teacher_cache(teacher, images[4:9], str(tmp_path / "b.pt"), batch_size=8, progress=False, dataset="b")
    both = TeacherCache.concat([a, b])
    assert len(both) == 9
    g, lab = both.lookup([images[0], images[8]])
    assert torch.equal(g[1], b.lookup([images[8]])[0][0])


# --------------------------------------------------------------------------- script, sources, baselines


def _load_script():
    return importlib.import_module("clip3dreid_plugin.tools.label_descriptors")


def _toy_config(tmp_path, root, tiny):
    name, weights, _ = tiny
    cfg_path = tmp_path / "label.yaml"
    cfg_path.write_text(
        "data:\n"
        f"  root: {root}\n"
        "  sources: [market1501]\n"
        "  workers: 0\n"
        "runtime:\n  device: cpu\n  progress: false\n"
        "teacher:\n"
        f"  name: {name}\n"
        f"  pretrained: {weights}\n"
        f"  cache_dir: {tmp_path / 'cache'}\n"
        "  batch_size: 8\n"
    )
    return str(cfg_path)


def test_label_script_writes_cache_and_report(tmp_path, toy_market_root, tiny):
    root, counts = toy_market_root
    script = _load_script()
    cfg_file = _toy_config(tmp_path, root, tiny)
    out = tmp_path / "report"
    assert script.main(["--config-file", cfg_file, "--report", str(out)]) == 0
    cache_path = cache_file_path(str(tmp_path / "cache"), "market1501", tiny[0], "tiny_seed0")
    cache = TeacherCache.load(cache_path)
    assert len(cache) == counts["train"]
    with open(out / "market1501__labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "path" and rows[0][1] == "Muscular|Slender" and len(rows[0]) == 17
    assert len(rows) == counts["train"] + 1
    _, labels = cache.lookup([r[0] for r in rows[1:]])
    assert rows[1][1] == DESCRIPTOR_PAIRS[0][int(labels[0, 0])]
    with open(out / "market1501__label_freq.csv", newline="") as f:
        freq = list(csv.DictReader(f))
    assert len(freq) == 16
    for m, row in enumerate(freq):
        assert int(row["count_first"]) + int(row["count_second"]) == counts["train"]
        assert int(row["count_second"]) == int(labels[:, m].sum())
        assert row["first"] == DESCRIPTOR_PAIRS[m][0]
    # A bad teacher is a one-line error with exit status 2, not a traceback.
    assert script.main(["--config-file", cfg_file, "teacher.pretrained", str(tmp_path / "nope.pt")]) == 2


def test_teacher_sources_cache_and_online(tmp_path, toy_market_root, tiny, teacher):
    from clip3dreid_plugin.config.loader import load_config
    from clip3dreid_plugin.teacher.source import CacheTeacherSource, OnlineTeacherSource, build_teacher_source

    root, _ = toy_market_root
    script = _load_script()
    cfg_file = _toy_config(tmp_path, root, tiny)
    assert script.main(["--config-file", cfg_file]) == 0
    cfg = load_config(cfg_file, [])
    paths = script.training_image_paths("market1501", cfg)
    src = build_teacher_source(cfg, [("market1501", paths)])
    assert isinstance(src, CacheTeacherSource)
    g, lab = src.lookup(paths[:3], None)
    assert g.shape == (3, 64) and src.gather_text(lab).shape == (3, 16, 64)
    with pytest.raises(TeacherCacheMismatchError, match="not 'ltcc'|not cached"):
        other = TeacherCache.load(cache_file_path(cfg.teacher.cache_dir, "market1501", tiny[0], "tiny_seed0"))
        other.check_compatible(dataset="ltcc")
    online = OnlineTeacherSource(teacher)
    g2, lab2 = online.lookup(paths[:3], torch.randn(3, 3, 64, 32))
    assert g2.shape == (3, 64) and lab2.shape == (3, 16)


def test_clip_baselines_build_through_the_model_table(tiny):
    from clip3dreid_plugin import compat
    from clip3dreid_plugin.config.defaults import get_cfg

    cfg = get_cfg()
    cfg.teacher.name, cfg.teacher.pretrained = tiny[0], tiny[1]
    table = compat.model_factory()  # torchreid's own table, as torchreid.models.build_model reads it
    x = torch.randn(2, 3, 64, 32)
    zs = table["clip_zeroshot"](num_classes=6, loss="softmax", pretrained=True, use_gpu=False, cfg=cfg)
    zs.eval()
    f = zs(x)
    assert f.shape == (2, 64)
    assert list(zs.parameters()) == [] and zs.state_dict() == {}
    zs.train()
    with pytest.raises(RuntimeError, match="evaluation-only"):
        zs(x)

    lin = table["clip_linear"](num_classes=6, loss="softmax", pretrained=True, use_gpu=False, cfg=cfg)
    assert set(lin.state_dict()) == {"classifier.weight", "classifier.bias"}
    lin.train()
    logits = lin(x)
    assert logits.shape == (2, 6) and logits.requires_grad
    logits.sum().backward()
    assert lin.classifier.weight.grad is not None
    lin.eval()
    torch.testing.assert_close(lin(x), f)


def test_clip_linear_from_cfg_via_plugin_build(tiny):
    from clip3dreid_plugin.config.defaults import get_cfg
    from clip3dreid_plugin.models.build import build_model

    cfg = get_cfg()
    cfg.model.name = "clip_linear"
    cfg.teacher.name, cfg.teacher.pretrained = tiny[0], tiny[1]
    model = build_model(cfg, num_classes=4, use_gpu=False)
    model.eval()
    assert model(torch.randn(1, 3, 64, 32)).shape == (1, 64)
    assert model.teacher.weights_file == tiny[1]


def test_random_teacher_is_seeded_and_leaves_the_callers_rng_alone(tiny):
    """Without weights the teacher is one fixed network (its cache survives a rerun of the quickstart), and building
    it does not move the global RNG that seeds the student."""
    name, _, _ = tiny
    torch.manual_seed(123)
    expect_next = torch.rand(3)
    torch.manual_seed(123)
    a = CLIPTeacher(name, None)
    assert torch.equal(torch.rand(3), expect_next)
    torch.manual_seed(7)
    b = CLIPTeacher(name, None)
    assert a.weights_id().startswith("random:") and a.weights_id() == b.weights_id()
    assert torch.equal(a.text_features, b.text_features)


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize("want, device, capability, got", [
    ("auto", "cpu", None, "fp32"), ("auto", "cuda:0", (9, 0), "bf16"), ("auto", "cuda:0", (8, 0), "bf16"),
    ("auto", "cuda:0", (7, 5), "fp16"), ("fp32", "cuda:0", (9, 0), "fp32"), ("fp16", "cuda:0", (7, 0), "fp16"),
    ("bf16", "cpu", None, "bf16"), ("bf16", "cuda:0", (7, 0), None), ("half", "cpu", None, None),
])
def test_teacher_precision_resolves_per_device(monkeypatch, want, device, capability, got):
    """teacher.precision auto: float32 on the CPU (unchanged runs and caches there), bfloat16 on a GPU that has it
    natively, float16 on an older one; bf16 on such a GPU and unknown names are one-line config errors."""
    from clip3dreid_plugin.config import ConfigError

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    if got is None:
        with pytest.raises(ConfigError, match=r"^teacher.precision") as err:
            ct.resolve_teacher_precision(want, device)
        assert "\n" not in str(err.value)
    else:
        assert ct.resolve_teacher_precision(want, device) == got


def test_reduced_precision_teacher_agrees_with_float32_and_has_its_own_cache_fingerprint(tiny, teacher, images,
                                                                                        tmp_path):
    """The teacher in bfloat16 (what a GPU run gets): half-precision weights, float32 features close to float32's,
    the same descriptor labels on most pairs, and another fingerprint, so a float32 cache is not reused for it."""
    from clip3dreid_plugin.teacher.cache import fingerprint_diff, teacher_fingerprint

    name, weights, _ = tiny
    low = CLIPTeacher(name, weights, precision="bf16")
    assert teacher.precision == "fp32" and low.precision == "bf16"
    assert low.clip_model.visual.conv1.weight.dtype == torch.bfloat16
    x = _student_batch(images)
    ref, got = teacher.encode_images(x), low.encode_images(x)
    assert got.dtype == torch.float32
    assert float(F.cosine_similarity(got, ref).min()) > 0.99
    assert not torch.equal(got, ref)  # it really ran in bfloat16
    agree = (low.label(got) == teacher.label(ref)).float().mean()
    assert float(agree) > 0.9
    diff = fingerprint_diff(teacher_fingerprint(teacher, images), teacher_fingerprint(low, images))
    assert any(d.startswith("precision: 'fp32' -> 'bf16'") for d in diff), diff
    path = str(tmp_path / "c.pt")
    build_teacher_cache(teacher, images[:4], path, batch_size=4, progress=False)
    with pytest.raises(TeacherCacheStaleError, match="precision"):
        build_teacher_cache(low, images[:4], path, batch_size=4, progress=False, on_stale="error")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_teacher_in_half_precision_agrees_with_float32_and_the_cache_answers_on_the_gpu(tiny, teacher, images,
                                                                                             tmp_path):
    """On a GPU the teacher (teacher.precision auto) runs in bf16 or fp16: float32 features close to the CPU's
    float32 ones, mostly the same labels. A cache asked for a GPU batch answers from its GPU copy, bit for bit the
    CPU's rows."""
    name, weights, _ = tiny
    gpu = CLIPTeacher(name, weights, device="cuda", precision="auto")
    assert gpu.precision == ("bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16")
    x = _student_batch(images)
    ref = teacher.encode_images(x)
    got = gpu.encode_images(x.cuda())
    assert got.is_cuda and got.dtype == torch.float32
    assert float(F.cosine_similarity(got.cpu(), ref).min()) > 0.99
    assert float((gpu.label(got).cpu() == teacher.label(ref)).float().mean()) > 0.9
    cache = build_teacher_cache(teacher, images, str(tmp_path / "c.pt"), batch_size=8, progress=False)
    g_cpu, l_cpu = cache.lookup(images[3:9])
    g_gpu, l_gpu = cache.lookup(images[3:9], torch.device("cuda", torch.cuda.current_device()))
    assert g_gpu.is_cuda and l_gpu.is_cuda and l_gpu.dtype == torch.int64
    assert torch.equal(g_gpu.cpu(), g_cpu) and torch.equal(l_gpu.cpu(), l_cpu)


def test_standin_cache_has_a_fingerprint_of_its_own_and_is_never_taken_for_a_clip_cache(tiny, images, tmp_path):
    """The quickstart's stand-in teacher (synthcc's ground-truth labels with a CLIP's features) writes a file of its
    own whose fingerprint says where its labels came from: teacher.mode cache refuses it, teacher.mode stand-in
    refuses a CLIP cache, and building the CLIP cache over a stand-in file rebuilds it."""
    import os
    import re
    import shutil

    from clip3dreid_plugin.config.loader import ConfigError, load_config
    from clip3dreid_plugin.study.standin_teacher import STANDIN_LABELS, build_standin_cache, standin_cache_path
    from clip3dreid_plugin.teacher.cache import TeacherCacheStaleError, build_teacher_cache, fingerprint_diff
    from clip3dreid_plugin.teacher.source import build_teacher, build_teacher_source

    name, weights, _ = tiny
    cfg = load_config(None, ["teacher.name", name, "teacher.pretrained", weights, "teacher.cache_dir",
                             str(tmp_path / "cache"), "runtime.progress", "False", "teacher.batch_size", "8"])
    truth = torch.randint(0, 2, (len(images), 16), generator=torch.Generator().manual_seed(3))
    standin = build_standin_cache(cfg, images, truth)
    clip_path = cache_file_path(cfg.teacher.cache_dir, "synthcc", name, "tiny_seed0")
    clip = TeacherCache.load(clip_path)
    # Two files; the fingerprints differ in where the labels came from, and in nothing else.
    assert standin_cache_path(cfg) != clip_path and osp.isfile(standin_cache_path(cfg))
    assert fingerprint_diff(clip.fingerprint, standin.fingerprint) == [f"labels: None -> '{STANDIN_LABELS}'"]
    assert torch.equal(TeacherCache.load(standin_cache_path(cfg)).lookup(images)[1], truth.to(torch.uint8))
    assert torch.equal(standin.features, clip.features) and torch.equal(standin.text_features, clip.text_features)
    assert (clip.labels != truth.to(torch.uint8)).any()  # the CLIP cache keeps the teacher's own labels

    served = build_teacher_source(cfg.clone(), [("synthcc", images)])  # teacher.mode cache: the CLIP cache
    assert torch.equal(served.lookup(images)[1], clip.labels[clip.rows(images)].long())
    standin_cfg = cfg.clone()
    standin_cfg.teacher.mode = "stand-in"
    g, labels = build_teacher_source(standin_cfg, [("synthcc", images)]).lookup(images)
    assert torch.equal(labels, truth) and torch.equal(g, clip.features[clip.rows(images)])

    # A stand-in cache where the CLIP cache belongs (as the quickstart used to leave it): refused, then rebuilt.
    shutil.copy(standin_cache_path(cfg), clip_path)
    with pytest.raises(TeacherCacheMismatchError, match=f"labels come from {re.escape(STANDIN_LABELS)}"):
        build_teacher_source(cfg.clone(), [("synthcc", images)])
    teacher = build_teacher(cfg)
    with pytest.raises(TeacherCacheStaleError, match="labels"):
        build_teacher_cache(teacher, images, clip_path, on_stale="error", progress=False)
    rebuilt = build_teacher_cache(teacher, images, clip_path, progress=False)
    assert "labels" not in rebuilt.fingerprint and torch.equal(rebuilt.labels, clip.labels)
    # A CLIP cache where the stand-in's belongs: refused by teacher.mode stand-in.
    shutil.copy(clip_path, standin_cache_path(cfg))
    with pytest.raises(TeacherCacheMismatchError, match="labels come from the teacher, not from synthcc ground"):
        build_teacher_source(standin_cfg, [("synthcc", images)])
    # Another dataset, or no stand-in cache at all: one line saying what to do.
    with pytest.raises(ConfigError, match="synthcc's ground-truth labels only"):
        build_teacher_source(standin_cfg, [("ltcc", images)])
    os.remove(standin_cache_path(cfg))
    with pytest.raises(ConfigError, match="no stand-in cache .*--teacher stand-in"):
        build_teacher_source(standin_cfg, [("synthcc", images)])

"""utils/artefact.py: fingerprint, diff, the one stale policy, partial save and resume."""
from __future__ import annotations

import hashlib
import json
import logging
import os.path as osp

import numpy as np
import pytest
import torch

from clip3dreid_plugin.errors import InputError, UserError
from clip3dreid_plugin.utils.artefact import (SCHEME, PartialBuild, StaleArtefactError, apply_stale_policy,
                                              as_fingerprint, check_stale_policy, digest, fingerprint,
                                              fingerprint_diff)

INPUTS = {"seed": 3, "sigma": 1.25, "size": [128, 64], "body_model": {"female": "ab", "male": "cd"}, "name": "x"}


def test_digest_is_sha256_of_the_canonical_json_whatever_the_dict_order():
    reordered = {k: INPUTS[k] for k in reversed(list(INPUTS))}
    reordered["body_model"] = {"male": "cd", "female": "ab"}
    assert list(reordered) != list(INPUTS)
    text = '{"body_model":{"female":"ab","male":"cd"},"name":"x","seed":3,"sigma":1.25,"size":[128,64]}'
    assert digest(INPUTS) == digest(reordered) == hashlib.sha256(text.encode()).hexdigest()
    assert fingerprint(INPUTS) == fingerprint(reordered)
    # numpy values hash as the numbers they hold
    assert digest({"a": np.arange(3, dtype=np.int32), "b": np.float64(0.5)}) == digest({"a": [0, 1, 2], "b": 0.5})


@pytest.mark.parametrize("key,value", [("seed", 4), ("sigma", 1.2500001), ("size", [64, 128]), ("name", "y"),
                                       ("body_model", {"female": "ab", "male": "ce"}), ("extra", None)])
def test_any_changed_value_changes_the_fingerprint(key, value):
    changed = dict(INPUTS, **{key: value})
    assert digest(changed) != digest(INPUTS)
    assert fingerprint(changed) != fingerprint(INPUTS)


def test_fingerprint_is_plain_json_with_the_scheme_and_survives_a_round_trip(tmp_path):
    fp = fingerprint(dict(INPUTS, pairs=(("a", "b"),), arr=np.array([0.25, 0.5], dtype=np.float32)))
    assert fp["scheme"] == SCHEME == 2 and fp["pairs"] == [["a", "b"]] and fp["arr"] == [0.25, 0.5]
    assert json.loads(json.dumps(fp)) == fp
    torch.save({"fp": fp}, str(tmp_path / "f.pt"))
    assert torch.load(str(tmp_path / "f.pt"), weights_only=True)["fp"] == fp
    assert as_fingerprint(json.dumps(fp)) == fp
    with pytest.raises(ValueError, match="scheme"):
        fingerprint({"scheme": 1})
    with pytest.raises(TypeError, match="JSON-able"):
        fingerprint({"f": object()})


def test_diff_names_every_changed_key_old_to_new():
    old = fingerprint(INPUTS)
    new = fingerprint(dict(INPUTS, seed=4, name="y"))
    assert fingerprint_diff(old, new) == ["name: 'x' -> 'y'", "seed: 3 -> 4"]
    assert fingerprint_diff(old, old) == []
    assert fingerprint_diff(old, new, keys=["sigma", "seed"]) == ["seed: 3 -> 4"]
    assert fingerprint_diff(old, new, labels={"seed": "random seed"})[1] == "random seed: 3 -> 4"
    added = fingerprint(dict(INPUTS, pose_file="p.npz"))
    assert fingerprint_diff(old, added) == ["pose_file: None -> 'p.npz'"]


def test_diff_says_when_the_stored_fingerprint_is_of_an_older_scheme():
    new = fingerprint(INPUTS)
    bare = as_fingerprint("0123abcd" * 5)  # the SHA-1 hex digest the builders stored before
    assert bare == "0123abcd" * 5
    (line,) = fingerprint_diff(bare, new)
    assert "older plugin version" in line and "0123abcd" in line
    no_scheme = {k: v for k, v in new.items() if k != "scheme"}  # the teacher cache's dict before
    assert fingerprint_diff(no_scheme, new) == ["the stored fingerprint was made by an older plugin version "
                                                f"(scheme 1, now {SCHEME})"]


def test_policy_error_raises_naming_the_file_and_the_diff(tmp_path):
    path = str(tmp_path / "set" / "meta.json")
    diff = fingerprint_diff(fingerprint(INPUTS), fingerprint(dict(INPUTS, seed=4)))
    with pytest.raises(StaleArtefactError) as info:
        apply_stale_policy(path, diff, "error", "toy set", hint="Delete it")
    assert str(info.value) == f"toy set '{path}' is stale: seed: 3 -> 4. Delete it"
    assert info.value.path == path and info.value.diff == ["seed: 3 -> 4"]
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)

    class MyStale(StaleArtefactError):
        pass

    with pytest.raises(MyStale):
        apply_stale_policy(path, diff, "error", error=MyStale)


def test_policy_rebuild_logs_one_line_with_the_diff(tmp_path, caplog):
    path = str(tmp_path / "c.pt")
    diff = fingerprint_diff(fingerprint(INPUTS), fingerprint(dict(INPUTS, seed=4, sigma=2.0)))
    with caplog.at_level(logging.INFO, logger="clip3dreid_plugin.utils.artefact"):
        assert apply_stale_policy(path, diff, "rebuild", "toy set") is False
        assert apply_stale_policy(path, [], "rebuild", "toy set") is True  # up to date: nothing said
        assert apply_stale_policy(path, [], "error", "toy set") is True
    assert [r.getMessage() for r in caplog.records] == [
        f"toy set '{path}' is stale (seed: 3 -> 4; sigma: 1.25 -> 2.0); rebuilding"]


def test_only_rebuild_and_error_are_policies():
    assert check_stale_policy("rebuild", "x.on_stale") == "rebuild"
    with pytest.raises(InputError, match=r"x.on_stale must be one of rebuild\|error, got 'overwrite'"):
        check_stale_policy("overwrite", "x.on_stale")

    class Cfg(UserError, ValueError):
        pass

    with pytest.raises(Cfg):
        check_stale_policy("skip", "x.on_stale", Cfg)
    with pytest.raises(InputError):
        apply_stale_policy("f", ["a"], "ignore")


def _toy_build(path: str, items, fail_at=None, save_every=2, calls=None):
    """Squares ``items`` in order, resumable; raises KeyboardInterrupt on item index ``fail_at``."""
    partial = PartialBuild(path, fingerprint({"items": list(items)}), "toy build", save_every_s=0,
                           save_every=save_every)
    done, state = partial.resume()
    out = list(state.get("squares", []))[:done]
    with partial.saved_on_error(lambda: (len(out), {"squares": list(out)})):
        for i in range(done, len(items)):
            if i == fail_at:
                raise KeyboardInterrupt("simulated")
            if calls is not None:
                calls.append(i)
            out.append(items[i] ** 2)
            partial.step(len(out), lambda: {"squares": list(out)})
    partial.finish()
    return out


def test_interrupted_build_resumes_where_it_stopped_and_equals_an_uninterrupted_one(tmp_path):
    items = [3, 1, 4, 1, 5, 9, 2]
    ref = _toy_build(str(tmp_path / "ref"), items)
    path = str(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _toy_build(path, items, fail_at=5, save_every=2)
    saved = torch.load(path + ".partial", weights_only=True)
    assert saved["done"] == 5 and saved["state"]["squares"] == [9, 1, 16, 1, 25]  # saved on the interruption
    assert saved["fingerprint"] == fingerprint({"items": items})
    calls = []
    assert _toy_build(path, items, calls=calls) == ref == [x * x for x in items]
    assert calls == [5, 6] and not osp.exists(path + ".partial")


def test_periodic_saves_and_a_partial_of_other_inputs_is_discarded(tmp_path, caplog):
    items = [2, 3, 4, 5, 6]
    path = str(tmp_path / "a")
    pb = PartialBuild(path, fingerprint({"items": items}), save_every_s=0, save_every=2)
    written = []
    for n in range(1, 6):
        pb.step(n, lambda n=n: written.append(n) or {"n": n})
    assert written == [2, 4]  # every second step, state asked for only then
    assert torch.load(path + ".partial", weights_only=True)["done"] == 4
    with caplog.at_level(logging.WARNING, logger="clip3dreid_plugin.utils.artefact"):
        calls = []
        assert _toy_build(path, [7, 8], calls=calls) == [49, 64]
    assert calls == [0, 1]  # not resumed: other inputs
    assert any("made for other inputs" in r.getMessage() and "items: [2, 3, 4, 5, 6] -> [7, 8]" in r.getMessage()
               for r in caplog.records)


def test_an_unreadable_or_old_format_partial_is_ignored_saying_why(tmp_path, caplog):
    path = str(tmp_path / "a")
    with open(path + ".partial", "wb") as fh:
        fh.write(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="clip3dreid_plugin.utils.artefact"):
        assert PartialBuild(path, fingerprint({})).resume() == (0, {})
        torch.save({"format": 1, "done": 3, "fingerprint": {}}, path + ".partial")  # the teacher's old partial
        assert PartialBuild(path, fingerprint({})).resume() == (0, {})
    messages = [r.getMessage() for r in caplog.records]
    assert "unreadable" in messages[0] and path + ".partial" in messages[0]
    assert "older plugin version in another format" in messages[1]


def test_a_failed_save_does_not_mask_the_original_error(tmp_path, monkeypatch, caplog):
    pb = PartialBuild(str(tmp_path / "a"), fingerprint({}), save_every_s=0)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pb, "save", no_space)
    with caplog.at_level(logging.WARNING, logger="clip3dreid_plugin.utils.artefact"):
        with pytest.raises(RuntimeError, match="the build's own error"):
            with pb.saved_on_error(lambda: (3, {})):
                raise RuntimeError("the build's own error")
    assert any("could not save partial" in r.getMessage() and "No space" in r.getMessage() for r in caplog.records)

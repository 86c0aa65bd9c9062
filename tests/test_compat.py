"""Checkpoint save/load under torch >= 2.6 and the fail-fast image reader."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from clip3dreid_plugin import compat
from datasets_ext.image_io import ImageReadError, read_image


def test_old_torchreid_checkpoint_with_numpy_scalar_reloads(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "old.pth.tar"
    # torchreid's save_model stores rank1 as a numpy scalar; torch>=2.6 weights_only refuses it by default.
    torch.save({"state_dict": model.state_dict(), "epoch": 3, "rank1": np.float64(0.625)}, path)
    with pytest.raises(Exception):
        torch.load(path)
    ckpt = compat.load_checkpoint(str(path))
    assert ckpt["epoch"] == 3
    assert float(ckpt["rank1"]) == 0.625
    assert torch.equal(ckpt["state_dict"]["weight"], model.state_dict()["weight"])


def test_save_checkpoint_plain_types_and_none_scheduler(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = str(tmp_path / "sub" / "m.pth.tar-1")
    compat.save_checkpoint({"state_dict": model.state_dict(), "epoch": 1, "rank1": np.float32(0.5),
                            "optimizer": opt.state_dict(), "scheduler": None}, path)
    raw = torch.load(path, weights_only=True)  # plain torch, no allow-list needed
    assert raw["scheduler"] is None and isinstance(raw["rank1"], float) and raw["rank1"] == 0.5
    assert raw["optimizer"]["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert not [f for f in os.listdir(tmp_path / "sub") if f.endswith(".tmp")]


def test_load_checkpoint_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        compat.load_checkpoint(str(tmp_path / "nope.pth"))


def test_load_pretrained_weights_strips_module_prefix_and_rejects_mismatch(tmp_path):
    src = torch.nn.Sequential(torch.nn.Linear(3, 2))
    path = str(tmp_path / "w.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    dst = torch.nn.Sequential(torch.nn.Linear(3, 2))
    compat.load_pretrained_weights(dst, path)
    assert torch.equal(dst[0].weight, src[0].weight)
    with pytest.raises(compat.CheckpointError, match="no layer"):
        compat.load_pretrained_weights(torch.nn.Sequential(torch.nn.Linear(5, 5)), path)


def test_read_image_fails_fast_with_path(tmp_path):
    bad = tmp_path / "broken_c1.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageReadError, match="broken_c1.jpg"):
        read_image(str(bad))
    with pytest.raises(ImageReadError, match="missing.jpg"):
        read_image(str(tmp_path / "missing.jpg"))

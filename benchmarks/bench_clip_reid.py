#!/usr/bin/env python
"""CLIP-ReID's costs: a stage-2 training step of ``clip_reid`` (ViT-B/16, RN50) against torchreid's ResNet-50 step,
and the one-off stage-1 pass over the training set.

Example::

    PYTHONPATH=. python benchmarks/bench_clip_reid.py                       # batch 64 at 256x128, CPU or GPU
    PYTHONPATH=. python benchmarks/bench_clip_reid.py --batch-size 16 --repeats 3 --json out.json

Rows, all with random weights (weights do not change the cost) and one fixed random batch:

* ``torchreid resnet50``: torchreid's ``ImageSoftmaxEngine.forward_backward`` with its ResNet-50 (last stride 2)
  and Adam, the partner recipes' step.
* ``clip_reid <backbone> stage 2``: :meth:`CLIPReIDEngine.forward_backward` (ID loss on both classifiers, triplet
  on three features, image-to-text cross-entropy against the identities' text features), with the optimiser its
  builder makes (Adam, biases x2), as ``clip3dreid-train`` runs it.
* ``clip_reid <backbone> stage-1 feature pass``: ``image_projection`` of one batch under ``no_grad`` in eval mode,
  what stage 1 runs once per training image; reported as seconds per batch and as the whole pass over Market-1501's
  12,936 and MSMT17's 32,621 training images (image decoding not included).

The training rows are timed round-robin (one step each per round, after ``--warmup`` rounds), so that load from
other processes falls on all rows alike; medians are reported with the ratio to torchreid's step. Compare ratios
rather than absolute times on a shared machine.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys

import torch

TRAIN_IMAGES = {"Market-1501": 12936, "MSMT17": 32621}


def _clip_reid_engine(backbone: str, num_pids: int, h: int, w: int, device: torch.device):
    from clip3dreid_plugin.config.defaults import get_cfg
    from clip3dreid_plugin.engine.clip_reid_engine import CLIPReIDEngine, stage2_param_groups
    from clip3dreid_plugin.models.clip_reid import clip_reid
    from clip3dreid_plugin.tools.benchmark import _FakeDataManager

    cfg = get_cfg()
    cfg.clip_reid.clip_model = backbone
    cfg.data.height, cfg.data.width = h, w
    model = clip_reid(num_pids, pretrained=False, cfg=cfg).to(device)
    optimizer = torch.optim.Adam(stage2_param_groups(model, 5e-6, 1e-4, 2.0, 1e-4))
    prompts = torch.optim.Adam(model.prompt_learner.parameters(), lr=3.5e-4)
    engine = CLIPReIDEngine(_FakeDataManager(num_pids), model, optimizer, prompts, use_gpu=device.type == "cuda",
                            stage1_epochs=0, device=device, show_progress=False)
    engine.text_bank = engine.identity_text_features()
    model.train()
    return engine, model


def run_benchmark(batch_size: int, height: int, width: int, device: torch.device, repeats: int, warmup: int,
                  backbones=("ViT-B-16-quickgelu", "RN50-quickgelu")) -> dict:
    """The rows of the module docstring as ``{row: {median_s, min_s, ...}}`` plus ``feature_pass``."""
    import torchreid

    from clip3dreid_plugin.tools.benchmark import _FakeDataManager, _adam, time_interleaved, time_it

    num_pids = max(batch_size // 4, 2)
    g = torch.Generator().manual_seed(0)
    batch = {"img": torch.randn(batch_size, 3, height, width, generator=g).to(device),
             "pid": (torch.arange(batch_size) // 4 % num_pids).to(device),
             "camid": torch.zeros(batch_size, dtype=torch.long).to(device)}
    steps = {}
    resnet = torchreid.models.resnet.ResNet(num_pids, "softmax", block=torchreid.models.resnet.Bottleneck,
                                            layers=[3, 4, 6, 3], last_stride=2).to(device)
    ref = torchreid.engine.ImageSoftmaxEngine(_FakeDataManager(num_pids), resnet, _adam(resnet),
                                              use_gpu=device.type == "cuda")
    resnet.train()
    steps["torchreid resnet50 (last stride 2)"] = functools.partial(ref.forward_backward, batch)
    models = {}
    for backbone in backbones:
        engine, model = _clip_reid_engine(backbone, num_pids, height, width, device)
        steps[f"clip_reid {backbone} stage 2"] = functools.partial(engine.forward_backward, batch)
        models[backbone] = model
    out = time_interleaved(steps, repeats, warmup, device)
    base = out["torchreid resnet50 (last stride 2)"]["median_s"]
    for r in out.values():
        r["images_per_s"] = batch_size / r["median_s"]
        r["time_vs_resnet50"] = r["median_s"] / base
    passes = {}
    for backbone, model in models.items():
        model.eval()

        def features(model=model):
            with torch.no_grad():
                model.image_projection(batch["img"])

        t = time_it(features, repeats, warmup, device)
        t["whole_pass_s"] = {name: n / batch_size * t["median_s"] for name, n in TRAIN_IMAGES.items()}
        passes[backbone] = t
    return {"train": out, "feature_pass": passes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    import clip3dreid_plugin

    clip3dreid_plugin.register()
    res = run_benchmark(args.batch_size, args.height, args.width, torch.device(args.device), args.repeats,
                        args.warmup)
    print(f"batch {args.batch_size} at {args.height}x{args.width}, {args.device}, {torch.get_num_threads()} threads")
    print("| training step | s/iter (median) | min | images/s | x resnet50 |\n|---|---|---|---|---|")
    for k, r in res["train"].items():
        print(f"| {k} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['images_per_s']:.1f} | "
              f"{r['time_vs_resnet50']:.2f} |")
    print("\n| stage-1 feature pass | s/batch (median) | " + " | ".join(f"{n} ({c} images), s" for n, c in
                                                                 TRAIN_IMAGES.items()) + " |")
    print("|---|---|" + "---|" * len(TRAIN_IMAGES))
    for k, r in res["feature_pass"].items():
        print(f"| {k} | {r['median_s']:.3f} | " + " | ".join(f"{v:.0f}" for v in r["whole_pass_s"].values())
              + " |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

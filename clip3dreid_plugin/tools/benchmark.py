"""Throughput benchmark, all on one device in one run (``clip3dreid-benchmark``).

Measures, with medians over repeats after warm-up:

* training images/s of torchreid's own ``resnet50`` with torchreid's ``ImageSoftmaxEngine``
  (default last stride 2, and last stride 1 = the student's trunk), and of ``clip3dreid`` with the
  cached teacher and with the online teacher, at the same batch size and resolution;
* teacher labelling throughput (images/s through ``CLIPTeacher.encode_images`` + ``label``);
* evaluation time of the plugin's evaluator (general + CC) against torchreid's ``evaluate_rank``.

Every training step is a real ``engine.forward_backward(batch)`` on a fixed in-memory batch, so data
loading is excluded and the numbers compare model + loss + optimizer work only.
"""
from __future__ import annotations

import functools
import logging
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from clip3dreid_plugin.tools.common import CLIParser, cli_main
from clip3dreid_plugin.utils.io import atomic_write_json
from clip3dreid_plugin.utils.runtime import DEVICE_HELP

logger = logging.getLogger(__name__)

__all__ = ["main", "time_it", "time_interleaved", "train_step_benchmarks"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_memory(device: torch.device, reset: bool = True) -> Optional[int]:
    """Bytes the CUDA caching allocator held at most since the last reset (None off CUDA); resets the count."""
    if device.type != "cuda":
        return None
    peak = int(torch.cuda.max_memory_allocated(device))
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return peak


def time_it(fn: Callable[[], None], repeats: int, warmup: int, device: torch.device) -> Dict[str, float]:
    """Median / min / max seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: List[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def time_interleaved(fns: Dict[str, Callable[[], None]], repeats: int, warmup: int,
                     device: torch.device) -> Dict[str, Dict[str, float]]:
    """Like :func:`time_it` for several functions, called round-robin (one call each per round).

    Returns:
        name -> ``{'median_s', 'min_s', 'max_s', 'repeats'}``.
    """
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "repeats": repeats}
            for name, t in times.items()}


def _adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer of every timed row: torchreid's Adam at the recipes' learning rate."""
    # torchreid warns when first imported: after main's quiet_torchreid_warnings()
    import torchreid

    return torchreid.optim.build_optimizer(model, optim="adam", lr=3.5e-4)


def _step(engine, batch: dict) -> Callable[[], None]:
    # A partial rather than a lambda keeps the engine reachable (``step.func.__self__``) for tests.
    return functools.partial(engine.forward_backward, batch)


class _FakeDataManager:
    """The attributes torchreid's ``Engine.__init__`` reads; batches are fed directly."""

    def __init__(self, num_pids: int):
        self.train_loader = []
        self.test_loader = {}
        self.num_train_pids = num_pids
        self.sources = []


def _batch(bs: int, h: int, w: int, num_pids: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "img": torch.randn(bs, 3, h, w, generator=g).to(device),
        "pid": (torch.arange(bs) // 4 % num_pids).to(device),
        # Two outfits per identity (CAL's row reads them): identity p wears outfits 2p and 2p + 1.
        "clothes_id": (torch.arange(bs) // 4 % num_pids * 2 + torch.arange(bs) % 2).to(device),
        "impath": [f"/bench/img_{i:05d}.jpg" for i in range(bs)],
    }


def _synthetic_3d(body_dir: str, synthetic_dir: str, bs: int, h: int, w: int, ratio: float, device: torch.device):
    """A fixed synthetic batch stream and the L_3D module for the 3D-term row."""
    # torchreid warns when first imported: after main's quiet_torchreid_warnings()
    import torchreid

    from clip3dreid_plugin.body.genders import GENDER_IDS
    from clip3dreid_plugin.body.smpl_io import load_body_model
    from clip3dreid_plugin.data.meshset import SyntheticMeshDataset, synthetic_batch_size
    from clip3dreid_plugin.losses.shape3d import ShapeLoss

    _, tf = torchreid.data.transforms.build_transforms(h, w, transforms=None)
    ds = SyntheticMeshDataset(synthetic_dir, transform=tf)
    n = synthetic_batch_size(bs, ratio)
    items = [ds[i % len(ds)] for i in range(n)]
    batch = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}
    models = {GENDER_IDS[g]: load_body_model(body_dir, g, device=str(device)) for g in ("female", "male", "neutral")}
    return iter(lambda: batch, None), ShapeLoss(models[GENDER_IDS["neutral"]], models), n


def clip3dreid_step(cfg, num_pids: int, batch: dict, source, device: torch.device, nhwc: bool,
                    synthetic=None, shape_loss=None) -> Callable[[], None]:
    """One CLIP3DReID training step on ``batch``, built as ``clip3dreid-train`` builds it (Adam, NHWC when asked).

    With ``synthetic`` (a batch stream) and ``shape_loss`` the step includes the 3D term.
    """
    # torchreid warns when first imported: after main's quiet_torchreid_warnings()
    from clip3dreid_plugin.engine.clip3dreid_engine import CLIP3DReIDEngine, LossSwitches
    from clip3dreid_plugin.losses import OTLoss
    from clip3dreid_plugin.models.clip3dreid import clip3dreid

    model = clip3dreid(num_pids, pretrained=False, cfg=cfg).to(device)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    with_3d = synthetic is not None
    engine = CLIP3DReIDEngine(_FakeDataManager(num_pids), model, _adam(model), teacher=source,
                              switches=LossSwitches(use_3d=with_3d), ot_loss=OTLoss(), use_gpu=device.type == "cuda",
                              synthetic=synthetic, shape_loss=shape_loss if with_3d else None, channels_last=nhwc)
    model.train()
    return _step(engine, batch)


def cal_step(num_pids: int, batch: dict, device: torch.device) -> Callable[[], None]:
    """One CAL training step on ``batch`` with both clothes terms on (clothes step, then the adversarial term),
    built as ``clip3dreid-train`` builds it: Adam for the network, a second Adam for the clothes classifier."""
    # torchreid warns when first imported: after main's quiet_torchreid_warnings()
    from clip3dreid_plugin.engine.cal_engine import CALEngine
    from clip3dreid_plugin.engine.trainer import without_engine_optimised
    from clip3dreid_plugin.models.cal import cal

    model = cal(num_pids, pretrained=False, num_clothes=2 * num_pids).to(device)
    optimizer = without_engine_optimised(_adam(model), model)
    outfits = torch.zeros(num_pids, 2 * num_pids, dtype=torch.bool)
    outfits[torch.arange(num_pids), 2 * torch.arange(num_pids)] = True
    outfits[torch.arange(num_pids), 2 * torch.arange(num_pids) + 1] = True
    clothes_optimizer = torch.optim.Adam(model.clothes_classifier.parameters(), lr=3.5e-4, weight_decay=5e-4)
    engine = CALEngine(_FakeDataManager(num_pids), model, optimizer, clothes_optimizer, outfits,
                       use_gpu=device.type == "cuda", start_epoch_cc=0, start_epoch_adv=0)
    model.train()
    return _step(engine, batch)


def train_step_benchmarks(bs: int, h: int, w: int, device: torch.device, teacher_name: str, repeats: int,
                          warmup: int, online: bool = True, body_dir: str = "", synthetic_dir: str = "",
                          synthetic_ratio: float = 0.25) -> Dict[str, Dict[str, float]]:
    """Seconds per training iteration of the baselines, CAL and CLIP3DReID (cached / online teacher, 3D term)."""
    # torchreid warns when first imported: after main's quiet_torchreid_warnings()
    import torchreid

    from clip3dreid_plugin.config.defaults import get_cfg
    from clip3dreid_plugin.teacher.cache import TeacherCache
    # the teacher's stack (open_clip) only for the labelling rows
    from clip3dreid_plugin.teacher.clip_teacher import CLIPTeacher
    from clip3dreid_plugin.teacher.source import CacheTeacherSource, OnlineTeacherSource

    num_pids = max(bs // 4, 2)
    use_gpu = device.type == "cuda"
    dm = _FakeDataManager(num_pids)
    batch = _batch(bs, h, w, num_pids, device)

    # Every row's engine is built first and the rows are timed round-robin, one step each per round, so
    # that load from other processes on a shared machine falls on all rows alike.
    steps: Dict[str, Callable[[], None]] = {}
    # torchreid as it ships (NCHW), then the same trunk in the NHWC layout the plugin trains in by default,
    # to show how much of the difference is the layout alone.
    for label, last_stride, nhwc in (("torchreid resnet50 (last stride 2)", 2, False),
                                     ("torchreid resnet50 (last stride 1)", 1, False),
                                     ("torchreid resnet50 (last stride 2), channels_last model", 2, True)):
        model = torchreid.models.resnet.ResNet(num_pids, "softmax", block=torchreid.models.resnet.Bottleneck,
                                               layers=[3, 4, 6, 3], last_stride=last_stride).to(device)
        if nhwc:
            model = model.to(memory_format=torch.channels_last)
        engine = torchreid.engine.ImageSoftmaxEngine(dm, model, _adam(model), use_gpu=use_gpu)
        model.train()
        steps[label] = _step(engine, batch)

    teacher = CLIPTeacher(teacher_name, None, device=str(device), precision="auto")  # what a run on it uses
    cfg = get_cfg()
    cfg.clip3dreid.teacher_dim = teacher.embed_dim
    g = torch.nn.functional.normalize(torch.randn(bs, teacher.embed_dim), dim=1)
    cache = TeacherCache(batch["impath"], g, teacher.label(g.to(device)).cpu(),
                         teacher.descriptor_text_features().cpu(), {"teacher": teacher_name})
    # The paper's student uses last stride 1 (9.12 GMACs at 384x192); last stride 2 matches torchreid's default trunk.
    # Rows follow the plugin's defaults (runtime.channels_last) unless they say otherwise.
    nhwc_default = bool(cfg.runtime.channels_last)
    sources = [("clip3dreid (last stride 1), cached teacher", CacheTeacherSource(cache), 1, nhwc_default),
               ("clip3dreid (last stride 1), cached teacher, runtime.channels_last False", CacheTeacherSource(cache),
                1, False),
               ("clip3dreid (last stride 2), cached teacher", CacheTeacherSource(cache), 2, nhwc_default)]
    if online:
        sources.append((f"clip3dreid (last stride 1), online teacher ({teacher_name})", OnlineTeacherSource(teacher),
                        1, nhwc_default))
    if body_dir and synthetic_dir:
        stream, shape_loss, n_syn = _synthetic_3d(body_dir, synthetic_dir, bs, h, w, synthetic_ratio, device)
        sources.append((f"clip3dreid (last stride 1), cached teacher + 3D term (+{n_syn} synthetic)",
                        CacheTeacherSource(cache), 1, nhwc_default))
    for label, source, last_stride, nhwc in sources:
        cfg.clip3dreid.last_stride = last_stride
        with_3d = "3D term" in label
        steps[label] = clip3dreid_step(cfg, num_pids, batch, source, device, nhwc,
                                       synthetic=stream if with_3d else None,
                                       shape_loss=shape_loss if with_3d else None)
    # CAL in torchreid's NCHW layout, like the torchreid rows (it has no channels_last option).
    steps["cal (last stride 1), both clothes terms"] = cal_step(num_pids, batch, device)
    out = time_interleaved(steps, repeats, warmup, device)
    for r in out.values():
        r["images_per_s"] = bs / r["median_s"]
    base = out["torchreid resnet50 (last stride 2)"]["median_s"]
    base1 = out["torchreid resnet50 (last stride 1)"]["median_s"]
    for r in out.values():
        r["time_vs_resnet50"] = r["median_s"] / base
        r["time_vs_resnet50_ls1"] = r["median_s"] / base1
    return out


def labelling_benchmark(teacher_name: str, bs: int, h: int, w: int, device: torch.device, repeats: int,
                        warmup: int) -> Dict[str, float]:
    """Teacher labelling throughput on student-sized batches, in the precision a run on ``device`` uses
    (``teacher.precision auto``)."""
    # the teacher's stack (open_clip) only for the labelling rows
    from clip3dreid_plugin.teacher.clip_teacher import CLIPTeacher

    teacher = CLIPTeacher(teacher_name, None, device=str(device), precision="auto")
    x = torch.randn(bs, 3, h, w, device=device)

    @torch.no_grad()
    def step():
        teacher.label(teacher.encode_images(x))

    r = time_it(step, repeats, warmup, device)
    r["images_per_s"] = bs / r["median_s"]
    r["precision"] = teacher.precision
    return r


def eval_benchmark(nq: int, ng: int, device: torch.device, repeats: int, torchreid_repeats: int) -> Dict:
    """Plugin evaluator (general + CC, one ranking) vs torchreid's Python ``evaluate_rank``."""
    # torchreid warns when first imported: after main's quiet_torchreid_warnings()
    import torchreid

    from clip3dreid_plugin.evaluation import evaluate_all

    rng = np.random.default_rng(0)
    num_ids = max(nq // 3, 2)
    q_pids, g_pids = rng.integers(0, num_ids, nq), rng.integers(0, num_ids, ng)
    q_cams, g_cams = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    q_cl, g_cl = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    dist = rng.random((nq, ng)).astype(np.float32)
    dist_t = torch.as_tensor(dist, device=device)
    out = {"size": f"{nq}x{ng}"}
    out["plugin general+cc"] = time_it(
        lambda: evaluate_all(dist_t, q_pids, g_pids, q_cams, g_cams, q_cl, g_cl, modes=("general", "cc")),
        repeats, 1, device)
    out["torchreid evaluate_rank"] = time_it(
        lambda: torchreid.metrics.evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, use_metric_cuhk03=False,
                                                use_cython=False),
        torchreid_repeats, 0, torch.device("cpu"))
    out["speedup"] = out["torchreid evaluate_rank"]["median_s"] / out["plugin general+cc"]["median_s"]
    return out


def _table(res: Dict) -> str:
    lines = ["| training step | s/iter (median) | images/s | x resnet50 (ls2) | x resnet50 (ls1) |",
             "|---|---|---|---|---|"]
    for k, r in res["train"].items():
        lines.append(f"| {k} | {r['median_s']:.3f} | {r['images_per_s']:.1f} | {r['time_vs_resnet50']:.2f} | "
                     f"{r['time_vs_resnet50_ls1']:.2f} |")
    lab = res["labelling"]
    lines += ["", "| teacher labelling | s/batch (median) | images/s |", "|---|---|---|",
              f"| {res['config']['teacher']} ({lab.get('precision', 'fp32')}) | {lab['median_s']:.3f} | "
              f"{lab['images_per_s']:.1f} |"]
    ev = res["eval"]
    lines += ["", f"| evaluation {ev['size']} | s (median) |", "|---|---|",
              f"| plugin evaluate_all (general + cc) | {ev['plugin general+cc']['median_s']:.3f} |",
              f"| torchreid evaluate_rank (general) | {ev['torchreid evaluate_rank']['median_s']:.3f} |",
              f"| speed-up | {ev['speedup']:.1f}x |"]
    return "\n".join(lines)


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = CLIParser(description="Training, labelling and evaluation throughput on one device.")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--teacher", default="ViT-L-14-quickgelu", help="open_clip name (random init is fine)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-online", action="store_true", help="skip the online-teacher training step")
    p.add_argument("--eval-size", type=int, nargs=2, default=[2000, 20000], metavar=("Q", "G"))
    p.add_argument("--torchreid-eval-repeats", type=int, default=1)
    p.add_argument("--body-model", default="", help="with --synthetic-dir: also time a step with the 3D term")
    p.add_argument("--synthetic-dir", default="", help="a rendered synthetic set (clip3dreid-render-meshset)")
    p.add_argument("--synthetic-ratio", type=float, default=0.25)
    p.add_argument("--json", default="", help="write the results as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # after parsing: --help answers before torch's set-up
    from clip3dreid_plugin.utils.runtime import quiet_torchreid_warnings, resolve_device

    quiet_torchreid_warnings()
    device = resolve_device(args.device)
    res = {"config": {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "",
                      "batch_size": args.batch_size, "size": f"{args.height}x{args.width}",
                      "teacher": args.teacher, "torch": torch.__version__, "threads": torch.get_num_threads()}}
    _peak_memory(device)
    res["train"] = train_step_benchmarks(args.batch_size, args.height, args.width, device, args.teacher,
                                         args.repeats, args.warmup, online=not args.no_online,
                                         body_dir=args.body_model, synthetic_dir=args.synthetic_dir,
                                         synthetic_ratio=args.synthetic_ratio)
    # The peaks of the sections (GPU only, else None): the training rows share one figure, the largest of them.
    res["peak_memory_bytes"] = {"train": _peak_memory(device)}
    res["labelling"] = labelling_benchmark(args.teacher, args.batch_size, args.height, args.width, device,
                                           args.repeats, args.warmup)
    res["peak_memory_bytes"]["labelling"] = _peak_memory(device)
    res["eval"] = eval_benchmark(args.eval_size[0], args.eval_size[1], device, args.repeats,
                                 args.torchreid_eval_repeats)
    res["peak_memory_bytes"]["eval"] = _peak_memory(device)
    print(_table(res))
    if args.json:
        atomic_write_json(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

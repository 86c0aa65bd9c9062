"""Multi-process correctness that needs no GPU: one model at evaluation (rank 0's BN statistics on every rank), a
synthetic stream per rank re-seeded every epoch, DDP only around a model that trains and with the gradients of one
process, SyncBatchNorm conversion that keeps frozen tensors frozen."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision.transforms as T

from clip3dreid_plugin.body.procedural import write_procedural_smpl
from clip3dreid_plugin.body.meshset import render_synthetic_set
from clip3dreid_plugin.data.meshset import SyntheticMeshDataset, SyntheticStream, synthetic_batch_size
from clip3dreid_plugin.models import MODEL_FACTORIES
from clip3dreid_plugin.utils.distributed import broadcast_buffers

pytestmark = pytest.mark.slow  # trains models end to end or starts processes


def _broadcast_worker(rank: int, store: str, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
        model[1].running_mean.fill_(rank + 1.0)  # each rank's own statistics, as after the last DDP step
        model[1].running_var.fill_(10.0 * (rank + 1))
        n = broadcast_buffers(model)
        out.put((rank, n, model[1].running_mean.tolist(), model[1].running_var.tolist()))
    finally:
        dist.destroy_process_group()


def test_broadcast_buffers_gives_every_rank_rank0s_statistics(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_broadcast_worker, args=(r, str(tmp_path / "store"), out)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [g[1] for g in got] == [3, 3]  # running_mean, running_var, num_batches_tracked
    assert all(g[2] == [1.0, 1.0, 1.0] and g[3] == [10.0, 10.0, 10.0] for g in got), got
    assert broadcast_buffers(torch.nn.BatchNorm1d(2)) == 0  # a single process has nothing to do


def test_synthetic_stream_differs_per_rank_and_epoch_and_repeats_for_the_same(tmp_path):
    body = write_procedural_smpl(str(tmp_path / "body"), num_vertices=400)
    render_synthetic_set(body, str(tmp_path / "syn"), num_female=3, num_male=3, poses_per_subject=1, height=32,
                         width=16, show_progress=False)
    ds = SyntheticMeshDataset(str(tmp_path / "syn"), transform=T.ToTensor())

    def first_betas(rank: int, epoch: int) -> torch.Tensor:
        stream = SyntheticStream(ds, batch_size=3, seed=7, rank=rank)
        stream.set_epoch(epoch)
        return torch.cat([next(stream)["betas"] for _ in range(2)])

    assert torch.equal(first_betas(0, 0), first_betas(0, 0))
    assert not torch.equal(first_betas(0, 0), first_betas(1, 0))
    assert not torch.equal(first_betas(0, 0), first_betas(0, 1))
    # Each pass over the set is a permutation: two batches of 3 from 6 bodies hold every body once.
    assert sorted(first_betas(1, 3)[:, 0].tolist()) == sorted(ds.betas[:, 0].tolist())
    # A training loader: its workers outlive a pass unless told not to; pinned batches when asked (CUDA runs).
    assert SyntheticStream(ds, 3, workers=1).loader.persistent_workers
    assert not SyntheticStream(ds, 3, workers=1, persistent_workers=False).loader.persistent_workers
    assert SyntheticStream(ds, 3, pin_memory=True).loader.pin_memory and not SyntheticStream(ds, 3).loader.pin_memory


def _synthetic_worker(rank: int, store: str, folder: str, out):
    from types import SimpleNamespace

    from clip3dreid_plugin.config import get_cfg
    from clip3dreid_plugin.data.meshset import build_synthetic_stream

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        cfg = get_cfg()
        cfg.body.synthetic_dir, cfg.train.batch_size, cfg.body.synthetic_ratio = folder, 6, 0.5
        cfg.train.seed, cfg.data.workers = 3, 0
        stream = build_synthetic_stream(cfg, SimpleNamespace(transform_tr=T.ToTensor()))
        stream.set_epoch(0)
        imgs = next(stream)["img"]  # the same step on both ranks
        gathered = [torch.empty_like(imgs) for _ in range(2)]
        dist.all_gather(gathered, imgs)
        out.put((rank, [g.tolist() for g in gathered]))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_draw_different_synthetic_images_in_the_same_step(tmp_path):
    """The engine's own stream builder under a real 2-process group: rank 0's and rank 1's first synthetic batch
    differ (they would be W copies of one batch if the stream were seeded by train.seed alone)."""
    body = write_procedural_smpl(str(tmp_path / "body"), num_vertices=400)
    render_synthetic_set(body, str(tmp_path / "syn"), num_female=4, num_male=4, poses_per_subject=1, height=32,
                         width=16, show_progress=False)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_synthetic_worker, args=(r, str(tmp_path / "store"), str(tmp_path / "syn"), out))
             for r in range(2)]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    rank0, rank1 = (torch.tensor(x) for x in got[0])
    assert rank0.shape[0] == synthetic_batch_size(6, 0.5) < 8  # a batch, not the whole set
    assert torch.equal(torch.tensor(got[1][0]), rank0)  # both ranks gathered the same pair
    assert not torch.equal(rank0, rank1)


def test_a_model_with_nothing_to_train_is_not_wrapped_in_ddp():
    from clip3dreid_plugin.engine.common import unwrap
    from clip3dreid_plugin.engine.trainer import wrap_for_training

    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    # No process group exists here: constructing DDP would fail, so returning the module proves it was not tried.
    assert wrap_for_training(frozen, distributed=True, trainable=False, device=torch.device("cpu")) is frozen
    compiled = wrap_for_training(frozen, distributed=False, trainable=False, device=torch.device("cpu"),
                                 compile_model=True)
    assert compiled is not frozen and unwrap(compiled) is frozen


# (model name, config overrides): every registered model, and the student with each head option that adds a tensor.
_SYNC_BN_CASES = [(name, []) for name in sorted(MODEL_FACTORIES)] + [
    ("clip3dreid", ["clip3dreid.bnneck", "True"]),
    ("clip3dreid", ["clip3dreid.bnneck", "True", "clip3dreid.fixed_text_head", "True"]),
]


@pytest.mark.parametrize("name, opts", _SYNC_BN_CASES)
def test_sync_batchnorm_conversion_keeps_every_tensor_what_it_was(tmp_path, name, opts):
    """runtime.sync_bn's conversion, on the CPU (it needs no GPU and no process group): every batch norm becomes a
    SyncBatchNorm, a buffer stays a buffer (the BN-neck's bias, which torch's own conversion fails on), requires_grad
    and values are unchanged, the checkpoint keys too, and the converted model computes the same outputs."""
    import copy

    from torchreid.reid.utils.torchtools import open_all_layers

    from clip3dreid_plugin.config import get_cfg
    from clip3dreid_plugin.models.build import build_model
    from clip3dreid_plugin.utils.distributed import convert_sync_batchnorm
    from fixtures.tiny_clip import register_tiny_reid_clips, tiny_clip

    clip_name, weights = tiny_clip(str(tmp_path))
    reid_vit, _ = register_tiny_reid_clips(str(tmp_path))
    cfg = get_cfg()
    # The input below is 64x32: clip_reid sizes its positional embeddings from data.height / data.width.
    cfg.merge_from_list(["data.height", "64", "data.width", "32", "clip_reid.clip_model", reid_vit])
    cfg.merge_from_list(["model.name", name, "model.pretrained", "False", "clip3dreid.backbone", "resnet18",
                         "clip3dreid.local_dim", "64", "clip3dreid.agg_hidden_dim", "16", "clip3dreid.head_hidden_dim",
                         "16", "clip3dreid.teacher_dim", "64", "teacher.name", clip_name, "teacher.pretrained", weights,
                         *opts])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=5, use_gpu=False)
    reference = copy.deepcopy(model)
    kinds = {n: ("parameter", p.requires_grad) for n, p in model.named_parameters()}
    kinds.update({n: ("buffer", b.requires_grad) for n, b in model.named_buffers()})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())

    converted = convert_sync_batchnorm(model)
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) == n_bn
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(m, torch.nn.SyncBatchNorm)
                   for m in converted.modules())
    after = {n: ("parameter", p.requires_grad) for n, p in converted.named_parameters()}
    after.update({n: ("buffer", b.requires_grad) for n, b in converted.named_buffers()})
    assert after == kinds
    assert converted.state_dict().keys() == state.keys()
    for k, v in converted.state_dict().items():
        assert torch.equal(v, state[k]), k
    if "clip3dreid.bnneck" in opts:
        assert isinstance(converted.bnneck, torch.nn.SyncBatchNorm) and kinds["bnneck.bias"] == ("buffer", False)
        open_all_layers(converted)  # what torchreid's engines do every epoch: the bias must stay out of reach
        assert "bnneck.bias" not in dict(converted.named_parameters())

    x = torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(x), reference.eval()(x), rtol=0, atol=0)
        if name not in ("clip_zeroshot",):  # evaluation-only
            # Training mode outside a process group normalises with the batch's statistics, as batch norm does.
            got, want = converted.train()(x), reference.train()(x)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            for (k, v), (_, w) in zip(converted.state_dict().items(), reference.state_dict().items()):
                assert torch.equal(v, w), k  # the running statistics moved alike


def test_sync_bn_on_a_cpu_torchrun_is_a_one_line_config_error(monkeypatch, tmp_path):
    """torch refuses SyncBatchNorm on CPU tensors only at the first training forward, with its own ValueError; the
    train command stops before the process group forms and names the option."""
    from clip3dreid_plugin.config import ConfigError
    from clip3dreid_plugin.tools import train_net

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    args = train_net.build_parser().parse_args(["--device", "cpu", "--output-dir", str(tmp_path),
                                                "data.root", str(tmp_path), "runtime.sync_bn", "True"])
    with pytest.raises(ConfigError, match=r"^runtime.sync_bn True needs CUDA") as err:
        train_net.build(train_net.setup_cfg(args))
    assert "\n" not in str(err.value)
    assert not dist.is_initialized()


def _student_batch(step: int, part: int):
    """The images, identities, text features and teacher features of one half of one step's batch."""
    g = torch.Generator().manual_seed(100 * step + part)
    return (torch.randn(4, 3, 32, 16, generator=g), torch.randint(0, 5, (4,), generator=g),
            torch.randn(4, 3, 8, generator=g), torch.randn(4, 8, generator=g))


def _student_loss(model, batch) -> torch.Tensor:
    """The engine's default terms (CE, L_OT, L_global); phi gets no gradient without the 3D term."""
    from clip3dreid_plugin.losses import OTLoss, global_distill_loss

    x, pids, text, teacher = batch
    out = model(x, text_feats=text, teacher_feats=teacher, return_dict=True)
    return (torch.nn.functional.cross_entropy(out["logits"], pids, label_smoothing=0.1)
            + 0.3 * OTLoss()(out["local"], out["text_proj"]) + 0.5 * global_distill_loss(out["teacher_proj"],
                                                                                      out["f_id"]))


def _small_student():
    from clip3dreid_plugin.models.clip3dreid import CLIP3DReID

    torch.manual_seed(0)
    return CLIP3DReID(5, backbone="resnet18", local_dim=16, agg_hidden_dim=8, head_hidden_dim=8, teacher_dim=8).train()


def _ddp_gradient_worker(rank: int, store: str, out, ddp_kwargs, steps: int):
    """Trains under DDP; rank 0 also computes, before each step, the single-process gradient from the same weights:
    the mean of the two half batches' gradients. Reports per step the largest deviation and the gradient-less
    parameters, and a checksum of the gradients so that the ranks can be compared."""
    from clip3dreid_plugin.engine.trainer import wrap_for_training

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = _small_student()
        ddp = wrap_for_training(model, distributed=True, trainable=True, device=torch.device("cpu"),
                                ddp_kwargs=ddp_kwargs)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        report = []
        try:
            for step in range(steps):
                want = {}
                if rank == 0:
                    single = _small_student()
                    single.load_state_dict(model.state_dict())
                    for part in range(2):
                        (_student_loss(single, _student_batch(step, part)) / 2).backward()
                    want = {n: p.grad for n, p in single.named_parameters() if p.grad is not None}
                opt.zero_grad(set_to_none=True)
                _student_loss(ddp, _student_batch(step, rank)).backward()
                grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
                dev = max((float((grads[n] - w).abs().max() / w.abs().max().clamp_min(1e-30)) for n, w in want.items()
                           if n in grads), default=0.0)
                report.append((dev, sorted(set(want) ^ set(grads)) if rank == 0 else [],
                               sorted(n for n, _ in model.named_parameters() if n not in grads),
                               [float(g.double().sum()) for _, g in sorted(grads.items())]))
                opt.step()
        except RuntimeError as err:
            out.put((rank, "error", str(err).splitlines()[0]))
            return
        out.put((rank, "ok", report))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("fixbase_epoch", [0, 1])
def test_ddp_options_give_the_gradients_of_one_process(tmp_path, fixbase_epoch):
    """Two gloo ranks train the student under the DDP options the train command picks (static_graph, or the
    unused-parameter search for fixbase runs) with phi unused (no 3D term). In each of 3 steps (static_graph changes
    what DDP does after the first) both ranks hold the gradient one process gets from the same weights by averaging
    the two half batches' gradients, and phi has none. Plain DDP, told nothing, fails on the second step: the
    unused head is really there."""
    from clip3dreid_plugin.config import get_cfg
    from clip3dreid_plugin.engine.trainer import ddp_options

    cfg = get_cfg()
    cfg.train.fixbase_epoch = fixbase_epoch
    options = ddp_options(cfg)
    assert options == ({"find_unused_parameters": True} if fixbase_epoch else {"static_graph": True})
    got = _spawn_two(_ddp_gradient_worker, tmp_path, options, 3)
    assert [g[1] for g in got] == ["ok", "ok"], got
    (_, _, rank0), (_, _, rank1) = got
    shape_head = sorted(n for n, _ in _small_student().named_parameters() if n.startswith("shape_head."))
    assert len(rank0) == 3 and shape_head
    for step, ((dev, mismatch, unused, sums), (_, _, unused1, sums1)) in enumerate(zip(rank0, rank1)):
        assert mismatch == [], (step, mismatch)  # the same parameters got a gradient as in one process
        assert unused == unused1 == shape_head, step
        assert dev < 1e-5, (step, dev)
        assert sums == sums1, step  # the ranks hold one gradient


def test_plain_ddp_fails_on_the_students_unused_head(tmp_path):
    got = _spawn_two(_ddp_gradient_worker, tmp_path, {}, 2)
    assert [g[1] for g in got] == ["error", "error"], got
    assert "Expected to have finished reduction in the prior iteration" in got[0][2]


def test_runtime_tf32_sets_the_cuda_matmul_precision_and_leaves_the_cpu_alone(monkeypatch):
    """runtime.tf32 through torch's new per-backend API where it exists (mixing it with the legacy allow_tf32 is an
    error in torch >= 2.9), allow_tf32 before; a CPU run changes nothing."""
    from types import SimpleNamespace

    from clip3dreid_plugin.utils.runtime import set_matmul_tf32

    new = SimpleNamespace(fp32_precision="none")
    monkeypatch.setattr(torch.backends.cuda, "matmul", new)
    set_matmul_tf32(True, torch.device("cpu"))
    assert new.fp32_precision == "none"
    set_matmul_tf32(True, torch.device("cuda", 0))
    assert new.fp32_precision == "tf32"
    set_matmul_tf32(False, torch.device("cuda", 0))
    assert new.fp32_precision == "ieee"
    legacy = SimpleNamespace(allow_tf32=False)
    monkeypatch.setattr(torch.backends.cuda, "matmul", legacy)
    set_matmul_tf32(True, torch.device("cuda", 1))
    assert legacy.allow_tf32 is True and not hasattr(legacy, "fp32_precision")


def test_runtime_deterministic_asks_torch_for_deterministic_kernels():
    from clip3dreid_plugin.utils.runtime import set_seed

    try:
        set_seed(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert torch.backends.cudnn.deterministic
        # What the option promises (README): ops without a deterministic kernel warn rather than stop the run.
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        set_seed(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark


def _fake_cuda(monkeypatch, count: int, current: int = 0) -> None:
    """Makes torch report ``count`` CUDA devices, so the device parsing runs on a CPU-only machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


def test_device_resolves_to_an_explicit_index(monkeypatch):
    from clip3dreid_plugin.utils.runtime import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    _fake_cuda(monkeypatch, 2, current=1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device(" CUDA:1 ") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)  # the current device, named
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)  # torchrun: cuda:LOCAL_RANK
    _fake_cuda(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name, count, local_rank, match", [
    ("cuda:2", 2, None, r"cuda:2 does not exist, torch sees 2 CUDA device"),
    ("cuda:0", 0, None, r"torch sees no CUDA device"),
    ("cuda", 0, None, r"torch sees no CUDA device"),
    ("gpu1", 2, None, r"is not a device"),
    ("cuda:x", 2, None, r"is not a device"),
    ("cuda:1", 2, 0, r"names one GPU, but torchrun"),
    ("cuda", 2, 3, r"cuda:3 does not exist"),
])
def test_bad_device_is_a_one_line_config_error(monkeypatch, name, count, local_rank, match):
    from clip3dreid_plugin.config import ConfigError
    from clip3dreid_plugin.utils.runtime import resolve_device

    _fake_cuda(monkeypatch, count)
    with pytest.raises(ConfigError, match=match) as err:
        resolve_device(name, local_rank)
    msg = str(err.value)
    assert "--device / runtime.device" in msg and "\n" not in msg


def test_train_cli_reports_a_missing_gpu_index_in_one_line(capsys, tmp_path):
    from clip3dreid_plugin.tools import train_net

    if torch.cuda.is_available():
        pytest.skip("needs a machine where cuda:64 does not exist; true wherever CUDA is absent")
    rc = train_net.main(["--device", "cuda:64", "--output-dir", str(tmp_path), "data.root", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 2
    assert "--device / runtime.device 'cuda:64'" in captured.err + captured.out


@pytest.mark.parametrize("tool", ["quickstart", "extract_features", "benchmark"])
def test_every_cli_takes_a_gpu_index_and_reports_a_bad_one_in_one_line(capsys, tmp_path, tool):
    """``--device cuda:N`` reaches resolve_device in every command (argparse used to refuse it); the quickstart
    checks it before it writes anything."""
    import importlib

    if torch.cuda.is_available():
        pytest.skip("needs a machine where cuda:64 does not exist; true wherever CUDA is absent")
    main = importlib.import_module(f"clip3dreid_plugin.tools.{tool}").main
    args = {"quickstart": ["--work-dir", str(tmp_path / "qs")],
            "extract_features": ["--input", str(tmp_path), "--output", str(tmp_path / "f.npy")],
            "benchmark": []}[tool]
    rc = main(["--device", "cuda:64", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error: --device / runtime.device 'cuda:64'" in err and "invalid choice" not in err
    assert not (tmp_path / "qs").exists()


@pytest.mark.parametrize("capability, refused", [((7, 0), True), ((7, 5), True), ((8, 0), False), ((9, 0), False)])
def test_bf16_on_a_gpu_without_native_bfloat16_is_refused(monkeypatch, capability, refused):
    """The refusal reads the compute capability: torch.cuda.is_bf16_supported() counts emulation and says True on a
    V100 (7.0) or a T4 (7.5), so it is made to say True here and must not decide."""
    from clip3dreid_plugin.config import ConfigError
    from clip3dreid_plugin.utils.runtime import check_amp_support

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    if refused:
        with pytest.raises(ConfigError, match=r"^runtime.amp bf16 \(--amp\): Tesla V100 \(compute capability "
                                              rf"{capability[0]}.{capability[1]}, below 8.0\) has no native bfloat16"
                           ) as err:
            check_amp_support("bf16", torch.device("cuda", 0))
        assert "\n" not in str(err.value)
    else:
        check_amp_support("bf16", torch.device("cuda", 0))
    check_amp_support("bf16", torch.device("cpu"))  # CPU autocast has bfloat16
    check_amp_support("fp16", torch.device("cuda", 0))
    check_amp_support("none", torch.device("cuda", 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_explicit_cuda_index_becomes_the_current_device():
    from clip3dreid_plugin.utils.runtime import activate_device, resolve_device

    last = torch.cuda.device_count() - 1
    before = torch.cuda.current_device()
    try:
        dev = activate_device(resolve_device(f"cuda:{last}"))
        assert torch.cuda.current_device() == last and torch.zeros(1).cuda().device == dev
    finally:
        torch.cuda.set_device(before)


def _run_on_main_worker(rank: int, store: str, out, fail: bool):
    from clip3dreid_plugin.utils import distributed as dist_utils

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        calls = []

        def work():
            calls.append(rank)
            if fail:
                raise MemoryError("no room for the re-ranking")
            return torch.arange(6, dtype=torch.float64).view(2, 3) * 10

        try:
            got = dist_utils.run_on_main(work)
            out.put((rank, calls, got.tolist(), str(got.dtype)))
        except Exception as err:
            out.put((rank, calls, type(err).__name__, str(err)))
    finally:
        dist_utils.cleanup()


@pytest.mark.parametrize("fail", [False, True])
def test_run_on_main_computes_on_rank0_and_gives_every_rank_the_result(tmp_path, fail):
    """Re-ranking's pattern: rank 0 alone does the work, the other rank gets its tensor (shape and dtype kept);
    when rank 0 fails, both raise rather than one waiting for ever."""
    got = _spawn_two(_run_on_main_worker, tmp_path, fail)
    assert [g[1] for g in got] == [[0], []]  # only rank 0 ran it
    if not fail:
        assert got[0][2:] == got[1][2:] == ([[0.0, 10.0, 20.0], [30.0, 40.0, 50.0]], "torch.float64")
    else:
        assert got[0][2:] == ("MemoryError", "no room for the re-ranking")
        assert got[1][2] == "RuntimeError" and "MemoryError: no room for the re-ranking" in got[1][3]


# The parameters whose gradients the SyncBatchNorm test compares: a trunk batch norm, the aggregator, the BN-neck.
_CUDA_BN_WATCHED = ("backbone.1.weight", "aggregator.0.weight", "bnneck.weight", "classifier.weight")


def _cuda_bn_student():
    from clip3dreid_plugin.models.clip3dreid import CLIP3DReID

    torch.manual_seed(0)
    return CLIP3DReID(5, backbone="resnet18", local_dim=16, agg_hidden_dim=8, head_hidden_dim=8, teacher_dim=8,
                      bnneck=True)


def _cuda_bn_batch():
    g = torch.Generator().manual_seed(2)
    return torch.randn(8, 3, 64, 32, generator=g), torch.randn(8, 5, generator=g)


def _cuda_sync_bn_worker(rank: int, store: str, out):
    from clip3dreid_plugin.utils.distributed import convert_sync_batchnorm

    torch.backends.cudnn.allow_tf32 = False  # the comparison is in float32
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        dev = torch.device("cuda", 0)  # both ranks on one GPU: gloo carries SyncBatchNorm's collectives
        torch.cuda.set_device(dev)
        model = convert_sync_batchnorm(_cuda_bn_student()).to(dev).train()
        x, weight = _cuda_bn_batch()
        rows = slice(4 * rank, 4 * rank + 4)
        logits = model(x[rows].to(dev), return_dict=True)["logits"]
        (logits * weight[rows].to(dev)).sum().backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if n in _CUDA_BN_WATCHED}
        for g in grads.values():
            dist.all_reduce(g)
        out.put((rank, logits.detach().cpu().numpy(), {n: g.cpu().numpy() for n, g in grads.items()},
                 model.bnneck.running_mean.cpu().numpy(), isinstance(model.bnneck, torch.nn.SyncBatchNorm),
                 "bias" in model.bnneck._buffers and "bias" not in dict(model.bnneck.named_parameters())))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sync_batchnorm_on_two_ranks_equals_batch_norm_on_the_whole_batch(tmp_path):
    """runtime.sync_bn's conversion on a GPU, with the batch statistics really shared: two ranks (gloo, one GPU)
    forward half a batch each through the converted student; their outputs, summed gradients and the BN-neck's
    running mean are those of the plain student on the whole batch, and the BN-neck's bias is still a buffer."""
    got = _spawn_two(_cuda_sync_bn_worker, tmp_path)
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        model = _cuda_bn_student().cuda().train()
        x, weight = _cuda_bn_batch()
        logits = model(x.cuda(), return_dict=True)["logits"]
        (logits * weight.cuda()).sum().backward()
    finally:
        torch.backends.cudnn.allow_tf32 = before
    assert all(g[4] and g[5] for g in got), got
    torch.testing.assert_close(torch.from_numpy(got[0][1]), logits[:4].detach().cpu(), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(got[1][1]), logits[4:].detach().cpu(), rtol=1e-3, atol=1e-4)
    for n in _CUDA_BN_WATCHED:
        want = dict(model.named_parameters())[n].grad.cpu()
        scale = float(want.abs().max())
        for g in got:
            torch.testing.assert_close(torch.from_numpy(g[2][n]), want, rtol=1e-3, atol=1e-3 * scale,
                                       msg=lambda m, n=n: f"{n}: {m}")
    for g in got:
        torch.testing.assert_close(torch.from_numpy(g[3]), model.bnneck.running_mean.cpu(), rtol=1e-3, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_checkpoint_round_trip_restores_the_gpu_random_stream_and_an_enabled_scaler(tmp_path):
    """A checkpoint written once CUDA is in use holds the GPU's RNG state; a resume gives it back (dropout masks
    and GPU-side augmentations repeat), with the state of an fp16 run's enabled GradScaler."""
    torch.cuda.manual_seed(5)
    torch.rand(3, device="cuda")  # CUDA in use, its stream moved
    path = _save(str(tmp_path), torch.amp.GradScaler("cuda", init_scale=256.0, growth_interval=9))
    after_save = torch.rand(4, device="cuda").cpu()
    torch.cuda.manual_seed(123)
    fresh = torch.amp.GradScaler("cuda", init_scale=2.0 ** 16)
    assert _resume(path, fresh) == 1
    assert torch.equal(torch.rand(4, device="cuda").cpu(), after_save)
    assert fresh.is_enabled() and fresh.get_scale() == 256.0 and fresh.get_growth_interval() == 9


def _sharded_eval_worker(rank: int, store: str, out, poison_row: int):
    from clip3dreid_plugin.evaluation import evaluate_all
    from clip3dreid_plugin.evaluation.distance import FeatureDistances

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        g = torch.Generator().manual_seed(1)
        qf, gf = torch.randn(41, 6, generator=g), torch.randn(70, 6, generator=g)
        if poison_row >= 0:
            qf[poison_row] = float("nan")
        q_pids, g_pids = torch.arange(41) % 9, torch.arange(70) % 9
        q_cams, g_cams = torch.arange(41) % 3, torch.arange(70) % 2
        q_clo, g_clo = torch.arange(41) % 4, torch.arange(70) % 5
        try:
            res = evaluate_all(FeatureDistances(qf, gf), q_pids, g_pids, q_cams, g_cams, q_clo, g_clo,
                               modes=("general", "cc"), chunk_size=4, shard=(rank, 2))
            alone = evaluate_all(FeatureDistances(qf, gf), q_pids, g_pids, q_cams, g_cams, q_clo, g_clo,
                                 modes=("general", "cc"), chunk_size=4)
            out.put((rank, {m: (c.tolist(), a) for m, (c, a) in res.items()},
                     {m: (c.tolist(), a) for m, (c, a) in alone.items()}))
        except ValueError as err:
            out.put((rank, "error", str(err)))
    finally:
        dist.destroy_process_group()


def _spawn_two(target, tmp_path, *args):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, str(tmp_path / "store"), out, *args)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted((out.get(timeout=120) for _ in procs), key=lambda g: g[0])
    for p in procs:
        p.join(timeout=60)
    return got


def test_sharded_ranking_gives_every_rank_the_single_process_metrics(tmp_path):
    """Each rank ranks half of the queries; after the all-reduce both hold the metrics of ranking all of them."""
    got = _spawn_two(_sharded_eval_worker, tmp_path, -1)
    (_, res0, alone0), (_, res1, _) = got
    assert res0 == res1
    for m in ("general", "cc"):
        assert res0[m][0] == pytest.approx(alone0[m][0], abs=1e-12)
        assert res0[m][1] == pytest.approx(alone0[m][1], abs=1e-12)
        assert 0.0 < res0[m][1] < 1.0


def test_a_failure_in_one_ranks_shard_is_raised_on_every_rank(tmp_path):
    """NaN distances in rank 1's queries only (row 30 of 41): rank 0 must raise too instead of hanging."""
    got = _spawn_two(_sharded_eval_worker, tmp_path, 30)
    assert [g[1] for g in got] == ["error", "error"], got
    assert "another rank" in got[0][2] and "NaN" in got[1][2], got


def test_quickstart_labels_on_the_device_it_is_given(monkeypatch):
    """The quickstart's teacher runs on the resolved device (a GPU when present), not always on the CPU."""
    from clip3dreid_plugin.config import load_config
    from clip3dreid_plugin.teacher import source
    from clip3dreid_plugin.study.standin_teacher import build_standin_cache, synthcc_teacher_cache

    class Built(Exception):
        pass

    seen = []

    def fake_build_teacher(cfg, device="cpu"):
        seen.append(device)
        raise Built

    monkeypatch.setattr(source, "build_teacher", fake_build_teacher)
    with pytest.raises(Built):  # the clip teacher's cache
        synthcc_teacher_cache(load_config(None, []), [], device=torch.device("cuda", 1))
    with pytest.raises(Built):  # the stand-in's, built from the same teacher
        build_standin_cache(load_config(None, []), [], None, device=torch.device("cuda", 0))
    assert seen == [torch.device("cuda", 1), torch.device("cuda", 0)]


def _save(save_dir: str, scaler) -> str:
    """One checkpoint of a small module through the checkpoint room alone: no dataset, model build or engine."""
    from clip3dreid_plugin.engine import checkpoint

    model = torch.nn.Linear(2, 2)
    own, per_rank = checkpoint.gather_rng_states()  # the state the caller draws from next
    state = checkpoint.checkpoint_state(model, epoch=1, rng=own, rng_per_rank=per_rank, scaler=scaler)
    return checkpoint.write_checkpoint(state, save_dir)


def _resume(path: str, scaler) -> int:
    from clip3dreid_plugin.engine import checkpoint

    return int(checkpoint.restore_checkpoint(path, torch.nn.Linear(2, 2), scaler=scaler)["epoch"])


def test_checkpoint_round_trip_restores_the_scaler_and_the_random_streams(tmp_path):
    import random

    import numpy as np

    path = _save(str(tmp_path), torch.amp.GradScaler("cpu", init_scale=64.0, growth_interval=7))
    assert path == str(tmp_path / "model" / "model.pth.tar-1")
    after_save = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    assert _resume(path, fresh) == 1
    assert fresh.get_scale() == 64.0 and fresh.get_growth_interval() == 7
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(after_save[0], again[0]) and np.array_equal(after_save[1], again[1])
    assert after_save[2] == again[2]
    # A disabled scaler (CPU, bf16) stores its empty state; resuming it into an enabled one keeps that one's state.
    off = _save(str(tmp_path / "off"), torch.amp.GradScaler("cpu", enabled=False))
    enabled = torch.amp.GradScaler("cpu", init_scale=8.0)
    _resume(off, enabled)
    assert enabled.get_scale() == 8.0

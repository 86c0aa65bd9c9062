"""Default yacs configuration.

torchreid's PyPI wheel does not ship ``scripts/default_config.py``, so the plugin owns a
config tree with every key of upstream ``scripts/main.py`` (``get_default_config``) and adds
its own keys in exactly one place (``add_clip3dreid_config``), in the style of detectron2
projects.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from clip3dreid_plugin.shape import NUM_BETAS

__all__ = ["get_default_config", "add_clip3dreid_config", "get_cfg"]


def get_default_config() -> CN:
    """Returns the torchreid default config (the keys of upstream ``scripts/default_config.py``)."""
    cfg = CN()

    cfg.model = CN()
    cfg.model.name = "resnet50"
    cfg.model.pretrained = True  # torchreid downloads ImageNet weights when True
    cfg.model.load_weights = ""
    cfg.model.resume = ""

    cfg.data = CN()
    cfg.data.type = "image"
    cfg.data.root = "reid-data"
    cfg.data.sources = ["market1501"]
    cfg.data.targets = ["market1501"]
    cfg.data.workers = 4
    cfg.data.split_id = 0
    cfg.data.height = 256
    cfg.data.width = 128
    cfg.data.combineall = False
    cfg.data.transforms = ["random_flip"]
    cfg.data.k_tfm = 1
    cfg.data.norm_mean = [0.485, 0.456, 0.406]
    cfg.data.norm_std = [0.229, 0.224, 0.225]
    cfg.data.save_dir = "log"
    cfg.data.load_train_targets = False

    cfg.market1501 = CN()
    cfg.market1501.use_500k_distractors = False
    cfg.cuhk03 = CN()
    cfg.cuhk03.labeled_images = False
    cfg.cuhk03.classic_split = False
    cfg.cuhk03.use_metric_cuhk03 = False

    cfg.sampler = CN()
    cfg.sampler.train_sampler = "RandomSampler"
    cfg.sampler.train_sampler_t = "RandomSampler"
    cfg.sampler.num_instances = 4
    cfg.sampler.num_cams = 1
    cfg.sampler.num_datasets = 1

    cfg.video = CN()
    cfg.video.seq_len = 15
    cfg.video.sample_method = "evenly"
    cfg.video.pooling_method = "avg"

    cfg.train = CN()
    cfg.train.optim = "adam"
    cfg.train.lr = 0.0003
    cfg.train.weight_decay = 5e-4
    cfg.train.max_epoch = 60
    cfg.train.start_epoch = 0
    cfg.train.batch_size = 32
    cfg.train.fixbase_epoch = 0
    cfg.train.open_layers = ["classifier"]
    cfg.train.staged_lr = False
    cfg.train.new_layers = ["classifier"]
    cfg.train.base_lr_mult = 0.1
    cfg.train.lr_scheduler = "single_step"
    cfg.train.stepsize = [20]
    cfg.train.gamma = 0.1
    cfg.train.print_freq = 20
    cfg.train.seed = 1

    cfg.sgd = CN()
    cfg.sgd.momentum = 0.9
    cfg.sgd.dampening = 0.0
    cfg.sgd.nesterov = False
    cfg.rmsprop = CN()
    cfg.rmsprop.alpha = 0.99
    cfg.adam = CN()
    cfg.adam.beta1 = 0.9
    cfg.adam.beta2 = 0.999

    cfg.loss = CN()
    cfg.loss.name = "softmax"
    cfg.loss.softmax = CN()
    cfg.loss.softmax.label_smooth = True
    cfg.loss.triplet = CN()
    cfg.loss.triplet.margin = 0.3
    cfg.loss.triplet.weight_t = 1.0
    cfg.loss.triplet.weight_x = 0.0

    cfg.test = CN()
    cfg.test.batch_size = 100
    cfg.test.dist_metric = "euclidean"
    cfg.test.normalize_feature = False
    cfg.test.ranks = [1, 5, 10, 20]
    cfg.test.evaluate = False
    cfg.test.eval_freq = -1
    cfg.test.start_eval = 0
    cfg.test.rerank = False
    cfg.test.visrank = False
    cfg.test.visrank_topk = 10
    return cfg


def add_clip3dreid_config(cfg: CN) -> CN:
    """Adds every key the plugin introduces to ``cfg`` (in place) and returns it.

    Each key carries a one-line comment. Keep all new keys here so ``configs/*.yaml`` can be
    validated against one schema.
    """
    # ---------------------------------------------------------------- runtime
    cfg.runtime = CN()
    cfg.runtime.device = "auto"  # auto | cpu | cuda | cuda:N: auto picks cuda when available
    cfg.runtime.deterministic = False  # deterministic kernels where possible, no cuDNN benchmark (docs/distributed.md)
    cfg.runtime.ckpt_freq = 1  # save a resumable checkpoint every N epochs (0 = only at the end)
    cfg.runtime.keep_checkpoints = 2  # keep the latest N model.pth.tar-* (model-best.pth.tar stays too); 0 = all
    cfg.runtime.amp = "none"  # none | bf16 | fp16 autocast for the student forward
    cfg.runtime.channels_last = True  # NHWC layout for conv models (faster ResNet steps on CPU, see BENCHMARKS.md)
    cfg.runtime.tf32 = False  # CUDA: float32 matmuls in TF32 (faster, ~1e-3 relative error); convolutions: TF32 anyway
    cfg.runtime.compile = False  # wrap the student in torch.compile
    cfg.runtime.sync_bn = False  # convert BatchNorm to SyncBatchNorm under torch.distributed
    cfg.runtime.dist_backend = "auto"  # auto | nccl | gloo backend for torchrun
    cfg.runtime.pin_memory = True  # pin host memory in DataLoaders when training on CUDA
    cfg.runtime.persistent_workers = True  # keep the training loaders' workers alive across epochs (workers > 0)
    cfg.runtime.progress = True  # tqdm progress bars for long loops
    cfg.runtime.diag_freq = 50  # clip3dreid: steps between collapse diagnostics (diag_* in the log; 0 = off)

    # ------------------------------------------------------------- evaluation
    cfg.eval = CN()
    cfg.eval.protocols = ["auto"]  # auto = every protocol the dataset defines; or a subset of general/sc/cc
    cfg.eval.flip = True  # feature = f(img) + f(hflip(img)) as in the CC-ReID reference protocol
    cfg.eval.select_by = "auto"  # metric picking the best checkpoint: auto = cc_rank1 if defined else rank1
    cfg.eval.max_rank = 50  # length of the CMC curve
    cfg.eval.device = "auto"  # device for the vectorised evaluator: auto | cpu | cuda

    # ---------------------------------------------------------------- student
    cfg.clip3dreid = CN()
    cfg.clip3dreid.backbone = "resnet50"  # torchreid ResNet factory for the trunk (the baseline's init and weights)
    cfg.clip3dreid.last_stride = 1  # stride of layer4; 1 gives a 24x12 map at 384x192
    cfg.clip3dreid.imagenet_weights = ""  # with model.pretrained: local ResNet state dict instead of torchreid's file
    cfg.clip3dreid.local_dim = 2048  # d': channels of the local features F and of f_id
    cfg.clip3dreid.agg_hidden_dim = 512  # hidden width of the MLP that aggregates F into f_id
    cfg.clip3dreid.agg_residual = False  # f_id = pooled + MLP(pooled), last layer zero-initialised
    cfg.clip3dreid.bnneck = False  # BatchNorm between f_id and the classifier; its output is the retrieval feature
    cfg.clip3dreid.fixed_text_head = False  # Psi = a frozen random isometry (keeps phrase cosines), not a trained head
    cfg.clip3dreid.classifier_init = "torchreid"  # torchreid (Linear, bias, std 0.01) | small (bias-free, std 1e-3)
    cfg.clip3dreid.head_type = "mlp"  # mlp (main paper) | linear (supplement) for Psi, Phi and phi
    cfg.clip3dreid.head_hidden_dim = 512  # hidden width of the Psi/Phi/phi heads when head_type is mlp
    cfg.clip3dreid.num_shape_coeffs = NUM_BETAS  # SMPL betas predicted by phi
    cfg.clip3dreid.teacher_dim = 768  # d: teacher embedding width (768 for ViT-L/14)

    # ------------------------------------------------------------ teacher (CLIP)
    cfg.teacher = CN()
    cfg.teacher.name = "ViT-L-14-quickgelu"  # open_clip model name; QuickGELU matches OpenAI weights
    cfg.teacher.pretrained = ""  # local checkpoint path or open_clip hub tag (needs network)
    cfg.teacher.mode = "cache"  # cache = precomputed | online = CLIP every step | ideal, stand-in (synthcc) | none
    cfg.teacher.ideal_seed = 0  # teacher.mode ideal: seed of its orthonormal phrase features and shape projection
    cfg.teacher.cache_dir = "teacher_cache"  # folder of the per-(dataset, teacher, weights) cache files
    cfg.teacher.batch_size = 64  # images per teacher forward when building the cache
    cfg.teacher.prompt_template = ""  # empty = the paper's template; must contain '{}'
    cfg.teacher.descriptor_pairs = []  # empty = the paper's 16 pairs; else ['a|b', ...]
    cfg.teacher.on_stale = "rebuild"  # rebuild | error when the cache fingerprint does not match
    cfg.teacher.resize_mode = "pad"  # pad (keep body proportions) | squash | crop: how images reach CLIP's square input
    cfg.teacher.precision = "auto"  # auto (CPU fp32; GPU bf16, fp16 below compute capability 8.0) | fp32 | bf16 | fp16

    # ------------------------------------------------------------------ OT
    cfg.ot = CN()
    cfg.ot.reg = 1.0  # entropic weight lambda (paper: 1; the authors' code: 0.1 with ot.grad envelope)
    cfg.ot.max_iter = 100  # Sinkhorn iteration cap
    cfg.ot.tol = 1e-5  # marginal-violation tolerance (float32-safe; POT's 1e-9 never triggers in fp32)
    cfg.ot.grad = "autodiff"  # autodiff (gradient of <T*,C>) | envelope (cheaper, regularised objective)
    cfg.ot.huge_pages = True  # CPU, Linux: back the [B,N,d'] local-feature gradient with huge pages (fewer page faults)

    # -------------------------------------------------------- CLIP3DReID losses
    # Each key is a switch, weight or reduction of a term of LOSS_TERMS (engine/loss_terms.py), which checks them.
    cfg.loss.clip3dreid = CN()
    cfg.loss.clip3dreid.alpha = 0.3  # weight of L_OT
    cfg.loss.clip3dreid.beta = 0.5  # weight of L_global
    cfg.loss.clip3dreid.gamma = 0.3  # weight of L_OT_syn + L_3D
    cfg.loss.clip3dreid.use_ce = True  # ablation switch for L_CE
    cfg.loss.clip3dreid.use_ot = True  # ablation switch for L_OT
    cfg.loss.clip3dreid.use_global = True  # ablation switch for L_global
    cfg.loss.clip3dreid.use_3d = False  # ablation switch for gamma*(L_OT_syn + L_3D); needs body.model_dir
    cfg.loss.clip3dreid.global_reduction = "sum"  # L_global over the d' dims: sum (paper's squared norm) | mean
    cfg.loss.clip3dreid.shape_reduction = "sum"  # L_3D over vertices: sum (paper Sec. 3.4) | mean
    cfg.loss.clip3dreid.triplet_weight = 0.0  # optional batch-hard triplet on f_id (0 = off)

    # ------------------------------------------------------ body model / 3D
    cfg.body = CN()
    cfg.body.model_dir = ""  # folder holding smpl/SMPL_{NEUTRAL,MALE,FEMALE}.pkl
    cfg.body.gender = "neutral"  # body model used for L_3D vertices
    cfg.body.synthetic_dir = ""  # rendered synthetic mesh set (images + metadata)
    cfg.body.synthetic_ratio = 0.25  # fraction of every training batch taken from synthetic images
    cfg.body.separate_bn = False  # True: synthetic rows get their own BN batch stats, running stats stay real-only
    cfg.body.num_female = 500  # synthetic female subjects
    cfg.body.num_male = 500  # synthetic male subjects
    cfg.body.poses_per_subject = 10  # renders per subject
    cfg.body.seed = 0  # seed for shapes, poses and cameras of the synthetic set
    cfg.body.beta_sigma = 1.0  # standard deviation of the sampled synthetic shape coefficients
    cfg.body.check_set = False  # True: refuse a synthetic_dir whose metadata differs from the body.* keys above

    # ---------------------------------------------------- synthcc (default dataset)
    cfg.synthcc = CN()
    cfg.synthcc.num_ids = 60  # identities (bodies); half train, half test
    cfg.synthcc.outfits_per_id = 3  # outfits each identity wears
    cfg.synthcc.num_cameras = 3  # cameras (viewpoint, background, lighting)
    cfg.synthcc.poses_per_view = 2  # poses rendered per (identity, outfit, camera)
    cfg.synthcc.seed = 0  # seed of the generated benchmark
    cfg.synthcc.beta_sigma = 1.25  # sd of the identities' shape coefficients: the spread of body shapes

    # ---------------------------------------------------------- CAL (baseline)
    cfg.cal = CN()
    cfg.cal.last_stride = 1  # stride of ResNet-50's last stage (CAL: 1)
    cfg.cal.start_epoch_cc = 25  # first epoch (0-based) whose steps update the clothes classifier
    cfg.cal.start_epoch_adv = 25  # first epoch (0-based) whose loss has the clothes-adversarial term
    cfg.cal.epsilon = 0.1  # share of the adversarial target spread over the identity's outfits
    cfg.cal.scale = 16.0  # scale s of the clothes classifier's cosines, in both clothes losses
    cfg.cal.clothes_lr = 3.5e-4  # Adam learning rate of the clothes classifier (never scheduled, as the reference)
    cfg.cal.clothes_weight_decay = 5e-4  # its weight decay
    cfg.cal.triplet_weight = 0.0  # weight of the cosine-distance batch-hard triplet term (LaST recipe: 1.0)
    cfg.cal.triplet_margin = 0.3  # its margin

    # ---------------------------------------------------------- CLIP-ReID (baseline)
    cfg.clip_reid = CN()
    cfg.clip_reid.clip_model = "ViT-B-16-quickgelu"  # open_clip name, ViT or ModifiedResNet (RN50-quickgelu)
    cfg.clip_reid.clip_pretrained = ""  # open_clip tag (openai) or local weights file; used with model.pretrained
    cfg.clip_reid.stride = 0  # ViT patch stride (0: the patch size; 12 for ViT-B/16's overlapping patches)
    cfg.clip_reid.sie_cameras = 0  # camera embeddings added to the ViT's CLS token (0: no SIE)
    cfg.clip_reid.sie_coe = 1.0  # coefficient of the camera embedding (the reference's README: 1.0)
    cfg.clip_reid.n_ctx = 4  # learnable prompt tokens per identity
    cfg.clip_reid.prompt_template = "A photo of a {} person."  # prompt; {} stands for the n_ctx learnt tokens
    cfg.clip_reid.two_stage = True  # False: torchreid's engine trains the one-stage baseline (no prompts)
    cfg.clip_reid.stage1_epochs = 120  # prompt-learning epochs (reference: ViT 120, RN50 60)
    cfg.clip_reid.stage1_lr = 3.5e-4  # stage-1 Adam learning rate of the prompts
    cfg.clip_reid.stage1_weight_decay = 1e-4  # its weight decay
    cfg.clip_reid.stage1_batch_size = 64  # cached image features per stage-1 step
    cfg.clip_reid.stage1_warmup_epochs = 5  # stage-1 linear warm-up epochs, from stage1_warmup_lr
    cfg.clip_reid.stage1_warmup_lr = 1e-5  # stage-1 learning rate at epoch 0
    cfg.clip_reid.stage1_min_lr = 1e-6  # stage-1 cosine schedule's floor
    cfg.clip_reid.id_weight = 0.25  # weight of the ID loss on each classifier (reference: ViT 0.25, RN50 1.0)
    cfg.clip_reid.triplet_weight = 1.0  # weight of the batch-hard triplet loss on each of the three features
    cfg.clip_reid.i2t_weight = 1.0  # weight of the image-to-text cross-entropy against all identities
    cfg.clip_reid.bias_lr_factor = 2.0  # stage 2: learning rate of every bias is train.lr times this
    cfg.clip_reid.weight_decay_bias = 1e-4  # stage 2: weight decay of every bias (the recipes: train.weight_decay)
    cfg.clip_reid.warmup_factor = 0.1  # stage 2: lr factor at epoch 0, linear to 1 (ViT 0.1, RN50 0.01)
    cfg.clip_reid.warmup_epochs = 10  # stage 2: warm-up epochs, then train.stepsize milestones with train.gamma
    return cfg


def get_cfg() -> CN:
    """Returns the full default config: torchreid keys plus the plugin's keys."""
    return add_clip3dreid_config(get_default_config())

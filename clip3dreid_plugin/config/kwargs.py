"""Config -> keyword arguments for torchreid's builders (upstream ``default_config.py`` helpers)."""
from __future__ import annotations

from typing import Any, Dict

from yacs.config import CfgNode as CN

__all__ = ["imagedata_kwargs", "videodata_kwargs", "optimizer_kwargs", "lr_scheduler_kwargs", "engine_run_kwargs"]


def imagedata_kwargs(cfg: CN) -> Dict[str, Any]:
    return {
        "root": cfg.data.root,
        "sources": list(cfg.data.sources),
        "targets": list(cfg.data.targets),
        "height": cfg.data.height,
        "width": cfg.data.width,
        "transforms": list(cfg.data.transforms),
        "k_tfm": cfg.data.k_tfm,
        "norm_mean": list(cfg.data.norm_mean),
        "norm_std": list(cfg.data.norm_std),
        "split_id": cfg.data.split_id,
        "combineall": cfg.data.combineall,
        "load_train_targets": cfg.data.load_train_targets,
        "batch_size_train": cfg.train.batch_size,
        "batch_size_test": cfg.test.batch_size,
        "workers": cfg.data.workers,
        "num_instances": cfg.sampler.num_instances,
        "num_cams": cfg.sampler.num_cams,
        "num_datasets": cfg.sampler.num_datasets,
        "train_sampler": cfg.sampler.train_sampler,
        "train_sampler_t": cfg.sampler.train_sampler_t,
        "cuhk03_labeled": cfg.cuhk03.labeled_images,
        "cuhk03_classic_split": cfg.cuhk03.classic_split,
        "market1501_500k": cfg.market1501.use_500k_distractors,
    }


def videodata_kwargs(cfg: CN) -> Dict[str, Any]:
    kw = imagedata_kwargs(cfg)
    for k in ("k_tfm", "load_train_targets", "train_sampler_t", "cuhk03_labeled", "cuhk03_classic_split",
              "market1501_500k"):
        kw.pop(k)
    kw.update(seq_len=cfg.video.seq_len, sample_method=cfg.video.sample_method)
    return kw


def optimizer_kwargs(cfg: CN) -> Dict[str, Any]:
    return {
        "optim": cfg.train.optim,
        "lr": cfg.train.lr,
        "weight_decay": cfg.train.weight_decay,
        "momentum": cfg.sgd.momentum,
        "sgd_dampening": cfg.sgd.dampening,
        "sgd_nesterov": cfg.sgd.nesterov,
        "rmsprop_alpha": cfg.rmsprop.alpha,
        "adam_beta1": cfg.adam.beta1,
        "adam_beta2": cfg.adam.beta2,
        "staged_lr": cfg.train.staged_lr,
        "new_layers": list(cfg.train.new_layers),
        "base_lr_mult": cfg.train.base_lr_mult,
    }


def lr_scheduler_kwargs(cfg: CN) -> Dict[str, Any]:
    return {
        "lr_scheduler": cfg.train.lr_scheduler,
        "stepsize": list(cfg.train.stepsize),
        "gamma": cfg.train.gamma,
        "max_epoch": cfg.train.max_epoch,
    }


def engine_run_kwargs(cfg: CN) -> Dict[str, Any]:
    """The loop's keywords of torchreid's ``Engine.run``.

    The evaluation options are not among them: the plugin's engines hold them as one
    :class:`~clip3dreid_plugin.engine.evaluator.EvalOptions` (``EvalOptions.from_cfg``), given to their constructor.
    """
    return {
        "save_dir": cfg.data.save_dir,
        "max_epoch": cfg.train.max_epoch,
        "start_epoch": cfg.train.start_epoch,
        "fixbase_epoch": cfg.train.fixbase_epoch,
        "open_layers": list(cfg.train.open_layers),
        "start_eval": cfg.test.start_eval,
        "eval_freq": cfg.test.eval_freq,
        "test_only": cfg.test.evaluate,
        "print_freq": cfg.train.print_freq,
    }

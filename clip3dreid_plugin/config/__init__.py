"""Config schema, YAML loading and the torchreid ``*_kwargs`` helpers."""
from clip3dreid_plugin.config.defaults import add_clip3dreid_config, get_cfg, get_default_config
from clip3dreid_plugin.config.kwargs import (
    engine_run_kwargs,
    imagedata_kwargs,
    lr_scheduler_kwargs,
    optimizer_kwargs,
    videodata_kwargs,
)
from clip3dreid_plugin.config.loader import ConfigError, load_config

__all__ = [
    "add_clip3dreid_config",
    "get_cfg",
    "get_default_config",
    "load_config",
    "ConfigError",
    "imagedata_kwargs",
    "videodata_kwargs",
    "optimizer_kwargs",
    "lr_scheduler_kwargs",
    "engine_run_kwargs",
]

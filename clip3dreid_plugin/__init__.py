"""CLIP3DReID (Liu et al., CVPR 2024) as a plugin for torchreid.

Importing this package changes nothing in torchreid; call :func:`register` once to add the
plugin's models and datasets to torchreid's registries.
"""
from clip3dreid_plugin.config.defaults import add_clip3dreid_config, get_cfg, get_default_config
from clip3dreid_plugin.registry import register, register_manifest_dataset

__version__ = "0.1.0"

__all__ = ["register", "register_manifest_dataset", "add_clip3dreid_config", "get_default_config", "get_cfg",
           "__version__"]

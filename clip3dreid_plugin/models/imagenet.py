"""ImageNet weights of torchreid's models: the same files, from the same cache, with a clear error offline.

torchreid's ResNets load ``https://download.pytorch.org/models/<file>`` through torch's model-zoo cache
(``$TORCH_HOME/hub/checkpoints``), downloading the file when it is missing. Offline, that ends in a ``URLError``
traceback (from every rank under ``torchrun``). :func:`ensure_pretrained_file` puts the file in that cache before
torchreid asks for it, or stops with one line naming the file and the folder to put it in. The baseline and the
``clip3dreid`` student both go through it, so a recipe pair starts from one file.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import sys
import urllib.error
import urllib.request
from typing import Optional
from urllib.parse import urlparse

import torch
import torchreid

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.utils.safe_pickle import weights_only_refusal

logger = logging.getLogger(__name__)

__all__ = ["PretrainedWeightsError", "ensure_pretrained_file", "hub_checkpoint_dir", "imagenet_resnet_url",
           "torchreid_pretrained_url", "torchreid_resnet"]

# A reachable host answers in well under a second; an unreachable one must not hold up a run (or a test).
_PROBE_TIMEOUT_S = 15.0


class PretrainedWeightsError(ConfigError):
    """``pretrained=True`` asked for weights that are neither cached nor downloadable (a user error)."""


def hub_checkpoint_dir() -> str:
    """The folder torch's model zoo caches into (``$TORCH_HOME/hub/checkpoints``), read at call time."""
    return osp.join(torch.hub.get_dir(), "checkpoints")


def imagenet_resnet_url(arch: str) -> str:
    """URL of the ImageNet file that torchreid's ResNet factory ``arch`` loads.

    Raises:
        ConfigError: ``arch`` is not one of torchreid's ResNets.
    """
    urls = torchreid.models.resnet.model_urls
    if arch not in urls:
        raise ConfigError(f"'{arch}' is not one of torchreid's ResNets with ImageNet weights: {sorted(urls)}")
    return urls[arch]


def torchreid_pretrained_url(name: str, factory) -> Optional[str]:
    """The download URL a torchreid factory uses for ``pretrained=True``, when its module lists one.

    torchreid keeps one ``model_urls`` dict per module, keyed by architecture; variants such as
    ``resnet50_fc512`` load their base architecture's file, so the longest key that prefixes ``name`` wins.
    Factories that fetch from Google Drive (OSNet) have no such dict and return None.
    """
    urls = getattr(sys.modules.get(factory.__module__), "model_urls", None)
    if not isinstance(urls, dict):
        return None
    keys = [k for k in urls if name == k or name.startswith(k + "_")]
    return urls[max(keys, key=len)] if keys else None


def ensure_pretrained_file(url: str, what: str) -> str:
    """Path of ``url``'s file in torch's model-zoo cache, downloading it there when it is missing.

    Args:
        url: download URL; the cached file keeps its basename, as ``torch.hub.load_state_dict_from_url`` does.
        what: the model that needs it, for the error message.

    Returns:
        The local path (``$TORCH_HOME/hub/checkpoints/<file>``).

    Raises:
        PretrainedWeightsError: not cached and the download failed (offline, refused, timed out).
    """
    folder = hub_checkpoint_dir()
    fname = osp.basename(urlparse(url).path)
    path = osp.join(folder, fname)
    if osp.isfile(path):
        return _checked_as_data(path, what)
    try:
        # Probe with a timeout first: torch.hub's own download has none and can hang on a dead route.
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=_PROBE_TIMEOUT_S).close()
        os.makedirs(folder, exist_ok=True)
        logger.info("downloading %s -> %s", url, path)
        torch.hub.download_url_to_file(url, path, progress=False)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise PretrainedWeightsError(
            f"model.pretrained True: {what} needs the ImageNet weights '{fname}', which are not in '{folder}' and "
            f"could not be downloaded from {url} ({reason}); put the file in that folder, or set model.pretrained "
            "False") from None
    return _checked_as_data(path, what)


# (path, size, mtime_ns) of files already read as data in this process: a study builds many models from one file.
_CHECKED: set = set()


def _checked_as_data(path: str, what: str) -> str:
    """Returns ``path`` once it has loaded with ``weights_only=True``.

    torchreid loads these files through ``torch.hub.load_state_dict_from_url``, whose ``weights_only`` defaults to
    False: a file copied from elsewhere into the cache could run code there. Reading it as data first stops that.

    Raises:
        PretrainedWeightsError: the file holds anything but tensors and plain containers, or is unreadable.
    """
    st = os.stat(path)
    key = (osp.abspath(path), st.st_size, st.st_mtime_ns)
    if key in _CHECKED:
        return path
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a foreign or damaged file
        raise PretrainedWeightsError(f"model.pretrained True: {what} needs the ImageNet weights '{path}', which were "
                                     f"not loaded: {weights_only_refusal(err)}; replace the file or set "
                                     "model.pretrained False") from None
    _CHECKED.add(key)
    return path


def torchreid_resnet(arch: str, num_classes: int, pretrained: bool) -> torch.nn.Module:
    """torchreid's ResNet factory ``arch``; ``pretrained`` loads its ImageNet file (cached first, or a clear error)."""
    resnets = torchreid.models.resnet
    if arch not in resnets.model_urls or not hasattr(resnets, arch):
        raise ConfigError(f"clip3dreid.backbone must be one of torchreid's ResNets {sorted(resnets.model_urls)}, "
                          f"got '{arch}'")
    if pretrained:
        ensure_pretrained_file(imagenet_resnet_url(arch), f"clip3dreid (trunk {arch})")
    return getattr(resnets, arch)(num_classes=num_classes, loss="softmax", pretrained=pretrained)

"""Image paths of training items for the teacher: one per image item, one per frame of a video tracklet.

The teacher labels images. For video datasets (``data.type video``) CLIP3DReID trains on frames, as
torchreid's ``VideoSoftmaxEngine`` does, so every frame of every training tracklet has its own cache
entry and a clip batch is looked up frame by frame.
"""
from __future__ import annotations

from typing import List, Sequence

__all__ = ["item_image_paths", "batch_frame_paths"]


def item_image_paths(items: Sequence[tuple]) -> List[str]:
    """Every image path of ``items`` (``(img_path or frame paths, pid, camid, ...)``), in order, each once.

    Args:
        items: torchreid data items; the first field is one path (image) or a sequence of frame paths (video).

    Returns:
        The paths in item order (frames in tracklet order), without repeats.
    """
    paths: List[str] = []
    for item in items:
        first = item[0]
        paths.extend([first] if isinstance(first, str) else list(first))
    return list(dict.fromkeys(paths))


def batch_frame_paths(impath: Sequence[Sequence[str]], batch: int, seq_len: int) -> List[str]:
    """Frame paths of a collated clip batch, in the order of ``img.flatten(0, 1)`` (clip-major).

    torch's default collate turns ``B`` items whose ``impath`` is a sequence of ``S`` frame paths into ``S``
    sequences of ``B`` paths, so frame ``s`` of clip ``b`` is ``impath[s][b]``.

    Args:
        impath: the collated ``impath`` of a video batch (``S`` sequences of ``B`` paths).
        batch: ``B``, clips in the batch.
        seq_len: ``S``, frames per clip.

    Returns:
        ``B * S`` paths, ``[clip 0 frame 0, clip 0 frame 1, ..., clip B-1 frame S-1]``.

    Raises:
        ValueError: ``impath`` does not hold ``S`` sequences of ``B`` paths.
    """
    if len(impath) != seq_len or any(isinstance(col, str) or len(col) != batch for col in impath):
        shape = [len(c) if not isinstance(c, str) else "str" for c in impath]
        raise ValueError(f"a video batch of {batch} clips x {seq_len} frames needs impath as {seq_len} sequences of "
                         f"{batch} frame paths (torch's default collate), got lengths {shape}")
    return [impath[s][b] for b in range(batch) for s in range(seq_len)]

"""Prints per-split statistics of a dataset registered in torchreid (plugin datasets included).

Examples::

    clip3dreid-dataset-info --dataset ltcc --root /data
    clip3dreid-dataset-info --dataset ccvid --root /data --json
    clip3dreid-dataset-info --dataset prcc --root /data --check-images
    clip3dreid-dataset-info --dataset synthcc --root work_dirs/quickstart/data --chance 200

The dataset is built exactly as training builds it (``clip3dreid_plugin.register()`` then
torchreid's ``init_image_dataset``/``init_video_dataset``), so a layout problem shows up here
first. ``--check-images`` also opens every image (torchreid's reader would hang on a corrupt one).
``--chance N`` evaluates N uniformly random rankings of the real query/gallery split with every protocol
of the dataset: the chance level a trained model's numbers should be read against (image datasets).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from clip3dreid_plugin.errors import InputError
from clip3dreid_plugin.registry import register
from clip3dreid_plugin.tools.common import CLIParser, cli_main, start_cli
from clip3dreid_plugin.utils.progress import progress

logger = logging.getLogger("dataset_info")

SPLITS = ("train", "query", "gallery")


def split_stats(data: Sequence[tuple]) -> Dict[str, int]:
    """Counts ``ids``, ``images`` (tracklets for video), ``clothes`` and ``cameras`` of one split.

    torchreid's own datasets have no clothes field; they count one outfit per identity.
    """
    from datasets_ext.base import to_clothes_items  # torchreid: after parsing

    items = to_clothes_items(data)
    return {
        "ids": len({it[1] for it in items}),
        "images": len(items),
        "clothes": len({it[4] for it in items}),
        "cameras": len({it[2] for it in items}),
    }


def build_dataset(name: str, root: str):
    """Builds ``name`` through torchreid's registry (after ``register()``); returns ``(dataset, is_video)``.

    Raises:
        ValueError: ``name`` is not a registered image or video dataset.
    """
    from clip3dreid_plugin.data.build import build_train_split  # torchreid: after parsing

    register()
    return build_train_split(name, root)


def collect_info(name: str, root: str) -> dict:
    """Statistics, protocols and camera rule of ``name`` as a JSON-ready dict."""
    ds, is_video = build_dataset(name, root)
    info = {
        "dataset": name,
        "class": type(ds).__name__,
        "dataset_dir": getattr(ds, "dataset_dir", None),
        "kind": "video" if is_video else "image",
        "eval_protocols": list(getattr(ds, "eval_protocols", ("general",))),
        "camera_rule": getattr(ds, "camera_rule", "camera index (torchreid loader)"),
        "splits": {split: split_stats(getattr(ds, split)) for split in SPLITS},
    }
    if is_video:
        for split in SPLITS:
            info["splits"][split]["frames"] = sum(len(it[0]) for it in getattr(ds, split))
    info["_dataset"] = ds
    return info


def check_images(ds) -> Tuple[List[str], int]:
    """Opens every image (every frame of a video dataset) of every split.

    Returns:
        ``(error messages, number of files opened)``.
    """
    # torchreid, after start_cli's quiet warnings
    from clip3dreid_plugin.data.frames import item_image_paths
    from datasets_ext.image_io import ImageReadError, read_image  # torchreid: after parsing

    paths = item_image_paths([it for split in SPLITS for it in getattr(ds, split)])
    errors = []
    for path in progress(sorted(paths), desc="checking images"):
        try:
            read_image(path)
        except ImageReadError as err:
            errors.append(str(err))
    return errors, len(paths)


def format_table(info: dict) -> str:
    unit = "tracklets" if info["kind"] == "video" else "images"
    lines = [
        f"{info['dataset']} ({info['class']}) at {info['dataset_dir']}",
        f"  protocols: {', '.join(info['eval_protocols'])}",
        f"  camera rule: {info['camera_rule']}",
        f"  {'split':8s} | {'ids':>6s} | {unit:>9s} | {'clothes':>7s} | {'cameras':>7s}",
    ]
    for split in SPLITS:
        s = info["splits"][split]
        lines.append(f"  {split:8s} | {s['ids']:6d} | {s['images']:9d} | {s['clothes']:7d} | {s['cameras']:7d}")
    if "chance" in info:
        lines.append(f"  chance level ({info['chance_draws']} random rankings):")
        for m, c in info["chance"].items():
            lines.append(f"    {m:8s} mAP {c['mAP']:.1%}  rank-1 {c['rank1']:.1%} (sd {c['rank1_sd']:.1%})")
    return "\n".join(lines)


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 unreadable images, 2 bad dataset)."""
    parser = CLIParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="registered dataset name, e.g. ltcc, prcc, ccvid")
    parser.add_argument("--root", required=True, help="folder holding the dataset folder (or the dataset folder)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--check-images", action="store_true", help="also open every image of every split")
    parser.add_argument("--chance", type=int, default=0, metavar="N",
                        help="also score N random rankings with every protocol (chance level; image datasets)")
    args = parser.parse_args(argv)
    start_cli(stream=sys.stderr)  # stdout carries the table or the JSON
    if not os.path.isdir(args.root):
        # torchreid would otherwise try to download some of its own datasets into it.
        raise InputError(f"--root '{args.root}' does not exist or is not a folder")
    info = collect_info(args.dataset, args.root)
    ds = info.pop("_dataset")
    status = 0
    if args.check_images:
        errors, checked = check_images(ds)
        info["unreadable_images"] = len(errors)
        for msg in errors[:20]:
            logger.error("%s", msg)
        if errors:
            logger.error("%d unreadable image(s) of %d", len(errors), checked)
            status = 1
        else:
            logger.info("--check-images: all %d image files of train, query and gallery open", checked)
    if args.chance > 0:
        if info["kind"] == "video":
            raise InputError(f"--chance is for image datasets; '{args.dataset}' is a video dataset")
        info["chance_draws"] = args.chance
        from clip3dreid_plugin.study.chance import chance_level  # torch: only for --chance

        info["chance"] = chance_level(ds, info["eval_protocols"], args.chance)
    print(json.dumps(info, indent=2) if args.json else format_table(info))
    return status


if __name__ == "__main__":
    sys.exit(main())

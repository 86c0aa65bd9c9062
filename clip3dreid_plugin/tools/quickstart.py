"""The README's main command: build the default data, train the models, print a results table."""
from __future__ import annotations

import argparse
import logging
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence

logger = logging.getLogger("clip3dreid.quickstart")

__all__ = ["main"]

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def results_table(results: Dict[str, Dict[str, Dict[str, float]]], dataset: str) -> str:
    """Markdown table: one row per model, general and CC mAP / rank-1 where present."""
    protos = [p for p in ("general", "sc", "cc") if any(f"{p}_mAP" in r.get(dataset, {}) for r in results.values())]
    head = "| model | " + " | ".join(f"{p} mAP | {p} R1" for p in protos) + " |"
    sep = "|---" * (1 + 2 * len(protos)) + "|"
    rows = [head, sep]
    for model, res in results.items():
        m = res[dataset]
        rows.append(f"| {model} | " + " | ".join(f"{m[p + '_mAP']:.1%} | {m[p + '_rank1']:.1%}" for p in protos) + " |")
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from clip3dreid_plugin.data.toy_market import write_toy_market
    from clip3dreid_plugin.tools import train_net
    from clip3dreid_plugin.utils.runtime import quiet_torchreid_warnings, setup_logging

    p = argparse.ArgumentParser(description="Run the built-in default experiment end to end.")
    p.add_argument("--work-dir", default="work_dirs/quickstart", help="where data, caches and logs go")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=None, help="override the training budget (epochs)")
    args = p.parse_args(argv)
    quiet_torchreid_warnings()
    setup_logging(args.work_dir, "quickstart.log")

    root = osp.join(args.work_dir, "data")
    logger.info("[1/2] generating the toy Market-format dataset under %s", root)
    write_toy_market(root)
    results = {}
    cfg_file = osp.join(REPO, "configs", "toy", "resnet50_baseline_64x32.yaml")
    logger.info("[2/2] training torchreid's resnet50 baseline (%s)", cfg_file)
    opts = ["data.root", root]
    if args.epochs is not None:
        opts += ["train.max_epoch", str(args.epochs)]
    a = train_net.build_parser().parse_args(
        ["--config-file", cfg_file, "--device", args.device, "--output-dir", osp.join(args.work_dir, "resnet50"),
         *opts])
    results["resnet50"] = train_net.run(train_net.setup_cfg(a))
    table = results_table(results, "market1501")
    logger.info("results on the toy set:\n%s", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training curves from TensorBoard event files as CSV (``clip3dreid-export-curves``).

``tensorboard --logdir log/`` shows the curves interactively; this writes them as
``tag,step,value`` rows for papers and spreadsheets.
"""
from __future__ import annotations

import csv
import glob
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from clip3dreid_plugin.tools.common import CLIParser, cli_main

__all__ = ["read_scalars", "main"]


def read_scalars(logdir: str) -> Dict[str, List[Tuple[int, float]]]:
    """``tag -> [(step, value), ...]`` from every event file under ``logdir``.

    Raises:
        FileNotFoundError: no event file under ``logdir``.
    """
    # tensorboard is slow to import: after parsing
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(glob.glob(osp.join(logdir, "**", "events.out.tfevents*"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file under '{logdir}'")
    out: Dict[str, List[Tuple[int, float]]] = {}
    for f in files:
        acc = EventAccumulator(f, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = CLIParser(description="Export TensorBoard scalars (losses, lr, test metrics) to CSV.")
    p.add_argument("--logdir", required=True)
    p.add_argument("--output", required=True, help="CSV file")
    p.add_argument("--tags", nargs="*", default=None, help="only these tags (default: all)")
    args = p.parse_args(argv)
    scalars = read_scalars(args.logdir)
    with open(args.output, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["tag", "step", "value"])
        for tag in sorted(scalars):
            if args.tags and tag not in args.tags:
                continue
            for step, value in scalars[tag]:
                w.writerow([tag, step, value])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Builds ``synthcc``, the generated cloth-changing benchmark where identity = body shape.

Example (the quickstart's default: 60 identities x 3 outfits x 3 cameras x 2 poses = 1080 images)::

    clip3dreid-build-synthcc --root data
    clip3dreid-build-synthcc --root data --body-model /data/body_models --num-ids 100

Writes ``ROOT/synthcc/{train,query,gallery}/*.png`` and ``ROOT/synthcc/meta.json`` (see
``clip3dreid_plugin/body/synthcc.py``; ``datasets_ext/synthcc.py`` reads the set); train with
``data.sources [synthcc] data.root ROOT``. Without ``--body-model`` the license-free procedural body is written to
``ROOT/body_model`` first. Re-running the same command resumes an interrupted build, or does nothing when the set
is complete; other arguments rebuild it. Rendering is headless (EGL or OSMesa).
"""
from __future__ import annotations

import logging
import os.path as osp
import sys
from typing import Optional, Sequence

from clip3dreid_plugin.body.procedural import write_procedural_smpl
from clip3dreid_plugin.config.defaults import get_cfg
from clip3dreid_plugin.body.synthcc import build_synthcc
from clip3dreid_plugin.tools.common import CLIParser, cli_main, start_cli

logger = logging.getLogger("build_synthcc")


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input or environment)."""
    sc = get_cfg().synthcc  # the config's synthcc.* defaults, so the script and the quickstart agree
    parser = CLIParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="data root; the set goes to ROOT/synthcc")
    parser.add_argument("--body-model", default="",
                        help="folder with smpl/SMPL_{FEMALE,MALE}.pkl (default: write the procedural body "
                             "to ROOT/body_model)")
    parser.add_argument("--num-ids", type=int, default=sc.num_ids, help="identities, half train / half test")
    parser.add_argument("--outfits-per-id", type=int, default=sc.outfits_per_id, help="outfits per identity (>= 2)")
    parser.add_argument("--num-cameras", type=int, default=sc.num_cameras, help="cameras (>= 2)")
    parser.add_argument("--poses-per-view", type=int, default=sc.poses_per_view,
                        help="images per (identity, outfit, camera)")
    parser.add_argument("--height", type=int, default=128, help="image height")
    parser.add_argument("--width", type=int, default=64, help="image width")
    parser.add_argument("--seed", type=int, default=sc.seed, help="seed of every random choice")
    parser.add_argument("--beta-sigma", type=float, default=sc.beta_sigma,
                        help="sd of the identities' shape coefficients (spread of body shapes)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = parser.parse_args(argv)
    start_cli(stream=sys.stderr)

    body = args.body_model
    if not body:
        body = osp.join(args.root, "body_model")
        logger.info("writing the procedural SMPL-format body model to %s (use --body-model for SMPL)", body)
        write_procedural_smpl(body)
    meta = build_synthcc(args.root, body, num_ids=args.num_ids, outfits_per_id=args.outfits_per_id,
                         num_cameras=args.num_cameras, poses_per_view=args.poses_per_view, height=args.height,
                         width=args.width, seed=args.seed, progress=not args.no_progress,
                         beta_sigma=args.beta_sigma)
    counts = {s: sum(im["split"] == s for im in meta["images"]) for s in ("train", "query", "gallery")}
    logger.info("synthcc ready at %s: %d train / %d query / %d gallery images, %d identities, %d pool outfits",
                meta["dataset_dir"], counts["train"], counts["query"], counts["gallery"], len(meta["identities"]),
                len(meta["outfit_pool"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Renders the synthetic mesh set (SMPL bodies) used by CLIP3DReID's 3D regularisation (Design 3).

Example (paper setting, 500 + 500 subjects x 10 poses, student input size)::

    clip3dreid-render-meshset --body-model /data/body_models --num-female 500 --num-male 500 \
        --poses-per-subject 10 --out /data/synthetic_bodies

``--body-model`` is the root holding ``smpl/SMPL_{FEMALE,MALE}.pkl`` (official SMPL, or the procedural
stand-in written by ``clip3dreid-make-body-model``). The output folder gets ``images/*.png`` and one
``meta.npz`` (per image: file, betas [10], gender, pose id, camera yaw, the 16 descriptor labels; see
``clip3dreid_plugin/body/meshset_plan.py``). Re-running the same command resumes an interrupted run.
Rendering is headless (EGL or OSMesa; see ``clip3dreid_plugin/body/render.py``). ``clip3dreid-render-synthetic``,
the command's name before the mesh set was told apart from the synthcc benchmark, runs this main for one more
release and says so.
"""
from __future__ import annotations

import logging
import os.path as osp
import sys
from typing import Optional, Sequence

from clip3dreid_plugin.body.meshset import render_synthetic_set
from clip3dreid_plugin.body.meshset_plan import read_synthetic_meta
from clip3dreid_plugin.tools.common import CLIParser, cli_main, start_cli

logger = logging.getLogger("render_meshset")

#: The command's old name, kept as an alias (setup.py's COMMANDS) for one release.
OLD_COMMAND = "clip3dreid-render-synthetic"


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input or environment)."""
    parser = CLIParser(description=__doc__.split("\n")[0])
    parser.add_argument("--body-model", required=True, help="root folder with smpl/SMPL_{FEMALE,MALE}.pkl")
    parser.add_argument("--num-female", type=int, default=500, help="female subjects")
    parser.add_argument("--num-male", type=int, default=500, help="male subjects")
    parser.add_argument("--poses-per-subject", type=int, default=10, help="renders per subject")
    parser.add_argument("--out", required=True, help="output folder (images/ + meta.npz)")
    parser.add_argument("--height", type=int, default=384, help="image height (the student's input height)")
    parser.add_argument("--width", type=int, default=192, help="image width")
    parser.add_argument("--seed", type=int, default=0, help="seed of shapes, poses and cameras")
    parser.add_argument("--sigma", type=float, default=1.0, help="standard deviation of the sampled betas")
    parser.add_argument("--pose-file", default=None, help=".npz with body_pose [K, 69] added to the built-in poses")
    parser.add_argument("--thresholds-from", default=None,
                        help="meta.npz of an earlier set whose descriptor thresholds to reuse "
                             "(default: medians of this set's population)")
    parser.add_argument("--ext", choices=["png", "jpg"], default="png", help="image format")
    parser.add_argument("--overwrite", action="store_true",
                        help="re-render a folder holding another set (default: refuse it, naming what changed)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = parser.parse_args(argv)
    start_cli(stream=sys.stderr)
    if osp.basename(sys.argv[0]) == OLD_COMMAND:
        logger.warning("%s is deprecated and will be removed in the next release: use clip3dreid-render-meshset",
                       OLD_COMMAND)

    thresholds = read_synthetic_meta(args.thresholds_from)["thresholds"] if args.thresholds_from else None
    meta = render_synthetic_set(
        args.body_model, args.out, args.num_female, args.num_male, args.poses_per_subject, height=args.height,
        width=args.width, seed=args.seed, pose_file=args.pose_file, sigma=args.sigma, thresholds=thresholds,
        ext=args.ext, on_stale="rebuild" if args.overwrite else "error", show_progress=not args.no_progress)
    logger.info("%d images (%d subjects) in %s; metadata: %s/meta.npz", len(meta["files"]),
                len(set(meta["subject"].tolist())), args.out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

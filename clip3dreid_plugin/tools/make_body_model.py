"""Writes the license-free procedural body model in SMPL's file format (for the offline quickstart).

Example::

    clip3dreid-make-body-model --out body_models            # ~1000 vertices
    clip3dreid-make-body-model --out body_models_6890 --num-vertices 6890

Creates ``OUT/smpl/SMPL_{NEUTRAL,MALE,FEMALE}.pkl``; pass ``OUT`` as ``body.model_dir`` or
``--body-model``. It is a mannequin on SMPL's skeleton with ten SMPL-like shape directions (see
``clip3dreid_plugin/body/procedural.py``), not SMPL: for the paper's setting use the official SMPL
files (https://smpl.is.tue.mpg.de).
"""
from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

from clip3dreid_plugin.body.procedural import write_procedural_smpl
from clip3dreid_plugin.errors import InputError
from clip3dreid_plugin.tools.common import CLIParser, cli_main, start_cli

logger = logging.getLogger("make_body_model")


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = CLIParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="root folder; files go to OUT/smpl/")
    parser.add_argument("--num-vertices", type=int, default=1000, help="approximate vertices per mesh")
    args = parser.parse_args(argv)
    start_cli(stream=sys.stderr)
    if args.num_vertices < 300:
        raise InputError(f"--num-vertices must be at least 300 (got {args.num_vertices})")
    write_procedural_smpl(args.out, num_vertices=args.num_vertices)
    return 0


if __name__ == "__main__":
    sys.exit(main())

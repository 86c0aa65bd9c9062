#!/usr/bin/env python
"""Wrapper of ``clip3dreid_plugin.tools.eval_shape`` (installed as ``clip3dreid-eval-shape``)."""
import sys

from clip3dreid_plugin.tools.eval_shape import main

if __name__ == "__main__":
    sys.exit(main())

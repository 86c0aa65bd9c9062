#!/usr/bin/env python
"""Wrapper of ``clip3dreid_plugin.tools.make_body_model`` (installed as ``clip3dreid-make-body-model``)."""
import sys

from clip3dreid_plugin.tools.make_body_model import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Wrapper of ``clip3dreid_plugin.tools.render_meshset`` (installed as ``clip3dreid-render-meshset``)."""
import sys

from clip3dreid_plugin.tools.render_meshset import main

if __name__ == "__main__":
    sys.exit(main())

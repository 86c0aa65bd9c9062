#!/usr/bin/env python
"""Wrapper of ``clip3dreid_plugin.tools.compare`` (installed as ``clip3dreid-compare``)."""
import sys

from clip3dreid_plugin.tools.compare import main

if __name__ == "__main__":
    sys.exit(main())

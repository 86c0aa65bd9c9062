#!/usr/bin/env python
"""Wrapper of ``clip3dreid_plugin.tools.study`` (installed as ``clip3dreid-study``)."""
import sys

from clip3dreid_plugin.tools.study import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Wrapper of ``clip3dreid_plugin.tools.build_synthcc`` (installed as ``clip3dreid-build-synthcc``)."""
import sys

from clip3dreid_plugin.tools.build_synthcc import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Wrapper of ``clip3dreid_plugin.tools.label_descriptors`` (installed as ``clip3dreid-label``)."""
import sys

from clip3dreid_plugin.tools.label_descriptors import main

if __name__ == "__main__":
    sys.exit(main())

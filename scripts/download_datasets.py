#!/usr/bin/env python
"""Wrapper of ``clip3dreid_plugin.tools.download_datasets`` (installed as ``clip3dreid-download``)."""
import sys

from clip3dreid_plugin.tools.download_datasets import main

if __name__ == "__main__":
    sys.exit(main())

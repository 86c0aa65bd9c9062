#!/usr/bin/env python
"""Wrapper of ``clip3dreid_plugin.tools.dataset_info`` (installed as ``clip3dreid-dataset-info``)."""
import sys

from clip3dreid_plugin.tools.dataset_info import main

if __name__ == "__main__":
    sys.exit(main())

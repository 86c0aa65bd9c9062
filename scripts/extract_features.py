#!/usr/bin/env python
"""See ``clip3dreid_plugin/tools/extract_features.py``."""
import sys

from clip3dreid_plugin.tools.extract_features import main

if __name__ == "__main__":
    sys.exit(main())

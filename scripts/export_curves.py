#!/usr/bin/env python
"""See ``clip3dreid_plugin/tools/export_curves.py``."""
import sys

from clip3dreid_plugin.tools.export_curves import main

if __name__ == "__main__":
    sys.exit(main())

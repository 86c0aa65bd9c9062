#!/usr/bin/env python
"""See ``clip3dreid_plugin/tools/export_onnx.py``."""
import sys

from clip3dreid_plugin.tools.export_onnx import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""See ``clip3dreid_plugin/tools/visualize_transport.py``."""
import sys

from clip3dreid_plugin.tools.visualize_transport import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Training / labelling / evaluation throughput on one device. See ``clip3dreid_plugin/tools/benchmark.py``."""
import sys

from clip3dreid_plugin.tools.benchmark import main

if __name__ == "__main__":
    sys.exit(main())

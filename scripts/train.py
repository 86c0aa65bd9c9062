#!/usr/bin/env python
"""Train or evaluate a torchreid / CLIP3DReID model. See ``clip3dreid_plugin/tools/train_net.py``."""
import sys

from clip3dreid_plugin.tools.train_net import main

if __name__ == "__main__":
    sys.exit(main())

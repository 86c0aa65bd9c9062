#!/usr/bin/env python
"""Wrapper of ``clip3dreid_plugin.tools.blur_faces`` (installed as ``clip3dreid-blur-faces``)."""
import sys

from clip3dreid_plugin.tools.blur_faces import main

if __name__ == "__main__":
    sys.exit(main())

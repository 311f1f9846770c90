#!/usr/bin/env python3
"""Entry point: `python exporter.py --config config.yaml` or `python exporter.py --demo`."""

import sys

from qoder_exporter.cli import main

if __name__ == "__main__":
    sys.exit(main())

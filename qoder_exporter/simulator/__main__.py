"""`python -m qoder_exporter.simulator`."""

import sys

from .cli import main

sys.exit(main())

"""Entry point of ``python -m mqcore_client``."""

import sys

from ._cli import main

sys.exit(main())

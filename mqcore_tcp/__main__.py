"""Entry point of ``python -m mqcore_tcp``."""

import sys

from ._cli import main

sys.exit(main())

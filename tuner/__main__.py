"""``python -m tuner``: the command line (same as the ``tuner`` script)."""

import sys

from tuner.cli import main

sys.exit(main())

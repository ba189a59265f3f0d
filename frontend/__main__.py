"""``python -m frontend``: the same as the ``edge-agent`` command."""

import sys

from frontend.cli import main

sys.exit(main())

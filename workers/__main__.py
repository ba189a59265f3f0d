"""Entry point: ``python -m workers`` (started by the frontend's supervisor)."""

import sys

from workers.main import main

sys.exit(main())

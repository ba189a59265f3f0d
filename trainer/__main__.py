"""Allows `python -m trainer GOOD_DIR --out DIR --name NAME`."""

from trainer.cli import main

raise SystemExit(main())

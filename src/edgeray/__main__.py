"""`python -m edgeray` runs the command-line interface."""

from edgeray.cli import main

raise SystemExit(main())

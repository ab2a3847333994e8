"""`python -m edgeslm` is the `edgeslm` command."""

from edgeslm.cli import main

raise SystemExit(main())

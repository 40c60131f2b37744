"""`python -m cbmir` is the `cbmir` command."""

from cbmir.cli import main

raise SystemExit(main())

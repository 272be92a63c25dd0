"""`python -m adaptcast`: the same command line as the `adaptcast` script, for child processes
started with the parent's own interpreter."""

from adaptcast.cli import main

raise SystemExit(main())

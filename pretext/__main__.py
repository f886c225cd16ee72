"""`python -m pretext` is `cebench`."""

from .cli import main

raise SystemExit(main())

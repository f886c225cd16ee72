"""Where cebench keeps what it makes once and reuses: `$CEBENCH_CACHE`, else `~/.cache/cebench`."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$CEBENCH_CACHE` (an empty value counts as unset), else ~/.cache/cebench; `~` expanded."""
    return Path(os.environ.get("CEBENCH_CACHE") or Path.home() / ".cache" / "cebench").expanduser()

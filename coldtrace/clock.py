"""Wall-clock time as coldtrace stores it everywhere: UTC milliseconds since the epoch."""

from __future__ import annotations

import time


def wall_ms() -> int:
    """Now, in UTC milliseconds (the unit of every ``*_ms`` field and column)."""
    return time.time_ns() // 1_000_000

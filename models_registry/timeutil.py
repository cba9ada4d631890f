"""The one clock the shell reads (tests travel it); the pure core is always passed `now`."""
from __future__ import annotations

import datetime as dt

UTC = dt.timezone.utc


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)

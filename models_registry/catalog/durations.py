"""Ollama's durations (``keep_alive``, ``OLLAMA_KEEP_ALIVE``): Go duration strings or seconds.

Pure (standard library only): the profile validates an endpoint's ``keep_alive`` with it, the
Ollama simulator and the replay read it the same way.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

FOREVER = math.inf

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any) -> float | None:
    """Ollama's keep_alive: None (absent), seconds as a number, or a Go duration string.

    Returns seconds; ``math.inf`` (FOREVER) for any negative value; 0 means unload when idle.
    Numeric strings ("300", "-1") are read as seconds, as Ollama's OLLAMA_KEEP_ALIVE does.
    Raises ValueError with Go's message for anything else.
    """
    if value is None:
        return None
    seconds = parse_duration(value)
    return FOREVER if seconds < 0 else seconds


def parse_duration(value: Any) -> float:
    """Seconds (a number or a numeric string) or a Go duration string ("90s", "10m", "1h30m")
    -> seconds, sign kept. Raises ValueError with Go's message for anything else (NaN included)."""
    if isinstance(value, bool):
        raise ValueError(f"time: invalid duration {json.dumps(value)}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_go_duration(text)
    else:
        raise ValueError(f"time: invalid duration {json.dumps(value)}")
    if math.isnan(seconds):
        raise ValueError("time: invalid duration \"NaN\"")
    return seconds


def _parse_go_duration(text: str) -> float:
    sign = 1.0
    body = text
    if body[:1] in "+-":
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_RE.match(body, pos)
        if not m:
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


def keeps_forever(keep_alive: Any) -> bool:
    """Whether an endpoint's keep_alive keeps models for ever (negative: keep-warm). An
    unreadable value is not forever (Ollama would refuse it and use its default)."""
    try:
        return parse_keep_alive(keep_alive) == FOREVER
    except ValueError:
        return False

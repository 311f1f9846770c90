"""Timestamps and ids as the API writes them: RFC 3339, UUIDv7-style ids, cron text."""

from __future__ import annotations

import calendar
import datetime
import re
import time
from typing import Any

JSON = dict[str, Any]

NS = 1_000_000_000
MS = 1_000_000
INF = 1 << 62  # "never" as an int, so event times stay integer nanoseconds
POW10: tuple[int, ...] = tuple(int(10**i) for i in range(10))

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:[Zz]|([+\- ])(\d{2}):(\d{2}))\Z"
)


def to_ns(t: float) -> int:
    """Convert unix seconds to integer nanoseconds."""
    return round(t * NS)


def fmt(ns: int, whole: bool = False) -> str:
    """Format ns as RFC 3339 UTC, Go RFC3339Nano style (trailing zeros trimmed) unless whole."""
    sec, frac = divmod(ns, NS)
    minute, second = divmod(sec, 60)
    head = _MINUTES.get(minute)
    if head is None:
        head = _minute_text(minute)
    text = head + _SECONDS[second]
    if frac and not whole:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


# Large worlds render millions of timestamps from a few days: each minute's text is made once.
_MINUTES: dict[int, str] = {}
_SECONDS = tuple(f"{s:02d}" for s in range(60))


def _minute_text(minute: int) -> str:
    """ "YYYY-MM-DDTHH:MM:" of a minute since the epoch."""
    if len(_MINUTES) > 100_000:
        _MINUTES.clear()
    text = _MINUTES[minute] = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(minute * 60))
    return text


def parse_rfc3339(text: str) -> int | None:
    """Parse an RFC 3339 timestamp (0-9 fractional digits) to unix ns, or None if malformed."""
    m = _RFC3339.match(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, sec = (int(m.group(i)) for i in range(1, 7))
    try:
        datetime.datetime(year, month, day, hour, minute, sec)
    except ValueError:
        return None
    ns = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0)) * NS
    if m.group(7):
        ns += int(m.group(7).ljust(9, "0"))
    if m.group(8):
        # a raw "+" in a query string arrives decoded as a space
        sign = -1 if m.group(8) == "-" else 1
        ns -= sign * (int(m.group(9)) * 3600 + int(m.group(10)) * 60) * NS
    return ns


def new_id(prefix: str, ms: int, rand: int) -> str:
    """Build a UUIDv7-style id: 48-bit unix ms, version 7, variant 8-b, 74 random bits."""
    rand_a = (rand >> 62) & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    tail = rand_b & ((1 << 60) - 1)
    return f"{prefix}{ms & 0xFFFFFFFFFFFF:012x}7{rand_a:03x}{0x8 | (rand_b >> 60):x}{tail:015x}"


def quantize(ns: int, digits: int) -> int:
    """Drop sub-second precision below `digits` fractional digits (0, 3, 6 or 9)."""
    q = POW10[9 - digits]
    return ns - ns % q


def cron_for(interval_s: float, phase_s: float = 0.0) -> str:
    """Return a plausible 5-field cron expression for a fixed interval fired at a phase."""
    # 5-field cron has minute resolution; sub-minute demo intervals are shown as "every minute"
    # and intervals that cron cannot express exactly get the nearest minute step.
    minutes = max(1, round(interval_s / 60))
    if minutes == 1:
        return "* * * * *"
    if minutes < 60:
        return f"*/{minutes} * * * *"
    at = round(phase_s / 60)
    if minutes % 1440 == 0:
        days = minutes // 1440
        when = f"{at % 60} {at // 60 % 24}"
        return f"{when} * * *" if days == 1 else f"{when} */{days} * *"
    if minutes % 60 == 0:
        hours = minutes // 60
        return f"{at % 60} * * * *" if hours == 1 else f"{at % 60} */{hours} * * *"
    return f"{minutes % 60} * * * *"

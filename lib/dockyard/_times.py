"""Docker's timestamps as aware datetimes."""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["docker_time_ns", "parse_docker_time"]


_FRACTION = re.compile(r"\.(\d+)")
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def parse_docker_time(value: object) -> datetime | None:
    """Docker's RFC 3339 timestamps (nanoseconds, `Z`); None for the `0001-01-01` sentinel."""
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return None
    # Python takes at most microseconds: cut the nanoseconds, keep the zone after them.
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), value.replace("Z", "+00:00"))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def docker_time_ns(value: str) -> int | None:
    """An RFC 3339 timestamp to the nanosecond (a log line's), as nanoseconds since the
    epoch; None when it is not one."""
    match = _STAMP.fullmatch(value)
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    try:
        moment = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    return int(moment.timestamp()) * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))

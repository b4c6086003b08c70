"""Docker's timestamps as aware datetimes."""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["parse_docker_time"]


_FRACTION = re.compile(r"\.(\d+)")


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

"""Text shared by the commands' output: durations, sizes, counts and plain tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from collections.abc import Sequence


def fmt_s(seconds: float | None) -> str:
    """A duration for people: `4.2s`, `3m07s`, `2h05m`; `-` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_size(size: int | None) -> str:
    """A byte count in binary units: `512B`, `3.4MiB`; `-` when unknown."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{size}B"


def count_of(count: int, noun: str) -> str:
    """`1 job`, `2 jobs`."""
    return f"{count} {noun}{'s' if count != 1 else ''}"


def print_plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Left-aligned columns separated by two spaces; trailing empty columns dropped."""
    keep = len(headers)
    while keep > 1 and all(not row[keep - 1] for row in rows):
        keep -= 1
    table = [list(headers[:keep]), *[list(row[:keep]) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(keep)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip(), file=out)

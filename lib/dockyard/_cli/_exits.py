"""Exit statuses, the refusal that exits 2, and the `dockyard: ...` lines on stderr."""

from __future__ import annotations

import sys

from .._errors import UsageError

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_JOBS_FAILED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "UsageError",
    "say",
]

EXIT_OK = 0
EXIT_JOBS_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def say(message: str) -> None:
    """One line to the operator on stderr, prefixed with the command's name."""
    print(f"dockyard: {message}", file=sys.stderr)

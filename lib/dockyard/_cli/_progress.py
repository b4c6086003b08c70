"""Progress of `dockyard run` on stderr: what every view shows, and the plain one (a line
per start and finish, for logs and pipes). The live rich view is in `_rich`."""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Protocol, TextIO

from ._batch import BatchTracker, JobEvent, status_label

if TYPE_CHECKING:
    import logging
    from collections.abc import Iterator, Sequence

_WRITE_LOCK = threading.Lock()


def write_line(out: TextIO, text: str) -> None:
    """One whole line, flushed: progress lines and `-v`'s job lines come from different
    threads, and `print` writes the text and its newline apart."""
    with _WRITE_LOCK:
        out.write(text + "\n")
        out.flush()


class Display(Protocol):
    """A progress view of a running batch."""

    def running(self, tracker: BatchTracker) -> AbstractContextManager[None]:
        """Shows the batch while the block runs."""
        ...

    def events(self, events: Sequence[JobEvent]) -> None:
        """Reports jobs that changed state."""
        ...

    def message(self, text: str) -> None:
        """A line of its own, such as the interrupt notice."""
        ...

    def log_handler(self) -> logging.Handler | None:
        """Where log lines go without disturbing the view; None: plain stderr."""
        ...


class JobLines:
    """What both views share: the time since the batch began, job ids aligned, and the
    detail of each change."""

    def __init__(self, snapshot_prefix: str) -> None:
        self._snapshot_prefix = snapshot_prefix
        self._t0 = time.monotonic()
        self._width = 0

    def _align(self, tracker: BatchTracker) -> None:
        self._width = max(len(state.job_id) for state in tracker.states)

    def _elapsed_s(self) -> float:
        return time.monotonic() - self._t0

    def _detail(self, event: JobEvent) -> str:
        """One progress line's detail for a job that just changed state."""
        state, status = event.state, event.status
        worker, outcome = state.worker, state.outcome
        if status == "running" and worker is not None:
            warm = self._snapshot_prefix and worker.image.startswith(self._snapshot_prefix)
            suffix = f"  (warm start from {worker.image})" if warm else ""
            return worker.container_name + suffix
        if status == "error":
            return f"could not start: {state.error}"
        if outcome is None:
            return ""
        return f"{outcome.describe()} after {state.duration_text}"


class PlainDisplay(JobLines):
    """Progress as one line per start and finish, for logs and pipes."""

    def __init__(self, out: TextIO | None, snapshot_prefix: str) -> None:
        super().__init__(snapshot_prefix)
        self._out = out  # None: --progress none

    @contextmanager
    def running(self, tracker: BatchTracker) -> Iterator[None]:
        self._align(tracker)
        yield

    def events(self, events: Sequence[JobEvent]) -> None:
        if self._out is None:
            return
        for event in events:
            elapsed = self._elapsed_s()
            label = "started" if event.status == "running" else status_label(event.status)
            detail = self._detail(event)
            line = f"[{elapsed:7.1f}s] {label:<9} {event.state.job_id:<{self._width}}  {detail}"
            write_line(self._out, line.rstrip())

    def message(self, text: str) -> None:
        if self._out is not None:
            write_line(self._out, text)

    def log_handler(self) -> logging.Handler | None:
        return None

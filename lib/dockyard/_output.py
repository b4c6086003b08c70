"""A worker's output delivered: masked lines to the host's listener, the tail, the counts.

The lines come from `_output_lines` (frames decoded, lines assembled and masked).
Delivery (`OutputPipe`): one reader per worker (a daemon thread) turns frames into masked
lines, counts them, keeps the last `tail_lines` in a ring (`log_tail`) and queues them for
the host's listener. Delivery runs on the hub's executor, in order per worker; when the
listener is slower than the worker, the queue holds up to `buffer_lines` lines and
`buffer_bytes` of them (their lengths: a worker printing long lines fills the bytes first),
then new lines are dropped and counted (`dockyard_log_lines_dropped_total`). The reader
never waits for the listener, so a launch or an exit never does either.

A pipe knows how far delivery got (`delivered`), for the manager that adopts the worker
after this one (`_output_marks`). `_output_hub` opens the pipes and owns their threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ._output_lines import STREAM_NAMES, STREAMS, LineAssembler, Stream

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from ._listener import SafeListener
    from ._models import ActiveWorker
    from ._secrets import Masker

__all__ = [
    "AttachedOutput",
    "Delivered",
    "Frame",
    "OutputCounters",
    "OutputPipe",
]

log = logging.getLogger("dockyard.output")

# A worker printing as fast as it can outruns a listener that keeps up otherwise while the
# launch is still under way, or while the host is loaded: 20,000 short lines in a burst
# overran 10,000 on a loaded two-core machine. 30,000 short lines hold about 1.7 MiB.
DEFAULT_BUFFER_LINES = 30_000
# What the queued lines of one worker may hold (their lengths summed): 30,000 lines of up
# to 64 KiB would be 1.9 GiB, so long lines are bounded by size before they are by count.
DEFAULT_BUFFER_BYTES = 4 * 1024 * 1024
_COUNT_BATCH = 256  # lines counted per counter update: one update per line costs
# `(stream type, bytes)`; from the engine's log, one entry with its engine time (ns) too.
Frame = tuple[int, bytes] | tuple[int, bytes, int | None]


@dataclass(frozen=True)
class Delivered:
    """How far delivery got, per stream: its last delivered line's position and engine time
    (ns; when the output carried times), and how many lines were read."""

    positions: dict[str, int]
    marks: dict[str, int]
    read: dict[str, int]


class OutputCounters(Protocol):
    """The metrics an output pipe reports."""

    def log_lines(self, stream: str, count: int) -> None: ...
    def log_lines_dropped(self, count: int) -> None: ...


class _NoCounters:
    def log_lines(self, stream: str, count: int) -> None:
        pass

    def log_lines_dropped(self, count: int) -> None:
        pass


_Run = tuple[str, list[str], list[int | None] | None, Sequence[int]]


@dataclass(eq=False)
class OutputPipe:
    """One worker's output: read by `run_reader` (on a thread of its own), kept in a
    ring, delivered in order to `sink` on `executor` once the worker is `bind`-ed.

    `close_source` wakes a blocked read (the reader then ends); `finish` waits, bounded,
    for the reader to reach the end of the output and for the lines queued to go out.
    """

    masker: Masker = field(repr=False)
    tail_lines: int
    sink: SafeListener | None  # where delivered lines go (None: nobody listens)
    executor: Executor | None
    counters: OutputCounters = field(default_factory=_NoCounters)
    buffer_lines: int = DEFAULT_BUFFER_LINES
    buffer_bytes: int = DEFAULT_BUFFER_BYTES
    job_id: str = ""
    close_source: Callable[[], None] | None = None
    _tail: deque[str] = field(init=False)
    # Runs of one stream's lines: (stream, lines, each one's engine time if any is known,
    # each one's position in its stream). A run is queued, taken and delivered as one: a
    # chatty worker's lines cost no lock, queue entry or tuple each.
    _queue: deque[_Run] = field(default_factory=deque, init=False)
    _queued_lines: int = field(default=0, init=False)
    _queued_bytes: int = field(default=0, init=False)  # the queued lines' lengths, summed
    _lock: threading.Condition = field(default_factory=threading.Condition, init=False)
    _worker: ActiveWorker | None = field(default=None, init=False)
    _draining: bool = field(default=False, init=False)
    _ended: threading.Event = field(default_factory=threading.Event, init=False)
    _cancelled: bool = field(default=False, init=False)
    dropped: int = field(default=0, init=False)
    lines: int = field(default=0, init=False)
    worker_id: str = ""
    on_detach: Callable[[OutputPipe], None] | None = None
    # Read from the worker's first line (positions count from it), or followed after
    # `after`, the previous manager's marks: delivery starts out as far as they say.
    after: Mapping[str, int] | None = None
    _positions: dict[str, int] = field(default_factory=dict, init=False)  # lines read, per stream
    _delivered: dict[str, int] = field(default_factory=dict, init=False)
    _delivered_marks: dict[str, int] = field(default_factory=dict, init=False)
    _detached: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._tail = deque(maxlen=max(0, self.tail_lines))
        self._delivered_marks = dict(self.after or {})

    # -- the reader's side --------------------------------------------------------------

    def run_reader(self, frames: Iterable[Frame]) -> None:
        """Read every frame until the end of the output (or an error); never raises.

        When the stream breaks, the lines assembled so far (an unfinished one too) are kept.
        """
        counts = {name: 0 for name in STREAMS}
        assembler = LineAssembler(self.masker)
        # The engine times of the log entries that ended a line, per stream: each line
        # assembled takes its own (a line held back for masking keeps its time).
        marks: dict[str, deque[int]] = {name: deque() for name in STREAMS}
        latest: int | None = None

        def take(found: list[tuple[Stream, list[str]]]) -> None:
            for stream, lines in found:
                if not lines:
                    continue
                pending = marks[stream]
                times: list[int | None] | None = None
                if pending or latest is not None:  # from a log: each line takes its time
                    times = [pending.popleft() if pending else latest for _ in lines]
                self._add_run(stream, lines, times)
                count = counts[stream] = counts[stream] + len(lines)
                if count >= _COUNT_BATCH:
                    self.counters.log_lines(stream, count)
                    counts[stream] = 0

        try:
            for frame in frames:
                stream_type, data = frame[0], frame[1]
                mark = frame[2] if len(frame) == 3 else None
                name = STREAM_NAMES.get(stream_type)
                if mark is not None and name is not None:
                    latest = mark
                    if data.endswith(b"\n"):
                        marks[name].append(mark)
                take(assembler.feed(stream_type, data))
        except Exception as err:
            if not self._cancelled:
                log.info(
                    "worker output stream ended early",
                    extra={"job_id": self.job_id, "error_type": type(err).__name__},
                )
        finally:
            try:
                take(assembler.flush())
            finally:
                for stream, count in counts.items():
                    if count:
                        self.counters.log_lines(stream, count)
                self._ended.set()
                with self._lock:
                    self._lock.notify_all()

    def add_lines(self, batch: list[tuple[Stream, str, int | None]]) -> None:
        """Masked lines (with their engine times), in order: `_add_run` of each run of one
        stream's lines."""
        at = 0
        while at < len(batch):
            stream = batch[at][0]
            end = at + 1
            while end < len(batch) and batch[end][0] == stream:
                end += 1
            run = batch[at:end]
            self._add_run(stream, [line for _, line, _ in run], [mark for _, _, mark in run])
            at = end

    def _add_run(self, stream: str, lines: list[str], marks: list[int | None] | None) -> None:
        """One stream's masked lines (with their engine times, if known): into the tail
        and, when there is a listener, the queue; one lock for the lot."""
        dropped = 0
        count = len(lines)
        with self._lock:
            self.lines += count
            self._tail.extend(lines)
            first = self._positions.get(stream, 0) + 1
            self._positions[stream] = first + count - 1
            deliver = self.sink is not None and self.executor is not None and not self._cancelled
            if deliver:
                size = sum(map(len, lines))
                if (
                    self._queued_lines + count <= self.buffer_lines
                    and self._queued_bytes + size <= self.buffer_bytes
                ):
                    # Room for all (the common case): queued as they are.
                    self._queue.append((stream, lines, marks, range(first, first + count)))
                    self._queued_lines += count
                    self._queued_bytes += size
                else:
                    dropped = self._add_some(stream, lines, marks, first)
                    self.dropped += dropped
            schedule = deliver and bool(self._queue) and self._worker is not None
            schedule = schedule and not self._draining
            if schedule:
                self._draining = True
        if dropped:
            self.counters.log_lines_dropped(dropped)
        if schedule:
            self._schedule()

    def _add_some(
        self, stream: str, lines: list[str], marks: list[int | None] | None, first: int
    ) -> int:
        """The lines of a run that fit, line by line, queued; how many did not (under the
        lock). Full by count, or by size (an empty queue takes any line: one never waits
        for a cap smaller than itself)."""
        kept: list[str] = []
        kept_marks: list[int | None] = []
        positions: list[int] = []
        queued_lines, queued = self._queued_lines, self._queued_bytes
        for index, line in enumerate(lines):
            size = len(line)
            if queued_lines >= self.buffer_lines or (
                queued + size > self.buffer_bytes and queued_lines
            ):
                continue
            kept.append(line)
            kept_marks.append(marks[index] if marks is not None else None)
            positions.append(first + index)
            queued_lines += 1
            queued += size
        if kept:
            self._queue.append((stream, kept, kept_marks if marks is not None else None, positions))
        self._queued_lines, self._queued_bytes = queued_lines, queued
        return len(lines) - len(kept)

    # -- delivery -----------------------------------------------------------------------

    def bind(self, worker: ActiveWorker) -> None:
        """The worker started and is known: lines queued so far, and all later, go out."""
        with self._lock:
            self._worker = worker
            schedule = bool(self._queue) and not self._draining and not self._cancelled
            if schedule:
                self._draining = True
        if schedule:
            self._schedule()

    def _schedule(self) -> None:
        assert self.executor is not None
        try:
            self.executor.submit(self._drain)
        except RuntimeError:  # the hub closed: nobody to deliver to any more
            with self._lock:
                self._draining = False
                self._queue.clear()
                self._queued_lines = self._queued_bytes = 0
                self._lock.notify_all()

    def _stopped(self) -> bool:
        return self._cancelled

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue or self._cancelled or self._worker is None:
                    self._draining = False
                    self._lock.notify_all()
                    return
                stream, lines, marks, positions = self._queue.popleft()
                self._queued_lines -= len(lines)
                self._queued_bytes -= sum(map(len, lines))
                worker = self._worker
            if self.sink is None:
                continue
            # Detached or failed (`_stopped`): the rest of the run is not delivered. The
            # safe listener never raises.
            done = self.sink.output_lines(worker, stream, lines, self._stopped)
            if done:
                self._delivered[stream] = positions[done - 1]  # one store: read under the lock
                for mark_ns in reversed(marks[:done] if marks is not None else ()):
                    if mark_ns is not None:
                        self._delivered_marks[stream] = mark_ns
                        break

    # -- the end ------------------------------------------------------------------------

    def finish(self, timeout_s: float, delivery_s: float = 1.0) -> tuple[str, ...]:
        """The tail, once the output ended (waiting up to `timeout_s`) and the lines queued
        went out (up to `delivery_s` more: a slow listener only loses them, it never holds
        the outcome up for long)."""
        self._ended.wait(max(0.0, timeout_s))
        deadline = time.monotonic() + max(0.0, delivery_s)
        with self._lock:
            while (self._queue or self._draining) and not self._cancelled:
                left = deadline - time.monotonic()
                if left <= 0 or self._worker is None:
                    break
                self._lock.wait(left)
            return tuple(self._tail)

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    @property
    def worker(self) -> ActiveWorker | None:
        return self._worker

    @property
    def from_start(self) -> bool:
        return self.after is None

    @property
    def detached(self) -> bool:
        return self._detached

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def delivered(self) -> Delivered | None:
        """How far delivery got; None when no line reached the listener (nor did a
        previous manager's)."""
        with self._lock:
            if not self._delivered and not self._delivered_marks:
                return None
            marks, read = dict(self._delivered_marks), dict(self._positions)
            return Delivered(dict(self._delivered), marks, read)

    def tail(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._tail)

    def detach(self) -> None:
        """Stop reading and delivering: the worker runs on, another manager may adopt it."""
        self._detached = True  # before the cancel ends the reader (see `RunningMarks`)
        self.cancel()
        if self.on_detach is not None:
            self.on_detach(self)

    def cancel(self) -> None:
        """Stop reading and delivering (a launch failed, or the worker was detached)."""
        with self._lock:
            self._cancelled = True
            self._queue.clear()
            self._queued_lines = self._queued_bytes = 0
            self._lock.notify_all()
        if self.close_source is not None:
            try:
                self.close_source()
            except Exception:
                log.debug("closing an output stream failed", exc_info=True)


@dataclass(frozen=True)
class AttachedOutput:
    """A worker's output stream as a driver opened it: `(stream type, bytes)` pieces (with
    the engine's time, from a log) until the end of the output, and how to end the stream
    from another thread."""

    frames: Iterable[Frame]
    close: Callable[[], None]

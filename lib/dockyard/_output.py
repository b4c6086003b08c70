"""A worker's output, from the engine's raw bytes to delivered lines.

The way in: Docker's multiplexed attach/log stream (`FrameDecoder`: 8-byte frame headers,
stream type and size, split across arbitrary chunks), or `(stream, bytes)` chunks read
with docker-py's own frame helpers. Per stream, bytes are cut into lines (`LineSplitter`:
`\\n` removed, a trailing `\\r` too, a line longer than `MAX_LINE_BYTES` split at a
character boundary) and only then decoded as UTF-8 with replacement, so a character split
across two writes decodes whole.

Every line is masked (`LineMasker`) before anything sees it: the host's listener, the log,
the tail and a file. A secret the worker wrote in two writes is one line by then. A secret
spread over a line break is covered in two ways:

- a secret value that holds line breaks itself (a PEM certificate) is masked line by line:
  each of its lines is masked as a value of its own;
- a secret the worker printed with a line break inserted (`print(s[:n]); print(s[n:])`,
  or a wrapped line): each line is masked joined to the end of the line before it, so the
  part after the break is masked; and a line whose end could begin a secret (its last
  `MIN_HELD_PREFIX` or more characters are a beginning of one) is held back until the next
  line shows whether it does, so the part before the break is masked too. A held line is
  released with the next line or at the end of the output. Secrets longer than
  `MAX_JOINED_SECRET` characters are not followed across a line break.

Delivery (`OutputPipe`): one reader per worker (a daemon thread) turns frames into masked
lines, counts them, keeps the last `tail_lines` in a ring (`log_tail`) and queues them for
the host's listener. Delivery runs on the hub's executor, in order per worker; when the
listener is slower than the worker, the queue holds up to `buffer_lines` lines, then new
lines are dropped and counted (`dockyard_log_lines_dropped_total`). The reader never waits
for the listener, so a launch or an exit never does either.
"""

from __future__ import annotations

import codecs
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from docker.utils.socket import STDERR, STDOUT

from ._models import ActiveWorker, WorkerLifecycleListener
from ._secrets import MASK, MIN_SUBSTRING_LENGTH, Masker

__all__ = [
    "MAX_LINE_BYTES",
    "STREAM_NAMES",
    "FrameDecoder",
    "LineAssembler",
    "LineMasker",
    "LineSplitter",
    "OutputCounters",
    "OutputPipe",
    "OutputSink",
    "Stream",
    "lines_of_frames",
    "start_reader",
    "tail_extra",
    "wants_output",
]

log = logging.getLogger("dockyard.output")

Stream = Literal["stdout", "stderr"]
STREAM_NAMES: dict[int, Stream] = {STDOUT: "stdout", STDERR: "stderr"}
STREAMS: tuple[Stream, ...] = ("stdout", "stderr")

MAX_LINE_BYTES = 64 * 1024
# A held line's end must show at least this much of a secret: fewer characters give
# nothing away, and holding every line that ends in a common letter would delay output.
MIN_HELD_PREFIX = 3
MAX_JOINED_SECRET = 256
DEFAULT_BUFFER_LINES = 10_000
_COUNT_BATCH = 256  # lines counted per counter update: one update per line costs
# The tail in a Sentry event: its last characters (an event is not a log store).
TAIL_EXTRA_CHARS = 16 * 1024

# Docker's frame header, as docker-py's `next_frame_header` reads it.
_HEADER = struct.Struct(">BxxxL")


class FrameDecoder:
    """Docker's multiplexed stream, decoded incrementally: `feed` any chunk of bytes,
    get the `(stream type, payload)` pieces it completes (a frame's payload may come in
    several pieces). Stream types other than stdout and stderr (stdin echo) are dropped."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._stream = 0
        self._left = 0  # payload bytes of the current frame still to come

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        self._buffer += chunk
        pieces: list[tuple[int, bytes]] = []
        while self._buffer:
            if self._left == 0:
                if len(self._buffer) < _HEADER.size:
                    break
                self._stream, self._left = _HEADER.unpack_from(self._buffer)
                del self._buffer[: _HEADER.size]
                continue
            take = min(self._left, len(self._buffer))
            payload = bytes(self._buffer[:take])
            del self._buffer[:take]
            self._left -= take
            if self._stream in STREAM_NAMES:
                pieces.append((self._stream, payload))
        return pieces

    @property
    def pending(self) -> int:
        """Bytes held back: an incomplete header (a stream cut mid-frame ends here)."""
        return len(self._buffer)


class LineSplitter:
    """One stream's bytes cut into lines: newline and a trailing `\\r` removed, a line
    longer than `max_bytes` split before a character that would not fit. Decoding comes
    after, on whole lines."""

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max(4, max_bytes)
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self._partial += data[start:end]
            lines.extend(self._cut(bytes(self._partial), final=True))
            self._partial.clear()
            start = end + 1
        if start < len(data):
            self._partial += data[start:]
            if len(self._partial) > self._max:
                whole = self._cut(bytes(self._partial), final=False)
                lines.extend(whole)
        return lines

    def flush(self) -> list[bytes]:
        """The last line, when the output ended without a newline."""
        if not self._partial:
            return []
        rest = bytes(self._partial)
        self._partial.clear()
        return self._cut(rest, final=True)

    def _cut(self, line: bytes, *, final: bool) -> list[bytes]:
        """Split `line` into pieces of at most `max_bytes`; when not `final`, keep the
        remainder (shorter than a piece) as the partial line."""
        pieces: list[bytes] = []
        while len(line) > self._max:
            cut = self._max
            # Back up to a character's first byte (never more than a character's length).
            while cut > self._max - 3 and line[cut] & 0xC0 == 0x80:
                cut -= 1
            pieces.append(line[:cut])
            line = line[cut:]
        if final:
            if line.endswith(b"\r"):
                line = line[:-1]
            pieces.append(line)
        else:
            self._partial = bytearray(line)
        return pieces


def _decode(line: bytes) -> str:
    return codecs.decode(line, "utf-8", errors="replace")


class LineMasker:
    """Masks one stream's lines in order, following secrets across a line break.

    `push(line)` returns the lines ready to go out (zero, one or two: a line may be held
    until the next one, see the module doc); `flush()` the held one at the end.
    """

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        pieces = {
            piece.strip("\r")
            for value in masker.values
            if "\n" in value
            for piece in value.split("\n")
        }
        pieces = {piece for piece in pieces if len(piece) >= MIN_SUBSTRING_LENGTH}
        self._lines_masker = masker.merged(Masker(frozenset(pieces))) if pieces else masker
        joinable = {
            value
            for value in set(masker.values) | pieces
            if "\n" not in value and MIN_SUBSTRING_LENGTH <= len(value) <= MAX_JOINED_SECRET
        }
        self._joinable = tuple(sorted(joinable))
        self._window = max((len(value) for value in joinable), default=1) - 1
        self._prev = ""  # the previous line's last characters, unmasked
        # The previous line, unmasked, not yet out, and the spans to mask in it so far.
        self._held: tuple[str, list[tuple[int, int]]] | None = None

    @property
    def active(self) -> bool:
        return bool(self._masker)

    def push(self, line: str) -> list[str]:
        if not self.active:
            return [line]
        prev = self._prev
        spans = self._lines_masker.spans(prev + line)
        out: list[str] = []
        if self._held is not None:
            held, held_spans = self._held
            crossing = _shifted(spans, len(held) - len(prev), len(held))
            out.append(_apply(held, held_spans + crossing))
            self._held = None
        own = _shifted(spans, -len(prev), len(line))
        self._prev = line[-self._window :] if self._window > 0 else ""
        if self._may_begin_secret(line):
            self._held = (line, own)
        else:
            out.append(_apply(line, own))
        return out

    def flush(self) -> list[str]:
        """The held line, if any (the output ended)."""
        held, self._held = self._held, None
        self._prev = ""
        return [] if held is None else [_apply(*held)]

    def _may_begin_secret(self, line: str) -> bool:
        """The line ends with a beginning (`MIN_HELD_PREFIX`+ characters, not the whole)
        of a secret: the next line may hold the rest."""
        if not self._joinable or len(line) < MIN_HELD_PREFIX:
            return False
        window = line[-self._window :]
        for value in self._joinable:
            head = value[:MIN_HELD_PREFIX]
            start = max(0, len(window) - len(value) + 1)
            at = window.find(head, start)
            while at >= 0:
                if value.startswith(window[at:]):
                    return True
                at = window.find(head, at + 1)
        return False


def _shifted(spans: list[tuple[int, int]], offset: int, length: int) -> list[tuple[int, int]]:
    """`spans` moved by `offset` and clipped to `[0, length)`."""
    moved = []
    for start, end in spans:
        lo, hi = max(0, start + offset), min(length, end + offset)
        if lo < hi:
            moved.append((lo, hi))
    return moved


def _apply(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with each span replaced by the mask; overlapping spans merge."""
    if not spans:
        return text
    parts: list[str] = []
    at = 0
    for begin, end in sorted(spans):
        if end <= at:
            continue
        parts.append(text[at : max(begin, at)])
        parts.append(MASK)
        at = end
    parts.append(text[at:])
    return "".join(parts)


class LineAssembler:
    """Both streams of one worker: `(stream type, bytes)` pieces of any size in,
    `(stream, masked line)` out, in order; `flush` gives each stream's unfinished line."""

    def __init__(self, masker: Masker, max_bytes: int = MAX_LINE_BYTES) -> None:
        self._splitters = {name: LineSplitter(max_bytes) for name in STREAMS}
        self._maskers = {name: LineMasker(masker) for name in STREAMS}

    def feed(self, stream_type: int, data: bytes) -> list[tuple[Stream, str]]:
        name = STREAM_NAMES.get(stream_type)
        if name is None:
            return []
        masker = self._maskers[name]
        return [
            (name, line)
            for raw in self._splitters[name].feed(data)
            for line in masker.push(_decode(raw))
        ]

    def flush(self) -> list[tuple[Stream, str]]:
        out: list[tuple[Stream, str]] = []
        for name in STREAMS:
            masker = self._maskers[name]
            for raw in self._splitters[name].flush():
                out.extend((name, line) for line in masker.push(_decode(raw)))
            out.extend((name, line) for line in masker.flush())
        return out


def lines_of_frames(
    frames: Iterable[tuple[int, bytes]], masker: Masker, max_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[Stream, str]]:
    """`(stream, masked line)` in order, from `(stream type, bytes)` pieces of any size;
    each stream's unfinished last line comes at the end."""
    assembler = LineAssembler(masker, max_bytes)
    for stream_type, data in frames:
        yield from assembler.feed(stream_type, data)
    yield from assembler.flush()


def tail_extra(tail: Iterable[str]) -> str:
    """The tail as one string for a Sentry extra: its last `TAIL_EXTRA_CHARS` characters."""
    text = "\n".join(tail)
    return text if len(text) <= TAIL_EXTRA_CHARS else "…" + text[-TAIL_EXTRA_CHARS:]


def wants_output(listener: WorkerLifecycleListener | None) -> bool:
    """Whether the host's listener does anything with output lines (else none are queued)."""
    if listener is None:
        return False
    hook = getattr(type(listener), "on_worker_output", None)
    return hook is not None and hook is not WorkerLifecycleListener.on_worker_output


class OutputCounters(Protocol):
    """The metrics an output pipe reports."""

    def log_lines(self, stream: str, count: int) -> None: ...
    def log_lines_dropped(self, count: int) -> None: ...


class OutputSink(Protocol):
    """Where delivered lines go: the safe listener's `output`."""

    def output(self, worker: ActiveWorker, stream: str, line: str) -> None: ...


class _NoCounters:
    def log_lines(self, stream: str, count: int) -> None:
        pass

    def log_lines_dropped(self, count: int) -> None:
        pass


@dataclass(eq=False)
class OutputPipe:
    """One worker's output: read by `run_reader` (on a thread of its own), kept in a
    ring, delivered in order to `sink` on `executor` once the worker is `bind`-ed.

    `close_source` wakes a blocked read (the reader then ends); `finish` waits, bounded,
    for the reader to reach the end of the output and for the lines queued to go out.
    """

    masker: Masker = field(repr=False)
    tail_lines: int
    sink: OutputSink | None
    executor: Executor | None
    counters: OutputCounters = field(default_factory=_NoCounters)
    buffer_lines: int = DEFAULT_BUFFER_LINES
    job_id: str = ""
    close_source: Callable[[], None] | None = None
    _tail: deque[str] = field(init=False)
    _queue: deque[tuple[str, str]] = field(default_factory=deque, init=False)
    _lock: threading.Condition = field(default_factory=threading.Condition, init=False)
    _worker: ActiveWorker | None = field(default=None, init=False)
    _draining: bool = field(default=False, init=False)
    _ended: threading.Event = field(default_factory=threading.Event, init=False)
    _cancelled: bool = field(default=False, init=False)
    dropped: int = field(default=0, init=False)
    lines: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._tail = deque(maxlen=max(0, self.tail_lines))

    # -- the reader's side --------------------------------------------------------------

    def run_reader(self, frames: Iterable[tuple[int, bytes]]) -> None:
        """Read every frame until the end of the output (or an error); never raises.

        When the stream breaks, the lines assembled so far (an unfinished one too) are kept.
        """
        counts = {name: 0 for name in STREAMS}
        assembler = LineAssembler(self.masker)

        def take(found: list[tuple[Stream, str]]) -> None:
            for stream, line in found:
                self.add(stream, line)
                counts[stream] += 1
                if counts[stream] >= _COUNT_BATCH:
                    self.counters.log_lines(stream, counts[stream])
                    counts[stream] = 0

        try:
            for stream_type, data in frames:
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

    def add(self, stream: str, line: str) -> None:
        """One masked line: into the tail and, when there is a listener, the queue."""
        schedule = False
        with self._lock:
            self.lines += 1
            if self._tail.maxlen:
                self._tail.append(line)
            if self.sink is None or self.executor is None or self._cancelled:
                return
            if len(self._queue) >= self.buffer_lines:
                self.dropped += 1
                dropped = True
            else:
                self._queue.append((stream, line))
                dropped = False
                schedule = self._worker is not None and not self._draining
                if schedule:
                    self._draining = True
        if dropped:
            self.counters.log_lines_dropped(1)
        elif schedule:
            self._schedule()

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
                self._lock.notify_all()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue or self._cancelled or self._worker is None:
                    self._draining = False
                    self._lock.notify_all()
                    return
                stream, line = self._queue.popleft()
                worker = self._worker
            if self.sink is not None:
                self.sink.output(worker, stream, line)  # the safe listener never raises

    # -- the end ------------------------------------------------------------------------

    def finish(self, timeout_s: float) -> tuple[str, ...]:
        """Wait up to `timeout_s` for the output's end and its delivery; the tail so far."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        self._ended.wait(timeout_s)
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

    def tail(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._tail)

    def cancel(self) -> None:
        """Stop reading and delivering (a launch failed, or the worker was detached)."""
        with self._lock:
            self._cancelled = True
            self._queue.clear()
            self._lock.notify_all()
        if self.close_source is not None:
            try:
                self.close_source()
            except Exception:
                log.debug("closing an output stream failed", exc_info=True)


def start_reader(pipe: OutputPipe, frames: Iterable[tuple[int, bytes]], name: str) -> Any:
    """Run `pipe.run_reader(frames)` on a daemon thread of its own; the thread."""
    thread = threading.Thread(target=pipe.run_reader, args=(frames,), name=name, daemon=True)
    thread.start()
    return thread

"""How far a running worker's output was delivered, kept for the manager that adopts it.

A manager that closes or dies leaves its running workers behind; the one that adopts them
(`adopt_workers()`) goes on delivering their output from the engine's log after the last
line the listener got. The mark is, per stream, that line's engine time (ns): per stream,
since a line held back (masking) can be overtaken by the other stream's. Output read from
a log carries the times; output attached before the start does not, and its mark is found
in the engine's log (`Driver.output_mark`) from how many lines of each stream went out.

Two writers: while workers run, `RunningMarks` leaves each one's mark about once a second
(the hub's mark thread calls it), so a manager that is killed costs its adopter at most
that second's lines again; a mark for output without times is then the line counts, which
the adopter turns into times once (reading the log once a second would cost far more).
At a clean close, `MarkKeeper` leaves the exact mark of each worker left running.

The marks live in Redis at `redis_url`, where the router keeps its state and the next
router finds them, per router instance and worker, for as long as the worker may run. The
adopter takes a mark (and removes it); a worker's mark goes when its output ends. No mark
(none left, Redis unreachable, the log not readable) means the adopter delivers the
worker's output from its start.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from ._output_lines import STREAMS

if TYPE_CHECKING:
    from ._models import ActiveWorker
    from ._output import OutputPipe

__all__ = [
    "MARK_KEY_PREFIX",
    "Mark",
    "MarkKeeper",
    "OutputMarks",
    "RedisOutputMarks",
    "RunningMarks",
    "after_mark",
]

log = logging.getLogger("dockyard.output")

MARK_KEY_PREFIX = "dockyard:output-mark"
# A mark outlives its worker's deadline by this much (the kill and its grace).
_MARK_SLACK_S = 3600.0
# After a failed write, running marks wait this long before the next: an unreachable Redis
# must not hold up every tick (a write waits up to its socket timeout).
_RETRY_AFTER_S = 30.0

MarkOf = Callable[[str, Mapping[str, int]], Mapping[str, int]]


@dataclass(frozen=True)
class Mark:
    """Where a worker's delivered output ends: per stream, the engine time (ns) of its last
    delivered line (`times`), or how many of its lines went out since the worker's start
    (`lines`, for output read without times)."""

    times: dict[str, int] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        # Times as a flat object, as marks have always been kept; counts under "lines".
        return json.dumps(self.times if self.times else {"lines": self.lines})

    @classmethod
    def from_json(cls, value: str | bytes) -> Mark | None:
        try:
            found = json.loads(value)
        except (TypeError, ValueError):
            return None
        if not isinstance(found, dict):
            return None
        counts = found.get("lines")
        if isinstance(counts, dict):
            lines = {k: v for k, v in counts.items() if k in STREAMS and _count(v)}
            return cls(lines=lines) if lines else None
        times = {k: v for k, v in found.items() if k in STREAMS and _count(v)}
        return cls(times=times) if times else None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def after_mark(worker_id: str, mark: Mark, mark_of: MarkOf) -> dict[str, int]:
    """Per stream, the engine time after which the adopter delivers. Line counts are found
    in the engine's log (`mark_of`, which may raise); a stream none of whose lines went out,
    or whose counted line the log does not show, goes from its start (0)."""
    if mark.times:
        return dict(mark.times)
    counted = {stream: count for stream, count in mark.lines.items() if count > 0}
    found = mark_of(worker_id, counted) if counted else {}
    return {stream: found.get(stream, 0) if stream in counted else 0 for stream in STREAMS}


class OutputMarks(Protocol):
    """Where marks are left for the next manager of the same router instance."""

    def put(self, worker_id: str, mark: Mark, ttl_s: float) -> bool:
        """Leave `mark` for `ttl_s`; False when it could not be left."""
        ...

    def take(self, worker_id: str) -> Mark | None:
        """The worker's mark, removed; None when there is none."""
        ...

    def drop(self, worker_id: str) -> bool:
        """Remove the worker's mark; False when that could not be done."""
        ...


class RedisOutputMarks:
    """Marks in Redis at `redis_url`, one key per worker: `PREFIX:{instance}:{worker id}`.

    One client, made at the first use and shared by the threads that keep and take marks.
    Failures are logged (a warning for the first of a run of them: running marks retry
    every half minute) and never raised: a missing mark only costs lines delivered again.
    """

    def __init__(self, redis_url: str, instance_id: str) -> None:
        self._redis_url = redis_url
        self._prefix = f"{MARK_KEY_PREFIX}:{instance_id}:"
        self._lock = threading.Lock()
        self._client: Any = None
        self._closed = False
        self._failing = False

    def __repr__(self) -> str:
        return f"RedisOutputMarks(prefix={self._prefix!r})"

    def put(self, worker_id: str, mark: Mark, ttl_s: float) -> bool:
        value = mark.to_json()
        key = self._prefix + worker_id
        done = self._use("keep", lambda client: client.set(key, value, ex=max(1, int(ttl_s))))
        return bool(done)

    def take(self, worker_id: str) -> Mark | None:
        def take(client: Any) -> Any:
            pipe = client.pipeline()
            pipe.get(self._prefix + worker_id)
            pipe.delete(self._prefix + worker_id)
            return pipe.execute()[0]

        value = self._use("read", take)
        return Mark.from_json(value) if value is not None else None

    def drop(self, worker_id: str) -> bool:
        done = self._use("remove", lambda client: client.delete(self._prefix + worker_id))
        return done is not None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                log.debug("closing the output marks' Redis client failed", exc_info=True)

    def _connected(self) -> Any:
        with self._lock:
            if self._closed:
                raise RuntimeError("the output marks are closed")
            if self._client is None:
                import redis  # noqa: PLC0415  (optional extra)

                self._client = redis.Redis.from_url(
                    self._redis_url, socket_timeout=5.0, socket_connect_timeout=2.0
                )
            return self._client

    def _use(self, what: str, fn: Callable[[Any], Any]) -> Any:
        if not self._redis_url.strip():
            return None
        try:
            result = fn(self._connected())
        except Exception as err:  # Redis down or not installed: no mark
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
            log.log(
                level,
                "could not %s where worker output was delivered to; an adopter delivers "
                "from the worker's start",
                what,
                extra={"error_type": type(err).__name__, "error": str(err)},
            )
            return None
        self._failing = False
        return result


def _ttl(worker: ActiveWorker, now: datetime) -> float:
    return max(60.0, (worker.deadline - now).total_seconds() + _MARK_SLACK_S)


class MarkKeeper:
    """The output hub's `keep`: each still running worker's mark, left in `marks`."""

    def __init__(
        self,
        marks: OutputMarks,
        mark_of: MarkOf,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._marks = marks
        self._mark_of = mark_of
        self._clock = clock

    def __call__(self, pipes: Iterable[OutputPipe]) -> None:
        for pipe in pipes:
            worker, delivered = pipe.worker, pipe.delivered()
            if worker is None or delivered is None:
                continue  # nothing reached the listener: the next one starts at the start
            try:
                found = delivered.marks or self._mark_of(pipe.worker_id, delivered.positions)
            except Exception as err:
                log.warning(
                    "could not find how far a worker's output was delivered; an adopter "
                    "delivers it from the worker's start",
                    extra={"job_id": pipe.job_id, "error": str(err)},
                )
                continue
            marks = _every_stream(dict(found), delivered.positions, delivered.read)
            if marks:
                self._marks.put(pipe.worker_id, Mark(times=marks), _ttl(worker, self._clock()))


class RunningMarks:
    """The output hub's `marking`, called about once a second with its pipes: leaves the
    mark of each running worker whose delivery moved on since the last, and removes the
    mark of each whose output ended. Pipes detached are left to `MarkKeeper`."""

    def __init__(
        self,
        marks: OutputMarks,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._marks = marks
        self._clock = clock
        self._monotonic = monotonic
        self._written: dict[OutputPipe, Mark] = {}  # held until their mark is removed
        self._retry_at = 0.0

    def __call__(self, pipes: Iterable[OutputPipe]) -> None:
        for pipe in set(pipes) | set(self._written):
            ended = pipe.ended  # before `detached`: a detach ends the reader too
            if pipe.detached:
                self._written.pop(pipe, None)
            elif self._monotonic() < self._retry_at:
                continue  # Redis failed a moment ago: this pipe's turn comes again
            elif ended or pipe.cancelled:
                if pipe not in self._written:
                    continue
                if self._marks.drop(pipe.worker_id):
                    del self._written[pipe]
                else:
                    self._retry_at = self._monotonic() + _RETRY_AFTER_S
            else:
                self._write(pipe)

    def _write(self, pipe: OutputPipe) -> None:
        worker, delivered = pipe.worker, pipe.delivered()
        if worker is None or delivered is None:
            return
        if delivered.marks:
            times = _every_stream(dict(delivered.marks), delivered.positions, delivered.read)
            mark = Mark(times=times)
        elif pipe.from_start:
            mark = Mark(lines={s: delivered.positions.get(s, 0) for s in STREAMS})
        else:
            return  # followed without times: no count from the start to give
        if self._written.get(pipe) == mark:
            return
        if self._marks.put(pipe.worker_id, mark, _ttl(worker, self._clock())):
            self._written[pipe] = mark
        else:
            self._retry_at = self._monotonic() + _RETRY_AFTER_S


def _every_stream(
    marks: dict[str, int], positions: Mapping[str, int], read: Mapping[str, int]
) -> dict[str, int]:
    """A mark for each stream: a stream none of whose lines was read owes nothing before
    the others' marks; one read but not (all) marked goes again from the start (0)."""
    if not marks:
        return {}
    for stream in STREAMS:
        if stream in marks:
            continue
        marks[stream] = (
            0 if read.get(stream, 0) or positions.get(stream, 0) else min(marks.values())
        )
    return marks

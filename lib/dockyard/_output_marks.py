"""How far a running worker's output was delivered, left by a closing manager for the next.

A manager that closes leaves its running workers behind; the one that adopts them
(`adopt_workers()`) goes on delivering their output from the engine's log after the last
line the listener got. The mark is, per stream, that line's engine time (ns): per stream,
since a line held back (masking) can be overtaken by the other stream's. Output read from
a log carries the times; output attached before the start does not, and the closing
manager asks the engine's log for the time of the line at its delivered position
(`Driver.output_mark`).

The marks live in Redis at `redis_url`, where the router keeps its state and the next
router finds them, per router instance and worker, for as long as the worker may run. The
adopter takes a mark (and removes it). No mark (none left, Redis unreachable, the log not
readable) means the adopter delivers the worker's output from its start.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from ._output import OutputPipe
from ._output_lines import STREAMS

__all__ = ["MARK_KEY_PREFIX", "MarkKeeper", "OutputMarks", "RedisOutputMarks"]

log = logging.getLogger("dockyard.output")

MARK_KEY_PREFIX = "dockyard:output-mark"
# A mark outlives its worker's deadline by this much (the kill and its grace).
_MARK_SLACK_S = 3600.0


class OutputMarks(Protocol):
    """Where marks are left for the next manager of the same router instance."""

    def put(self, worker_id: str, marks: Mapping[str, int], ttl_s: float) -> None: ...
    def take(self, worker_id: str) -> dict[str, int] | None:
        """The worker's marks (engine ns per stream), removed; None when there are none."""
        ...


class RedisOutputMarks:
    """Marks in Redis at `redis_url`, one key per worker: `PREFIX:{instance}:{worker id}`.

    A connection per use: marks are written once per close and read once per adoption.
    Failures are logged and never raised: a missing mark only costs lines delivered again.
    """

    def __init__(self, redis_url: str, instance_id: str) -> None:
        self._redis_url = redis_url
        self._prefix = f"{MARK_KEY_PREFIX}:{instance_id}:"

    def __repr__(self) -> str:
        return f"RedisOutputMarks(prefix={self._prefix!r})"

    def put(self, worker_id: str, marks: Mapping[str, int], ttl_s: float) -> None:
        value = json.dumps(dict(marks))
        self._use("keep", lambda client: client.set(self._prefix + worker_id, value, ex=int(ttl_s)))

    def take(self, worker_id: str) -> dict[str, int] | None:
        def take(client: Any) -> Any:
            pipe = client.pipeline()
            pipe.get(self._prefix + worker_id)
            pipe.delete(self._prefix + worker_id)
            return pipe.execute()[0]

        value = self._use("read", take)
        try:
            marks = json.loads(value) if value is not None else None
        except (TypeError, ValueError):
            return None
        if not isinstance(marks, dict):
            return None
        return {k: v for k, v in marks.items() if k in STREAMS and isinstance(v, int)} or None

    def _use(self, what: str, fn: Callable[[Any], Any]) -> Any:
        if not self._redis_url.strip():
            return None
        try:
            import redis  # noqa: PLC0415  (optional extra)

            with redis.Redis.from_url(self._redis_url, socket_timeout=5.0) as client:
                return fn(client)
        except Exception as err:  # Redis down or not installed: no mark
            log.warning(
                "could not %s where worker output was delivered to; an adopter delivers "
                "from the worker's start",
                what,
                extra={"error_type": type(err).__name__, "error": str(err)},
            )
            return None


class MarkKeeper:
    """The output hub's `keep`: each still running worker's mark, left in `marks`."""

    def __init__(
        self,
        marks: OutputMarks,
        mark_of: Callable[[str, Mapping[str, int]], Mapping[str, int]],
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
                ttl = (worker.deadline - self._clock()).total_seconds() + _MARK_SLACK_S
                self._marks.put(pipe.worker_id, marks, max(60.0, ttl))


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

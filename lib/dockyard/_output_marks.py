"""How far a running worker's output was delivered, left by a closing manager for the next.

A manager that closes leaves its running workers behind; the one that adopts them
(`adopt_workers()`) goes on delivering their output from the engine's log after the last
line the listener got. That line's engine time (ns) is the mark. Output read from a log
carries it; output attached before the start does not, and the closing manager asks the
engine's log for the time of the line at its delivered position (`Driver.output_mark`).

The marks live in Redis at `redis_url`, where the router keeps its state and the next
router finds them, per router instance and worker, for as long as the worker may run. The
adopter takes a mark (and removes it). No mark (none left, Redis unreachable, the log not
readable) means the adopter delivers the worker's output from its start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from ._output import OutputPipe

__all__ = ["MARK_KEY_PREFIX", "MarkKeeper", "OutputMarks", "RedisOutputMarks"]

log = logging.getLogger("dockyard.output")

MARK_KEY_PREFIX = "dockyard:output-mark"
# A mark outlives its worker's deadline by this much (the kill and its grace).
_MARK_SLACK_S = 3600.0


class OutputMarks(Protocol):
    """Where marks are left for the next manager of the same router instance."""

    def put(self, worker_id: str, mark_ns: int, ttl_s: float) -> None: ...
    def take(self, worker_id: str) -> int | None:
        """The worker's mark, removed; None when there is none."""
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

    def put(self, worker_id: str, mark_ns: int, ttl_s: float) -> None:
        self._use(
            "keep", lambda client: client.set(self._prefix + worker_id, str(mark_ns), ex=int(ttl_s))
        )

    def take(self, worker_id: str) -> int | None:
        def take(client: Any) -> Any:
            pipe = client.pipeline()
            pipe.get(self._prefix + worker_id)
            pipe.delete(self._prefix + worker_id)
            return pipe.execute()[0]

        value = self._use("read", take)
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None

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
        mark_of: Callable[[str, Mapping[str, int]], int | None],
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
                mark = delivered.mark_ns
                if mark is None:
                    mark = self._mark_of(pipe.worker_id, delivered.positions)
            except Exception as err:
                log.warning(
                    "could not find how far a worker's output was delivered; an adopter "
                    "delivers it from the worker's start",
                    extra={"job_id": pipe.job_id, "error": str(err)},
                )
                continue
            if mark is None:
                continue
            ttl = (worker.deadline - self._clock()).total_seconds() + _MARK_SLACK_S
            self._marks.put(pipe.worker_id, mark, max(60.0, ttl))

"""Timeouts: one daemon `threading.Timer` per worker, and the kill path it (or a caller) takes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from ._backend import EngineBackend
from ._docker import is_not_found
from ._sentry import Reporter, WorkerTimeoutError
from ._tracker import TrackedWorker, WorkerRegistry

__all__ = ["TimeoutController"]

log = logging.getLogger("dockyard.timeouts")

_KILL_RETRIES = 5  # further rounds of stop-then-kill when both failed (engine blip)
_KILL_RETRY_FIRST_S = 1.0


class TimeoutController:
    """Arms per-worker timers; on expiry reports and stops the container.

    The kill path only marks the worker and stops its container: the exit that follows is
    handled by the exit watcher, which turns it into the single `timed_out` outcome.
    """

    def __init__(
        self, docker: EngineBackend, registry: WorkerRegistry, reporter: Reporter, grace_s: float
    ) -> None:
        self._docker = docker
        self._registry = registry
        self._reporter = reporter
        self._grace_s = grace_s

    def arm(self, tracked: TrackedWorker, delay_s: float) -> None:
        self._schedule(tracked, delay_s, "timeout", self._expire, tracked)

    @staticmethod
    def _schedule(
        tracked: TrackedWorker, delay_s: float, kind: str, fn: Callable[..., None], *args: object
    ) -> None:
        """Make a daemon timer the worker's only pending timer (cleanup cancels it)."""
        timer = threading.Timer(max(0.0, delay_s), fn, args=args)
        timer.daemon = True
        timer.name = f"dockyard-{kind}-{tracked.job_id[:40]}"
        previous, tracked.timer = tracked.timer, timer
        if previous is not None:
            previous.cancel()  # e.g. a timeout still pending when a kill on request retries
        timer.start()
        if tracked.settled or tracked.detached:  # ended before its timer was in place
            timer.cancel()

    def _expire(self, tracked: TrackedWorker) -> None:
        if not self._registry.begin_kill(tracked):
            return  # exited, settled or detached meanwhile
        try:
            self._report_timeout(tracked)
        finally:  # whatever happens to the report, the overrunning worker is stopped
            self._stop(tracked)

    def _report_timeout(self, tracked: TrackedWorker) -> None:
        worker = tracked.worker
        elapsed_ms = int((datetime.now(UTC) - worker.started_at).total_seconds() * 1000)
        log.warning(
            "worker timed out; stopping it",
            extra={
                "job_id": worker.job_id,
                "container_id": worker.short_id,
                "duration_ms": elapsed_ms,
            },
        )
        self._reporter.report(
            WorkerTimeoutError(f"Worker timeout after {elapsed_ms}ms"),
            "worker_timeout",
            level="warning",
            tags={"jobType": worker.job_type},
            extras={"jobId": worker.job_id, "durationMs": elapsed_ms},
        )

    def kill(self, tracked: TrackedWorker) -> bool:
        """The kill path on demand; False when the worker already ended."""
        if not self._registry.begin_kill(tracked):
            return tracked.kill_started and not tracked.settled
        log.info("killing worker on request", extra={"job_id": tracked.job_id})
        self._stop(tracked)
        return True

    def _stop(self, tracked: TrackedWorker, attempt: int = 0) -> None:
        worker = tracked.worker
        try:
            self._docker.stop(worker.container_id, self._grace_s)  # SIGTERM, then SIGKILL
            return
        except Exception as err:
            if is_not_found(err):
                return  # already gone: the exit watcher reports it
            log.warning(
                "stopping a worker failed; sending SIGKILL",
                extra={"job_id": worker.job_id, "container_id": worker.short_id, "error": str(err)},
            )
        try:
            self._docker.kill(worker.container_id)
            return
        except Exception as err:
            if is_not_found(err):
                return
            log.warning(
                "killing a worker failed",
                extra={"job_id": worker.job_id, "container_id": worker.short_id, "error": str(err)},
            )
        self._retry_later(tracked, attempt)

    def _retry_later(self, tracked: TrackedWorker, attempt: int) -> None:
        """Try the kill path again: an overrunning worker must not keep its slot forever."""
        if attempt >= _KILL_RETRIES:
            log.error(
                "giving up stopping a worker; it keeps running until it exits",
                extra={"job_id": tracked.job_id, "container_id": tracked.worker.short_id},
            )
            return
        delay = _KILL_RETRY_FIRST_S * 2**attempt
        self._schedule(tracked, delay, "kill-retry", self._retry, tracked, attempt + 1)

    def _retry(self, tracked: TrackedWorker, attempt: int) -> None:
        if tracked.settled or tracked.detached or tracked.exited:
            return
        self._stop(tracked, attempt)

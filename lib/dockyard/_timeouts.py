"""Timeouts: one daemon `threading.Timer` per worker, and the kill path it (or a caller) takes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ._backend import EngineBackend
from ._docker import is_not_found
from ._loops import Activity, RetryPolicy
from ._sentry import Reporter, WorkerTimeoutError
from ._tracker import TrackedWorker

__all__ = ["TimeoutController"]

log = logging.getLogger("dockyard.timeouts")


@dataclass(eq=False)  # one controller per manager: identity, no field-wise ==
class TimeoutController:
    """Arms per-worker timers; on expiry reports and stops the container.

    The kill path only marks the worker and stops its container: the exit that follows is
    handled by the exit watcher, which turns it into the single `timed_out` outcome. A
    failing stop is retried under `kill_policy` (at least as long as a broken wait is), its
    back-offs end as soon as the worker exits or is detached.
    """

    docker: EngineBackend
    reporter: Reporter
    grace_s: float
    kill_policy: RetryPolicy
    _closing: threading.Event = field(default_factory=threading.Event, init=False)
    _busy: Activity = field(default_factory=Activity, init=False)  # timers inside their function

    def arm(self, tracked: TrackedWorker, delay_s: float) -> None:
        self._schedule(tracked, delay_s, "timeout", self._expire)

    def close(self) -> None:
        """No timer acts any more; waits for those already inside their function."""
        self._closing.set()
        self._busy.close()

    def _schedule(
        self,
        tracked: TrackedWorker,
        delay_s: float,
        kind: str,
        fn: Callable[[TrackedWorker], None],
    ) -> None:
        """Make a daemon timer the worker's only pending timer (cleanup cancels it)."""
        timer = threading.Timer(max(0.0, delay_s), self._guarded, args=(fn, tracked))
        timer.daemon = True
        timer.name = f"dockyard-{kind}-{tracked.job_id[:40]}"
        if tracked.set_timer(timer) and not self._closing.is_set():
            timer.start()

    def _guarded(self, fn: Callable[[TrackedWorker], None], tracked: TrackedWorker) -> None:
        with self._busy.enter() as allowed:
            if allowed:
                fn(tracked)

    def _expire(self, tracked: TrackedWorker) -> None:
        if not tracked.begin_kill():
            return  # exited, settled or detached meanwhile
        try:
            self._report_timeout(tracked)
        finally:  # whatever happens to the report, the overrunning worker is stopped
            self._kill_until_stopped(tracked)

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
        self.reporter.report(
            WorkerTimeoutError(f"Worker timeout after {elapsed_ms}ms"),
            "worker_timeout",
            level="warning",
            tags={"jobType": worker.job_type},
            extras={"jobId": worker.job_id, "durationMs": elapsed_ms},
        )

    def kill(self, tracked: TrackedWorker) -> bool:
        """The kill path on demand; False when the worker already exited or ended.

        A worker whose kill began earlier but which still runs gets its stop again.
        """
        if tracked.begin_kill():
            log.info("killing worker on request", extra={"job_id": tracked.job_id})
        elif tracked.may_stop():
            log.info("worker still running; stopping it again", extra={"job_id": tracked.job_id})
        else:
            return False
        if not self._stop_once(tracked):
            self._schedule(tracked, 0.0, "kill-retry", self._kill_until_stopped)
        return True

    def _kill_until_stopped(self, tracked: TrackedWorker) -> None:
        """Stop, else kill; again after each back-off while the worker runs."""
        run = self.kill_policy.begin(tracked.exited)
        while tracked.may_stop() and not self._closing.is_set():
            if self._stop_once(tracked):
                return
            if not run.sleep():
                break
        if tracked.may_stop() and not self._closing.is_set():
            log.error(
                "could not stop an overdue worker; the engine refuses stop and kill "
                "(check the engine, or stop the container by hand)",
                extra={"job_id": tracked.job_id, "container_id": tracked.worker.short_id},
            )

    def _stop_once(self, tracked: TrackedWorker) -> bool:
        """One round of stop-then-kill; True when the container is stopping or gone."""
        worker = tracked.worker
        try:
            self.docker.stop(worker.container_id, self.grace_s)  # SIGTERM, then SIGKILL
            return True
        except Exception as err:
            if is_not_found(err):
                return True  # already gone: the exit watcher reports it
            log.warning(
                "stopping a worker failed; sending SIGKILL",
                extra={"job_id": worker.job_id, "container_id": worker.short_id, "error": str(err)},
            )
        if self._closing.is_set() or not tracked.may_stop():
            return True
        try:
            self.docker.kill(worker.container_id)
            return True
        except Exception as err:
            if is_not_found(err):
                return True
            log.warning(
                "killing a worker failed; retrying",
                extra={"job_id": worker.job_id, "container_id": worker.short_id, "error": str(err)},
            )
        return False

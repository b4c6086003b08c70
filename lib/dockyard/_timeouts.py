"""Timeouts: the deadline kill, and the kill and cancel paths on demand.

A timer per worker; on expiry report and stop it, and keep trying for as long as a broken
wait is ridden out. The kill only marks the worker and stops its container: the exit that
follows is the exit watcher's (`_exit_handling`), which makes it the one outcome.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ._errors import (
    DockyardError,
    EngineNotFoundError,
    RetriesExhaustedError,
    WorkerTimeoutError,
)
from ._loops import Activity
from ._output_lines import tail_extra
from ._retry import RetryPolicy, call_with_retry
from ._tracker import log_ids

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._driver import Driver
    from ._sentry import Reporter
    from ._tracker import TrackedWorker

__all__ = ["TimeoutController"]


def _tail_extras(tracked: TrackedWorker) -> dict[str, str]:
    """`logTail`: the output so far (masked), when there is any."""
    tail = tracked.output.tail() if tracked.output is not None else ()
    return {"logTail": tail_extra(tail)} if tail else {}


kill_log = logging.getLogger("dockyard.timeouts")


@dataclass(eq=False)  # one controller per manager: identity, no field-wise ==
class TimeoutController:
    """Arms per-worker timers; on expiry reports and stops the container.

    The kill path only marks the worker and stops its container: the exit that follows is
    handled by the exit watcher, which turns it into the single `timed_out` outcome (or
    `cancelled`, for `cancel`). A
    failing stop is retried under `kill_policy` (at least as long as a broken wait is), its
    back-offs end as soon as the worker exits or is detached.
    """

    driver: Driver
    reporter: Reporter
    grace_s: float
    kill_policy: RetryPolicy
    _closing: threading.Event = field(default_factory=threading.Event, init=False)
    _busy: Activity = field(default_factory=Activity, init=False)  # timers inside their function
    # Cancels queued for one thread that starts their timers: a caller never waits for a
    # thread to start (slow on a loaded machine), only for a queue put.
    _cancels: queue.SimpleQueue[TrackedWorker | None] = field(
        default_factory=queue.SimpleQueue, init=False
    )
    _canceller: threading.Thread | None = field(default=None, init=False)
    _canceller_lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def arm(self, tracked: TrackedWorker, delay_s: float) -> None:
        self._schedule(tracked, delay_s, "timeout", self._expire)

    def close(self) -> None:
        """No timer acts any more; waits for those already inside their function."""
        self._closing.set()
        with self._canceller_lock:
            canceller = self._canceller
        if canceller is not None:
            self._cancels.put(None)
            canceller.join()
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
        kill_log.warning(
            "worker timed out; stopping it",
            extra=log_ids(worker, duration_ms=elapsed_ms),
        )
        self.reporter.report(
            WorkerTimeoutError(f"Worker timeout after {elapsed_ms}ms"),
            "worker_timeout",
            level="warning",
            tags={"jobType": worker.job_type},
            extras={"jobId": worker.job_id, "durationMs": elapsed_ms, **_tail_extras(tracked)},
        )

    def kill(self, tracked: TrackedWorker) -> bool:
        """The kill path on demand; False when the worker already exited or ended.

        A worker whose kill began earlier but which still runs gets its stop again.
        """
        if tracked.begin_kill():
            kill_log.info("killing worker on request", extra={"job_id": tracked.job_id})
        elif tracked.may_stop():
            kill_log.info(
                "worker still running; stopping it again", extra={"job_id": tracked.job_id}
            )
        else:
            return False
        try:
            self._stop_once(tracked)
        except DockyardError:
            self._schedule(tracked, 0.0, "kill-retry", self._kill_until_stopped)
        return True

    def cancel(self, tracked: TrackedWorker) -> bool:
        """The kill path, its exit ending `cancelled`, on a timer thread: returns at once.

        False when the worker already exited or ended. A worker whose kill (or timeout)
        began earlier keeps that kill's status and gets its stop again.
        """
        if tracked.begin_kill("cancelled"):
            kill_log.info("cancelling worker", extra={"job_id": tracked.job_id})
        elif not tracked.may_stop():
            return False
        with self._canceller_lock:
            if self._closing.is_set():
                return True  # closing: the worker is detached, its container left running
            if self._canceller is None:
                self._canceller = threading.Thread(
                    target=self._start_cancels, name="dockyard-cancel", daemon=True
                )
                self._canceller.start()
        self._cancels.put(tracked)
        return True

    def _start_cancels(self) -> None:
        while (tracked := self._cancels.get()) is not None:
            try:
                self._schedule(tracked, 0.0, "cancel", self._kill_until_stopped)
            except Exception as err:  # no thread to be had: the next cancel may get one
                kill_log.warning(
                    "could not start stopping a cancelled worker (no thread); cancel it again",
                    extra=log_ids(tracked.worker, error=str(err)),
                )

    def _kill_until_stopped(self, tracked: TrackedWorker) -> None:
        """Stop, else kill; again after each back-off while the worker runs."""
        try:
            call_with_retry(self.kill_policy, lambda: self._stop_once(tracked), stop=tracked.exited)
            return
        except (RetriesExhaustedError, DockyardError):
            pass
        if tracked.may_stop() and not self._closing.is_set():
            kill_log.error(
                "could not stop an overdue worker; the engine refuses stop and kill "
                "(check the engine, or stop the container by hand)",
                extra=log_ids(tracked.worker),
            )

    def _stop_once(self, tracked: TrackedWorker) -> None:
        """One round of stop-then-kill; returns once the container is stopping or gone (or
        no longer this path's to stop), raises the kill's error otherwise."""
        worker = tracked.worker
        if self._closing.is_set() or not tracked.may_stop():
            return
        try:
            self.driver.stop(worker.container_id, self.grace_s)  # SIGTERM, then SIGKILL
            return
        except EngineNotFoundError:
            return  # already gone: the exit watcher reports it
        except DockyardError as err:
            kill_log.warning(
                "stopping a worker failed; sending SIGKILL",
                extra=log_ids(worker, error=str(err)),
            )
        if self._closing.is_set() or not tracked.may_stop():
            return
        try:
            self.driver.kill(worker.container_id)
        except EngineNotFoundError:
            return
        except DockyardError as err:
            kill_log.warning(
                "killing a worker failed; retrying",
                extra=log_ids(worker, error=str(err)),
            )
            raise

"""How a worker's run ends: its deadline kill, its exit wait, and what follows the exit.

The deadline kill and the natural exit race for one outcome, so they live together:
- timeouts (`TimeoutController`): a timer per worker; on expiry report and stop it, and
  keep trying for as long as a broken wait is ridden out;
- the exit wait (`await_exit`): ride out broken streams and engine blips;
- exit handling (`ExitWatcher`): once the wait ends, inspect, log, report, snapshot,
  remove, settle.

The order matters: inspect before anything can remove the container; snapshot before
removal; the outcome last, so that a caller who sees it finds the container gone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ._driver import Driver, ExitResult, WorkerState
from ._errors import (
    DockerUnavailableError,
    DockyardError,
    EngineConflictError,
    EngineNotFoundError,
    RetriesExhaustedError,
    WorkerExitError,
    WorkerTimeoutError,
)
from ._listener import log_ids
from ._loops import Activity
from ._models import OutcomeStatus, WorkerOutcome
from ._output import tail_extra
from ._registry import WorkerRegistry
from ._retry import RetryPolicy, RetryState, call_with_retry
from ._sentry import Reporter
from ._snapshots import SnapshotManager
from ._tracker import TrackedWorker

__all__ = [
    "ExitWatcher",
    "Exited",
    "Lost",
    "TimeoutController",
    "await_exit",
]


log = logging.getLogger("dockyard.exits")

_REMOVAL_WAIT_S = 10.0
# After the exit, how long the output may take to reach its end (the engine ends the stream
# at the exit) and its queued lines to reach the listener, before the outcome goes out.
_OUTPUT_DRAIN_S = 5.0


@dataclass(kw_only=True, eq=False)  # one watcher per manager: identity, no field-wise ==
class ExitWatcher:
    """Runs each worker's wait on the wait executor and turns its exit into one outcome."""

    driver: Driver
    registry: WorkerRegistry
    reporter: Reporter
    snapshots: SnapshotManager | None
    submit: Callable[..., Future[Any]]
    log_tail_lines: int
    # How long `await_exit` rides out an unreachable engine (and a blocked removal).
    wait_policy: RetryPolicy

    def watch(self, tracked: TrackedWorker) -> None:
        try:
            self.submit(self._run, tracked)
        except RuntimeError:  # the manager closed: the worker was detached with it
            tracked.to_detached()

    def _run(self, tracked: TrackedWorker) -> None:
        try:
            ended = await_exit(self.driver, tracked, self.wait_policy)
            if isinstance(ended, Exited) and not tracked.record_exit():
                return  # detached meanwhile
            if tracked.is_over:
                return
            if isinstance(ended, Lost):
                self._handle_lost(tracked, ended)
            else:
                self._handle_exit(tracked, ended)
        except Exception as err:  # never leave a worker without an outcome
            # Not `log.exception`: a host's logging integration would send it with the
            # locals of every frame. The reporter's event drops them.
            log.warning(
                "exit handling failed",
                extra={"job_id": tracked.job_id, "error_type": type(err).__name__},
            )
            self.reporter.report(
                err,
                "exit_handling",
                tags={"jobType": tracked.worker.job_type},
                extras={"jobId": tracked.job_id},
            )
            outcome = WorkerOutcome(
                tracked.job_id,
                "lost",
                error=f"exit handling failed: {err}",
                log_tail=self._output_so_far(tracked),
            )
            self.registry.settle(tracked, outcome)

    # -- after the exit -----------------------------------------------------------------

    def _handle_exit(self, tracked: TrackedWorker, exited: Exited) -> None:
        worker = tracked.worker
        state = exited.state or self._inspect(tracked)
        facts = state.exit if state is not None else ExitResult(None)
        tail = self._log_tail(tracked)
        code = exited.status_code
        status: OutcomeStatus
        if _caused_by_kill(tracked, facts):
            status = tracked.kill_status  # timed_out, or cancelled
        elif code == 0:
            status = "succeeded"
        else:
            status = "failed"
        duration_ms = int(facts.duration_s * 1000) if facts.duration_s is not None else None
        if status == "failed":
            log.warning(
                "worker exited with an error",
                extra={"job_id": worker.job_id, "exit_code": code, "oom_killed": facts.oom_killed},
            )
            self.reporter.report(
                WorkerExitError(f"Worker exited with status {code}"),
                "worker_exit",
                tags={"jobType": worker.job_type},
                extras={
                    "jobId": worker.job_id,
                    "statusCode": code,
                    "oomKilled": facts.oom_killed,
                    "exitReason": facts.error,
                    "durationMs": duration_ms,
                    **({"logTail": tail_extra(tail)} if tail else {}),
                },
            )
        if (
            status == "succeeded"
            and worker.snapshot_enabled
            and self.snapshots is not None
            and worker.project_id
            and worker.work_item_id
        ):
            # The exit inspect already holds the env to scrub: no second round-trip.
            try:
                self.snapshots.commit(
                    worker,
                    tracked.env_keys,
                    container_env=state.env if state is not None else None,
                    base_image=(state.labels if state is not None else {}).get(
                        self.snapshots.labels.base_image
                    ),
                )
            except Exception as err:  # a snapshot only saves warmth: never the outcome
                log.warning(
                    "snapshot commit failed",
                    extra={"job_id": worker.job_id, "error_type": type(err).__name__},
                )
        self._remove(tracked)
        outcome = WorkerOutcome(
            job_id=worker.job_id,
            status=status,
            exit_code=code,
            oom_killed=facts.oom_killed,
            exit_reason=facts.error,
            duration_s=facts.duration_s,
            log_tail=tail,
        )
        log.info(
            "worker finished",
            extra=log_ids(worker, status=status, exit_code=code, duration_ms=duration_ms),
        )
        self.registry.settle(tracked, outcome)

    def _handle_lost(self, tracked: TrackedWorker, lost: Lost) -> None:
        worker = tracked.worker
        log.error(
            "lost track of a worker",
            extra=log_ids(worker, reason=lost.reason),
        )
        self.reporter.report(
            lost.error,
            "worker_wait",
            tags={"jobType": worker.job_type},
            extras={"jobId": worker.job_id},
        )
        if worker.snapshot_enabled:
            self._remove(tracked)
        outcome = WorkerOutcome(
            worker.job_id,
            "lost",
            error=f"{lost.reason}: {lost.error}",
            log_tail=self._output_so_far(tracked),
        )
        self.registry.settle(tracked, outcome)

    def _inspect(self, tracked: TrackedWorker) -> WorkerState | None:
        """The exited worker's state; None (with a warning) when the inspect failed."""
        try:
            return self.driver.inspect(tracked.worker.container_id)
        except EngineNotFoundError:  # expected with AutoRemove: the engine was quicker
            log.debug("container gone before the exit inspect", extra={"job_id": tracked.job_id})
        except DockyardError as err:
            log.warning(
                "could not inspect an exited worker; its outcome lacks OOM and duration "
                "details (check that the Docker engine is healthy)",
                extra={"job_id": tracked.job_id, "error": str(err)},
            )
        return None

    def _log_tail(self, tracked: TrackedWorker) -> tuple[str, ...]:
        """The worker's last lines (masked), logged; the outcome's `log_tail`.

        Read live since before the start when streaming; else asked of the engine, which
        refuses the logs of a container it is auto-removing (409/404): no tail then.
        """
        if self.log_tail_lines <= 0:
            return ()
        output = tracked.output
        if output is not None:
            tail = output.finish(_OUTPUT_DRAIN_S)
            if not output.ended:  # the stream outlived the exit: stop reading it
                output.cancel()
        elif tracked.auto_remove:
            return ()
        else:
            try:
                text = self.driver.log_tail(tracked.worker.container_id, self.log_tail_lines)
            except DockyardError:  # a tail is best effort: a gone container has none
                log.debug("no logs for worker", extra={"job_id": tracked.job_id}, exc_info=True)
                return ()
            tail = tuple(tracked.masker.mask(text).splitlines()[-self.log_tail_lines :])
        if any(line.strip() for line in tail):
            log.info(
                "worker output (last %d lines):\n%s",
                self.log_tail_lines,
                "\n".join(tail).rstrip(),
                extra=log_ids(tracked.worker),
            )
        return tail

    @staticmethod
    def _output_so_far(tracked: TrackedWorker) -> tuple[str, ...]:
        """The tail read so far, the reading ended (an outcome without a normal exit)."""
        output = tracked.output
        if output is None:
            return ()
        output.cancel()
        return output.tail()

    def _remove(self, tracked: TrackedWorker) -> None:
        """Remove the container; for auto-removed ones, make sure the engine finished it."""
        container_id = tracked.worker.container_id
        # The engine removes an AutoRemove container itself: a `remove` of ours would only
        # meet 409/404. Removing it ourselves is the fallback when that does not happen.
        if tracked.auto_remove and self._await_removal(tracked):
            return

        # An engine restarting must not leave the container behind: retry as long as a
        # broken wait would be retried.
        policy = replace(self.wait_policy, retry_on=(DockerUnavailableError,))
        try:
            call_with_retry(
                policy, lambda: self.driver.remove(container_id, force=True), stop=tracked.ended
            )
            return
        except EngineNotFoundError:
            return
        except EngineConflictError:  # 409: the engine's own auto-removal is under way
            pass
        except (RetriesExhaustedError, DockyardError):
            log.warning(
                "could not remove a finished worker container; the orphan scan removes "
                "it later (check that the Docker engine is healthy)",
                extra=log_ids(tracked.worker),
            )
            return
        self._await_removal(tracked)

    def _await_removal(self, tracked: TrackedWorker) -> bool:
        """Wait until the engine has removed the container; False when that is not known."""
        try:
            self.driver.wait_removed(tracked.worker.container_id, _REMOVAL_WAIT_S)
        except EngineNotFoundError:
            return True  # gone already
        except DockyardError:
            log.debug(
                "waiting for auto-removal ended", extra={"job_id": tracked.job_id}, exc_info=True
            )
            return False
        return True


def _caused_by_kill(tracked: TrackedWorker, facts: ExitResult) -> bool:
    """The kill began before the exit: a natural exit the kill only raced stays natural.

    Natural only when the engine says so by both measures: the exit's time is before the
    kill began, and the run was shorter than the time from its start to the kill (the
    latter holds however the engine's clock differs from ours). Unknown: the kill's.
    """
    kill_began = tracked.kill_began
    if kill_began is None:
        return False
    if facts.duration_s is None or facts.finished_at is None:
        return True
    before_kill = (kill_began - tracked.worker.started_at).total_seconds()
    return facts.finished_at >= kill_began or facts.duration_s >= before_kill


# -- the exit wait: riding out a broken wait --

_MAX_WAIT_RESUMES = 20  # consecutive broken waits on a running container before giving up
_STABLE_WAIT_S = 10.0  # a wait that held this long ends a streak of broken waits


@dataclass(frozen=True)
class Exited:
    """The worker exited (status None when unknown)."""

    status_code: int | None
    state: WorkerState | None = None  # the worker already inspected while recovering


@dataclass(frozen=True)
class Lost:
    """The wait was given up: the worker's outcome is `lost` for `reason`."""

    reason: str
    error: BaseException


def await_exit(driver: Driver, tracked: TrackedWorker, policy: RetryPolicy) -> Exited | Lost:
    """Wait, riding out broken streams and engine blips; see the spec's wait-error rule.

    A broken wait is followed by an inspect: a running container gets a new wait, an
    exited one is handled from the inspected state. Only a container that is gone, an
    engine unreachable for longer than the retry window, or a wait that keeps breaking
    at once (`_MAX_WAIT_RESUMES` times in a row) writes the worker off as lost.
    """
    container_id = tracked.worker.container_id
    # Begun when the wait first breaks: a wait that just ends costs nothing here.
    unreachable: RetryState | None = None
    broken: RetryState | None = None
    while True:
        if tracked.is_over:
            return Lost("detached", RuntimeError("detached"))
        opened_at = time.monotonic()
        exit_wait = tracked.current_exit_wait()
        try:
            if exit_wait is None:
                exit_wait = driver.open_wait(container_id)
                if not tracked.set_exit_wait(exit_wait):
                    return Lost("detached", RuntimeError("detached"))
            return Exited(exit_wait.result().exit_code)
        except DockyardError as err:  # the wait broke (typed, as every engine failure)
            if exit_wait is not None:
                tracked.drop_exit_wait(exit_wait)
            if tracked.is_over:
                return Lost("detached", err)
            wait_error = err
        if broken is None or time.monotonic() - opened_at >= _STABLE_WAIT_S:
            # The first break, or that wait held: not part of a streak of failures.
            streak = replace(policy, window_s=None, attempts=_MAX_WAIT_RESUMES)
            broken = streak.begin(tracked.ended)
        # The wait broke: find out whether the worker is still there.
        try:
            state = driver.inspect(container_id)
        except EngineNotFoundError:
            return Lost("container is gone", wait_error)
        except DockyardError as err:
            log.info(
                "wait interrupted and the engine does not answer; retrying",
                extra={"job_id": tracked.job_id, "error": str(err)},
            )
            try:
                unreachable = (unreachable or policy.begin(tracked.ended)).increment(err)
                unreachable.sleep()
            except RetriesExhaustedError:
                return Lost("engine unreachable", err)
            continue
        unreachable = None  # it answered: the window starts over
        if state.running:
            log.info(
                "wait interrupted; worker still running, resuming",
                extra={"job_id": tracked.job_id, "attempt": broken.attempt + 1},
            )
            try:
                broken = broken.increment(wait_error)
                broken.sleep()
            except RetriesExhaustedError:
                return Lost("wait kept failing", wait_error)
            continue
        return Exited(state.exit.exit_code, state)


# -- timeouts: the deadline kill --


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

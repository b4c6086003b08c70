"""What follows a worker's exit: inspect, log, report, snapshot, remove, settle.

`ExitWatcher` runs each worker's exit wait (`_exit_wait`) on the wait executor and turns
its end into the one outcome; the deadline kill that may have caused the exit is
`_timeouts`' (re-exported here, as both are wired together).

The order matters: inspect before anything can remove the container; snapshot before
removal; the outcome last, so that a caller who sees it finds the container gone. The
exit's facts are the inspect's, completed by what the exit wait said (the engine's events)
where the inspect came too late (an auto-removed container) or missed an OOM kill.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ._driver import Driver, ExitResult, WorkerState
from ._errors import (
    DockerUnavailableError,
    DockyardError,
    EngineConflictError,
    EngineNotFoundError,
    RetriesExhaustedError,
    WorkerExitError,
)
from ._exit_wait import Exited, Lost, await_exit
from ._models import OutcomeStatus, WorkerOutcome
from ._output_lines import tail_extra
from ._retry import RetryPolicy, call_with_retry
from ._timeouts import TimeoutController
from ._tracker import log_ids

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future

    from ._registry import WorkerRegistry
    from ._sentry import ExtraValue, Reporter
    from ._snapshots import SnapshotManager
    from ._tracker import TrackedWorker

__all__ = [
    "ExitWatcher",
    "TimeoutController",
    "exit_facts",
]


log = logging.getLogger("dockyard.exits")

_REMOVAL_WAIT_S = 10.0  # one wait for an auto-removal: what close() may wait for it
# Waits the engine did not answer in time, asked again for 90 s together (an engine that
# refuses at once is asked again after a second).
_REMOVAL_PATIENCE = RetryPolicy(
    retry_on=(DockerUnavailableError,), window_s=90.0, first_delay_s=1.0, max_delay_s=1.0
)
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
            self._report(err, "exit_handling", tracked)
            self._settle_lost(tracked, f"exit handling failed: {err}")

    # -- after the exit -----------------------------------------------------------------

    def _handle_exit(self, tracked: TrackedWorker, exited: Exited) -> None:
        worker = tracked.worker
        state = exited.state or self._inspect(tracked)
        facts = exit_facts(state.exit if state is not None else None, exited.facts)
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
            self._report(
                WorkerExitError(f"Worker exited with status {code}"),
                "worker_exit",
                tracked,
                statusCode=code,
                oomKilled=facts.oom_killed,
                exitReason=facts.error,
                durationMs=duration_ms,
                **({"logTail": tail_extra(tail)} if tail else {}),
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
        self._report(lost.error, "worker_wait", tracked)
        if worker.snapshot_enabled:
            self._remove(tracked)
        self._settle_lost(tracked, f"{lost.reason}: {lost.error}")

    def _report(
        self, err: BaseException, source: str, tracked: TrackedWorker, **extras: ExtraValue
    ) -> None:
        """One Sentry report about the worker, tagged with its job type."""
        self.reporter.report(
            err,
            source,
            tags={"jobType": tracked.worker.job_type},
            extras={"jobId": tracked.job_id, **extras},
        )

    def _settle_lost(self, tracked: TrackedWorker, error: str) -> None:
        """The worker's outcome when its end is unknown: lost, with the output seen so far."""
        outcome = WorkerOutcome(
            tracked.job_id, "lost", error=error, log_tail=self._output_so_far(tracked)
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
                "could not inspect an exited worker; its outcome has only the OOM and "
                "duration facts of the engine's events (check that the Docker engine is healthy)",
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
        """Wait until the engine has removed the container; False when that is not known.

        A wait the engine did not answer in time is asked again, for `_REMOVAL_PATIENCE`
        and not once the worker is detached: an engine tearing many containers down at once
        is slow, not failing (Podman removed 200 cancelled workers over a minute, and half
        the 10 s waits ran out), and our own removal would only race its own.
        """
        container_id = tracked.worker.container_id

        def wait() -> None:
            self.driver.wait_removed(container_id, _REMOVAL_WAIT_S)

        try:
            try:
                wait()  # the usual case: one wait, no retry policy on a job's path
            except DockerUnavailableError:
                call_with_retry(_REMOVAL_PATIENCE, wait, stop=tracked.ended)
        except EngineNotFoundError:
            return True  # gone already
        except (RetriesExhaustedError, DockyardError):
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


def exit_facts(inspected: ExitResult | None, told: ExitResult | None) -> ExitResult:
    """The exit's facts: the inspect's, each one it lacks taken from the exit wait's (the
    run's times as a pair).

    An OOM kill either reported counts: the engine (20.10) now and then records a real
    OOM kill as `OOMKilled=false` after it sent the `oom` event.
    """
    if inspected is None:
        return told or ExitResult(None)
    if told is None:
        return inspected
    oom = True if told.oom_killed or inspected.oom_killed else inspected.oom_killed
    # The run's times as a pair from one source: the inspect's when it has both.
    times = inspected if inspected.started_at and inspected.finished_at else told
    return ExitResult(
        exit_code=inspected.exit_code if inspected.exit_code is not None else told.exit_code,
        oom_killed=oom if oom is not None else told.oom_killed,
        error=inspected.error or told.error,
        started_at=times.started_at,
        finished_at=times.finished_at,
    )

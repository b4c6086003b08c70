"""The batch's state: what `dockyard run` knows about each job, fed by the manager's
lifecycle events (on the manager's threads) and read by the progress view and summary."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .._models import ActiveWorker, WorkerLifecycleListener, WorkerOutcome
from ._format import fmt_s

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._jobs import WorkerJob

JobStatus = Literal[
    "queued",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "lost",
    "error",
    "not_started",
    "detached",
]
# The statuses a job ends in, in the order the progress view and the tally count them.
FINAL: tuple[str, ...] = ("succeeded", "failed", "timed_out", "cancelled", "lost", "error")


def status_label(status: str) -> str:
    """A status as words: `timed_out` → `timed out`."""
    return status.replace("_", " ")


@dataclass
class JobState:
    """What the command knows about one job of the batch."""

    job: WorkerJob
    status: JobStatus = "queued"
    worker: ActiveWorker | None = None
    outcome: WorkerOutcome | None = None
    error: str | None = None
    started: float | None = None  # time.monotonic() at start
    ended: float | None = None

    @property
    def job_id(self) -> str:
        assert self.job.id is not None
        return self.job.id

    @property
    def wall_s(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    @property
    def duration_text(self) -> str:
        """The engine's run time when it told us, else `~` and the time this command saw.

        The engine cannot always tell: it drops the record of an auto-removed container, and
        for very short runs it may report a finish before the start.
        """
        if self.outcome is not None and self.outcome.duration_s is not None:
            return fmt_s(self.outcome.duration_s)
        return "-" if self.wall_s is None else "~" + fmt_s(self.wall_s)


@dataclass(frozen=True)
class JobEvent:
    """A job reached `status`; `state` is its live record, which may have moved on since."""

    state: JobState
    status: JobStatus


def status_counts(states: Sequence[JobState]) -> Counter[str]:
    """How many jobs are in each status (0 for any other)."""
    return Counter(state.status for state in states)


class BatchTracker(WorkerLifecycleListener):
    """The batch's job states, fed by the manager's lifecycle events (on its threads)."""

    def __init__(self, jobs: Sequence[WorkerJob]) -> None:
        self._changed = threading.Condition()
        self._states = {job.id: JobState(job) for job in jobs if job.id is not None}
        self._events: list[JobEvent] = []

    @property
    def states(self) -> list[JobState]:
        with self._changed:
            return list(self._states.values())

    def _update(self, job_id: str, change: Callable[[JobState], None]) -> None:
        with self._changed:
            state = self._states.get(job_id)
            if state is None:
                return  # not one of this batch's jobs
            change(state)
            self._events.append(JobEvent(state, state.status))
            self._changed.notify_all()

    def on_worker_started(self, worker: ActiveWorker) -> None:
        def change(state: JobState) -> None:
            state.status, state.worker, state.started = "running", worker, time.monotonic()

        self._update(worker.job_id, change)

    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        def change(state: JobState) -> None:
            state.status, state.outcome, state.ended = outcome.status, outcome, time.monotonic()

        self._update(worker.job_id, change)

    def spawn_failed(self, job_id: str, err: BaseException) -> None:
        message = " ".join(f"{type(err).__name__}: {err}".split())

        def change(state: JobState) -> None:
            state.status, state.error = "error", message

        self._update(job_id, change)

    def wait(self, timeout: float) -> list[JobEvent]:
        """Events since the last call, waiting up to `timeout` for the first one."""
        with self._changed:
            if not self._events:
                self._changed.wait(timeout)
            events, self._events = self._events, []
            return events

    def all_final(self) -> bool:
        with self._changed:
            return all(state.status in FINAL for state in self._states.values())

    def mark_unfinished(self) -> list[JobState]:
        """After an interrupt: running jobs become `detached`, queued ones `not_started`."""
        with self._changed:
            detached = []
            for state in self._states.values():
                if state.status == "running":
                    state.status = "detached"
                    detached.append(state)
                elif state.status == "queued":
                    state.status = "not_started"
            return detached

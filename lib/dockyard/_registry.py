"""The registry of jobs: each job's record from the reservation of its id to its outcome,
one outcome per worker."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

from cachetools import LRUCache

from ._errors import DuplicateJobError
from ._tracker import TrackedWorker

if TYPE_CHECKING:
    from concurrent.futures import Future

    from ._listener import SafeListener
    from ._models import ActiveWorker, WorkerOutcome

__all__ = ["WorkerRegistry"]


class Timeouts(Protocol):
    """The deadline kill (`_timeouts.TimeoutController`), as tracking begins."""

    def arm(self, tracked: TrackedWorker, delay_s: float) -> None: ...
    def cancel(self, tracked: TrackedWorker) -> bool: ...


class Exits(Protocol):
    """The exit wait (`_exit_handling.ExitWatcher`), as tracking begins."""

    def watch(self, tracked: TrackedWorker) -> None: ...


class WorkerRegistry:
    """Every job's record, from the reservation of its id to its outcome; one outcome each.

    A reservation is the run's record (`TrackedWorker`, reserved), and it carries the run's
    outcome future: `wait_for_worker` on a job id that is being re-run waits for the new run
    instead of answering with the last one.
    """

    def __init__(self, listener: SafeListener, history: int) -> None:
        self._listener = listener
        self._lock = threading.Lock()
        self._records: dict[str, TrackedWorker] = {}  # reserved or running, by job id
        self._closed = False
        # Finished outcomes stay answerable to wait_for_worker, bounded.
        self._history: LRUCache[str, Future[WorkerOutcome]] = LRUCache(maxsize=history)

    def reserve(self, job_id: str, name: str | None = None) -> TrackedWorker:
        """Claim a job id (and its container name) for a spawn: the job's record, reserved.

        `DuplicateJobError` while the id is active or spawning, or while another job id
        that maps to the same container name is (`a:b` and `a/b` both name `..._a_b`).
        """
        with self._lock:
            if job_id in self._records:
                raise DuplicateJobError(job_id)
            if name is not None:
                holder = self._name_holder(name)
                if holder is not None:
                    raise DuplicateJobError(job_id, other_job_id=holder, container_name=name)
            record = TrackedWorker(job_id, name)
            self._records[job_id] = record
            return record

    def _name_holder(self, name: str) -> str | None:
        return next(
            (job_id for job_id, record in self._records.items() if record.container_name == name),
            None,
        )

    def unreserve(self, record: TrackedWorker) -> None:
        """Give up a reservation that started no worker: its slot goes back, its waiters
        learn of none. A record that runs meanwhile is left as it is."""
        if not record.to_abandoned():
            return
        with self._lock:
            if self._records.get(record.job_id) is record:
                del self._records[record.job_id]
        if record.future.set_running_or_notify_cancel():
            record.future.set_exception(
                KeyError(f"no worker was started for job {record.job_id!r}")
            )

    def register(self, tracked: TrackedWorker) -> bool:
        """Make a running record active; False (the record left as it is) once the
        registry is closed."""
        with self._lock:
            refused = self._closed
            if refused:
                if self._records.get(tracked.job_id) is tracked:
                    del self._records[tracked.job_id]
            else:
                self._records[tracked.job_id] = tracked
                self._history.pop(tracked.job_id, None)
        if refused and tracked.future.set_running_or_notify_cancel():
            tracked.future.set_exception(
                KeyError(f"closed before job {tracked.job_id!r} was tracked")
            )
        return not refused

    def begin_tracking(
        self,
        record: TrackedWorker,
        remaining_s: float,
        timeouts: Timeouts,
        exits: Exits,
    ) -> bool:
        """The step a launch and an adoption both end in, once the record runs: its timer
        armed, the record active, the listener told, its output bound, its exit watched,
        and a cancel that came while it started carried out. False when the registry closed
        meanwhile: the record is detached and its container keeps running."""
        timeouts.arm(record, remaining_s)
        if not self.register(record):
            record.to_detached()
            return False
        worker = record.worker
        self._listener.started(worker)
        if record.output is not None:
            record.output.bind(worker)  # its lines so far, and all later, go to the listener
        exits.watch(record)
        if record.cancel_requested:
            timeouts.cancel(record)
        return True

    def record(self, job_id: str) -> TrackedWorker | None:
        """The job's record, reserved or running."""
        with self._lock:
            return self._records.get(job_id)

    def _running(self) -> list[TrackedWorker]:
        return [record for record in self._records.values() if record.has_worker]

    def get(self, job_id: str) -> TrackedWorker | None:
        """The job's record once its worker runs (None while it is only reserved)."""
        with self._lock:
            record = self._records.get(job_id)
        return record if record is not None and record.has_worker else None

    def is_tracked_container(self, container_id: str) -> bool:
        with self._lock:
            return any(t.worker.container_id == container_id for t in self._running())

    def tracked_job_ids(self) -> set[str]:
        with self._lock:
            return set(self._records)

    def active_workers(self) -> list[ActiveWorker]:
        with self._lock:
            return [t.worker for t in self._running()]

    def count(self) -> int:
        with self._lock:
            return len(self._running())

    def future(self, job_id: str) -> Future[WorkerOutcome]:
        """The outcome future of a spawning, active or recently finished job; else `KeyError`."""
        with self._lock:
            record = self._records.get(job_id)
            return record.future if record is not None else self._history[job_id]

    def settle(self, tracked: TrackedWorker, outcome: WorkerOutcome) -> bool:
        """Deliver a worker's outcome; only the first call for a worker has any effect."""
        with self._lock:
            if not tracked.to_settled():
                return False
            if self._records.get(tracked.job_id) is tracked:
                del self._records[tracked.job_id]
            if tracked.job_id not in self._records:  # else a re-run's waiters wait on
                self._history[tracked.job_id] = tracked.future
        if tracked.future.set_running_or_notify_cancel():
            tracked.future.set_result(outcome)
        self._listener.finished(tracked.worker, outcome)
        return True

    def detach_all(self) -> list[TrackedWorker]:
        """Forget every active worker without an outcome; their containers keep running."""
        with self._lock:
            detached = self._running()
            for record in detached:
                del self._records[record.job_id]
        return [tracked for tracked in detached if tracked.to_detached()]

    def close(self) -> list[TrackedWorker]:
        """Detach everything and refuse later registrations (an adoption racing close)."""
        with self._lock:
            self._closed = True
        return self.detach_all()

"""The registry of workers: job ids from reservation to outcome, one outcome per worker."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING

from cachetools import LRUCache

from ._errors import DuplicateJobError

if TYPE_CHECKING:
    from ._listener import SafeListener
    from ._models import ActiveWorker, WorkerOutcome
    from ._tracker import TrackedWorker

__all__ = ["WorkerRegistry"]


class WorkerRegistry:
    """Tracks job ids from reservation to outcome; guarantees one outcome per worker.

    A reservation already carries the run's outcome future, so `wait_for_worker` on a job
    id that is being re-run waits for the new run instead of answering with the last one.
    """

    def __init__(self, listener: SafeListener, history: int) -> None:
        self._listener = listener
        self._lock = threading.Lock()
        # job id -> its container name, and the outcome future of the run it reserves
        self._reserved: dict[str, tuple[str | None, Future[WorkerOutcome]]] = {}
        self._active: dict[str, TrackedWorker] = {}
        self._closed = False
        # Finished outcomes stay answerable to wait_for_worker, bounded.
        self._history: LRUCache[str, Future[WorkerOutcome]] = LRUCache(maxsize=history)

    def reserve(self, job_id: str, name: str | None = None) -> None:
        """Claim a job id (and its container name) for a spawn.

        `DuplicateJobError` while the id is active or spawning, or while another job id
        that maps to the same container name is (`a:b` and `a/b` both name `..._a_b`).
        """
        with self._lock:
            if job_id in self._reserved or job_id in self._active:
                raise DuplicateJobError(job_id)
            if name is not None:
                holder = self._name_holder(name)
                if holder is not None:
                    raise DuplicateJobError(job_id, other_job_id=holder, container_name=name)
            self._reserved[job_id] = (name, Future())

    def _name_holder(self, name: str) -> str | None:
        for job_id, (reserved_name, _) in self._reserved.items():
            if reserved_name == name:
                return job_id
        for job_id, tracked in self._active.items():
            if tracked.worker.container_name == name:
                return job_id
        return None

    def unreserve(self, job_id: str) -> None:
        """Give up a reservation that started no worker; its waiters learn of none."""
        with self._lock:
            _, pending = self._reserved.pop(job_id, (None, None))
        if pending is not None and pending.set_running_or_notify_cancel():
            pending.set_exception(KeyError(f"no worker was started for job {job_id!r}"))

    def register(self, tracked: TrackedWorker) -> bool:
        """Make a started worker active; False once the registry is closed."""
        with self._lock:
            _, pending = self._reserved.pop(tracked.job_id, (None, None))
            if self._closed:
                refused = True
            else:
                refused = False
                if pending is not None:
                    tracked.future = pending
                self._active[tracked.job_id] = tracked
                self._history.pop(tracked.job_id, None)
        if refused and pending is not None and pending.set_running_or_notify_cancel():
            pending.set_exception(KeyError(f"closed before job {tracked.job_id!r} was tracked"))
        return not refused

    def get(self, job_id: str) -> TrackedWorker | None:
        with self._lock:
            return self._active.get(job_id)

    def is_tracked_container(self, container_id: str) -> bool:
        with self._lock:
            return any(t.worker.container_id == container_id for t in self._active.values())

    def tracked_job_ids(self) -> set[str]:
        with self._lock:
            return set(self._active) | set(self._reserved)

    def active_workers(self) -> list[ActiveWorker]:
        with self._lock:
            return [t.worker for t in self._active.values()]

    def count(self) -> int:
        with self._lock:
            return len(self._active)

    def future(self, job_id: str) -> Future[WorkerOutcome]:
        """The outcome future of a spawning, active or recently finished job; else `KeyError`."""
        with self._lock:
            tracked = self._active.get(job_id)
            if tracked is not None:
                return tracked.future
            reserved = self._reserved.get(job_id)
            if reserved is not None:
                return reserved[1]
            return self._history[job_id]

    def settle(self, tracked: TrackedWorker, outcome: WorkerOutcome) -> bool:
        """Deliver a worker's outcome; only the first call for a worker has any effect."""
        with self._lock:
            if not tracked.to_settled():
                return False
            if self._active.get(tracked.job_id) is tracked:
                del self._active[tracked.job_id]
            if tracked.job_id not in self._reserved:  # else a re-run's waiters wait on
                self._history[tracked.job_id] = tracked.future
        if tracked.future.set_running_or_notify_cancel():
            tracked.future.set_result(outcome)
        self._listener.finished(tracked.worker, outcome)
        return True

    def detach_all(self) -> list[TrackedWorker]:
        """Forget every active worker without an outcome; their containers keep running."""
        with self._lock:
            detached = list(self._active.values())
            self._active.clear()
        return [tracked for tracked in detached if tracked.to_detached()]

    def close(self) -> list[TrackedWorker]:
        """Detach everything and refuse later registrations (an adoption racing close)."""
        with self._lock:
            self._closed = True
        return self.detach_all()

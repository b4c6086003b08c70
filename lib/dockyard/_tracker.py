"""The worker registry: active workers, their single outcome, and lifecycle notifications."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future

from cachetools import LRUCache

from ._errors import DuplicateJobError
from ._lifecycle import TrackedWorker
from ._models import ActiveWorker, WorkerLifecycleListener, WorkerOutcome

__all__ = ["SafeListener", "TrackedWorker", "WorkerRegistry"]

log = logging.getLogger("dockyard.tracker")


class SafeListener:
    """Calls the host's listener; an exception there is logged, never propagated."""

    def __init__(self, listener: WorkerLifecycleListener | None) -> None:
        self._listener = listener or WorkerLifecycleListener()

    def started(self, worker: ActiveWorker) -> None:
        self._call("on_worker_started", worker.job_id, self._listener.on_worker_started, worker)

    def finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        self._call(
            "on_worker_finished", worker.job_id, self._listener.on_worker_finished, worker, outcome
        )

    def orphan_stopped(self, container_id: str, labels: dict[str, str]) -> None:
        self._call(
            "on_orphan_stopped", None, self._listener.on_orphan_stopped, container_id, labels
        )

    @staticmethod
    def _call(hook: str, job_id: str | None, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("lifecycle listener failed", extra={"hook": hook, "job_id": job_id})


class WorkerRegistry:
    """Tracks job ids from reservation to outcome; guarantees one outcome per worker.

    A reservation already carries the run's outcome future, so `wait_for_worker` on a job
    id that is being re-run waits for the new run instead of answering with the last one.
    """

    def __init__(self, listener: SafeListener, history: int) -> None:
        self._listener = listener
        self._lock = threading.Lock()
        self._reserved: dict[str, Future[WorkerOutcome]] = {}
        self._active: dict[str, TrackedWorker] = {}
        self._closed = False
        # Finished outcomes stay answerable to wait_for_worker, bounded.
        self._history: LRUCache[str, Future[WorkerOutcome]] = LRUCache(maxsize=history)

    def reserve(self, job_id: str) -> None:
        """Claim a job id for a spawn; `DuplicateJobError` while it is active or spawning."""
        with self._lock:
            if job_id in self._reserved or job_id in self._active:
                raise DuplicateJobError(job_id)
            self._reserved[job_id] = Future()

    def unreserve(self, job_id: str) -> None:
        """Give up a reservation that started no worker; its waiters learn of none."""
        with self._lock:
            pending = self._reserved.pop(job_id, None)
        if pending is not None and pending.set_running_or_notify_cancel():
            pending.set_exception(KeyError(f"no worker was started for job {job_id!r}"))

    def register(self, tracked: TrackedWorker) -> bool:
        """Make a started worker active; False once the registry is closed."""
        with self._lock:
            pending = self._reserved.pop(tracked.job_id, None)
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
            pending = self._reserved.get(job_id)
            if pending is not None:
                return pending
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

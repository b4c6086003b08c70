"""The worker registry: active workers, their single outcome, and lifecycle notifications."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from cachetools import LRUCache

from ._backend import ExitTicket
from ._errors import DuplicateJobError
from ._models import ActiveWorker, WorkerLifecycleListener, WorkerOutcome
from ._secrets import Masker
from ._sentry import Reporter

__all__ = ["SafeListener", "TrackedWorker", "WorkerRegistry"]

log = logging.getLogger("dockyard.tracker")


class SafeListener:
    """Calls the host's listener; an exception there is logged, never propagated."""

    def __init__(
        self, listener: WorkerLifecycleListener | None, reporter: Reporter | None = None
    ) -> None:
        self._listener = listener or WorkerLifecycleListener()
        self._reporter = reporter or Reporter()

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

    def _call(self, hook: str, job_id: str | None, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception as err:
            # Not `log.exception`: a host's logging integration would turn it into an event
            # with the locals of every frame. The reporter's event drops them.
            log.warning(
                "lifecycle listener failed",
                extra={"hook": hook, "job_id": job_id, "error_type": type(err).__name__},
            )
            self._reporter.report(
                err,
                "lifecycle_listener",
                level="warning",
                tags={"hook": hook},
                extras={"jobId": job_id},
            )


@dataclass(eq=False)
class TrackedWorker:
    """One started worker and everything needed to end it exactly once."""

    worker: ActiveWorker
    release_slot: Callable[[], None]
    future: Future[WorkerOutcome] = field(default_factory=Future)
    timer: threading.Timer | None = None
    exit_wait: ExitTicket | None = None
    env_keys: tuple[str, ...] = ()  # names of the launch env, for scrubbing snapshots
    masker: Masker = field(default_factory=lambda: Masker(frozenset()), repr=False)  # log tail
    auto_remove: bool = False  # created with AutoRemove: the engine removes it on exit
    kill_started: bool = False  # the kill path began: the exit that follows is a timeout
    exited: bool = False  # the engine reported the exit: too late to start a kill
    settled: bool = False
    detached: bool = False

    @property
    def job_id(self) -> str:
        return self.worker.job_id


class WorkerRegistry:
    """Tracks job ids from reservation to outcome; guarantees one outcome per worker."""

    def __init__(self, listener: SafeListener, history: int) -> None:
        self._listener = listener
        self._lock = threading.Lock()
        self._reserved: dict[str, str | None] = {}  # job id -> its container name
        self._active: dict[str, TrackedWorker] = {}
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
            self._reserved[job_id] = name

    def _name_holder(self, name: str) -> str | None:
        for job_id, reserved_name in self._reserved.items():
            if reserved_name == name:
                return job_id
        for job_id, tracked in self._active.items():
            if tracked.worker.container_name == name:
                return job_id
        return None

    def unreserve(self, job_id: str) -> None:
        with self._lock:
            self._reserved.pop(job_id, None)

    def register(self, tracked: TrackedWorker) -> None:
        with self._lock:
            self._reserved.pop(tracked.job_id, None)
            self._active[tracked.job_id] = tracked
            self._history.pop(tracked.job_id, None)

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
        """The outcome future of an active or recently finished job; `KeyError` otherwise."""
        with self._lock:
            tracked = self._active.get(job_id)
            if tracked is not None:
                return tracked.future
            return self._history[job_id]

    def begin_kill(self, tracked: TrackedWorker) -> bool:
        """Mark the kill path as started; False when the worker already ended or was detached."""
        with self._lock:
            if tracked.settled or tracked.detached or tracked.kill_started or tracked.exited:
                return False
            tracked.kill_started = True
            return True

    def mark_exited(self, tracked: TrackedWorker) -> bool:
        """Record that the container exited; True when that exit was caused by the kill path."""
        with self._lock:
            tracked.exited = True
            return tracked.kill_started

    def settle(self, tracked: TrackedWorker, outcome: WorkerOutcome) -> bool:
        """Deliver a worker's outcome; only the first call for a worker has any effect."""
        with self._lock:
            if tracked.settled or tracked.detached:
                return False
            tracked.settled = True
            if self._active.get(tracked.job_id) is tracked:
                del self._active[tracked.job_id]
            self._history[tracked.job_id] = tracked.future
        if tracked.timer is not None:
            tracked.timer.cancel()
        tracked.release_slot()
        tracked.future.set_result(outcome)
        self._listener.finished(tracked.worker, outcome)
        return True

    def detach_all(self) -> list[TrackedWorker]:
        """Forget every active worker without an outcome; their containers keep running."""
        with self._lock:
            detached = list(self._active.values())
            self._active.clear()
            for tracked in detached:
                tracked.detached = True
        for tracked in detached:
            if tracked.timer is not None:
                tracked.timer.cancel()
            if tracked.exit_wait is not None:
                tracked.exit_wait.close()
            tracked.release_slot()
            tracked.future.cancel()  # wait_for_worker raises CancelledError instead of hanging
        return detached

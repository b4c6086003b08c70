"""Worker tracking: each worker's state machine, the registry of them, and notifications.

A worker runs → stops (the kill path) → exits → settles, or is detached; one object per
worker owns that state under one lock, and every reader goes through it. Before a worker
runs, its launch holds the slot lease and the job id's reservation; the `TrackedWorker`
takes the lease over when the container has started and releases it on the one
transition that ends it.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Protocol

from cachetools import LRUCache

from ._driver import ExitTicket
from ._environment import Masker
from ._errors import DuplicateJobError
from ._models import ActiveWorker, WorkerLifecycleListener, WorkerOutcome
from ._sentry import Reporter

__all__ = [
    "Phase",
    "SafeListener",
    "SlotGate",
    "SlotLease",
    "TrackedWorker",
    "WorkerRegistry",
    "log_ids",
]


log = logging.getLogger("dockyard.tracker")


class Phase(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"  # the kill path began: the exit that follows is a timeout
    EXITED = "exited"  # the engine reported the exit; exit handling is under way
    SETTLED = "settled"  # the one outcome was delivered
    DETACHED = "detached"  # forgotten without an outcome; the container keeps running


_ENDED = frozenset({Phase.SETTLED, Phase.DETACHED})


class Timer(Protocol):
    def cancel(self) -> None: ...


class TrackedWorker:
    """One started worker and everything needed to end it exactly once."""

    def __init__(
        self,
        worker: ActiveWorker,
        release_slot: Callable[[], object],
        *,
        exit_wait: ExitTicket | None = None,
        env_keys: tuple[str, ...] = (),
        masker: Masker | None = None,
        auto_remove: bool = False,
    ) -> None:
        self.worker = worker
        self.env_keys = env_keys  # names of the launch env, for scrubbing snapshots
        self.masker = masker or Masker(frozenset())  # for the worker's log tail
        self.auto_remove = auto_remove  # the engine removes it on exit
        self.future: Future[WorkerOutcome] = Future()
        self._release_slot = release_slot  # a `SlotLease.release`: idempotent
        self._lock = threading.Lock()
        self._phase = Phase.RUNNING
        self._timer: Timer | None = None
        self._exit_wait = exit_wait
        self._kill_began: datetime | None = None
        # Set when the worker ends (or exits, for the kill): every back-off waits on these.
        self.ended = threading.Event()
        self.exited = threading.Event()

    def __repr__(self) -> str:
        return f"TrackedWorker({self.job_id!r}, {self.phase.value})"

    @property
    def job_id(self) -> str:
        return self.worker.job_id

    @property
    def phase(self) -> Phase:
        with self._lock:
            return self._phase

    @property
    def detached(self) -> bool:
        return self.phase is Phase.DETACHED

    @property
    def is_over(self) -> bool:
        """Settled or detached: nothing may act on this worker any more."""
        return self.phase in _ENDED

    @property
    def kill_began(self) -> datetime | None:
        with self._lock:
            return self._kill_began

    # -- transitions --------------------------------------------------------------------

    def begin_kill(self) -> bool:
        """running → stopping; False in any other phase."""
        with self._lock:
            if self._phase is not Phase.RUNNING:
                return False
            self._phase = Phase.STOPPING
            self._kill_began = datetime.now(UTC)
            return True

    def may_stop(self) -> bool:
        """True while a stop can still matter: running or stopping, not yet exited."""
        with self._lock:
            return self._phase in (Phase.RUNNING, Phase.STOPPING)

    def record_exit(self) -> bool:
        """running/stopping → exited; False when detached or settled meanwhile."""
        with self._lock:
            if self._phase in _ENDED:
                return False
            self._phase = Phase.EXITED
        self.exited.set()
        return True

    def to_settled(self) -> bool:
        """→ settled, once: timer cancelled, slot given back; the caller delivers the outcome."""
        return self._end(Phase.SETTLED)

    def to_detached(self) -> bool:
        """→ detached, once: timer cancelled, wait closed, slot and future given up."""
        if not self._end(Phase.DETACHED):
            return False
        self.future.cancel()  # wait_for_worker raises CancelledError instead of hanging
        return True

    def _end(self, phase: Phase) -> bool:
        """The one transition that ends the worker: it alone gives the slot back."""
        with self._lock:
            if self._phase in _ENDED:
                return False
            self._phase = phase
            timer, self._timer = self._timer, None
            exit_wait, self._exit_wait = self._exit_wait, None
        self.ended.set()
        self.exited.set()
        if timer is not None:
            timer.cancel()
        if exit_wait is not None and phase is Phase.DETACHED:
            exit_wait.close()  # a settled worker's wait has answered already
        self._release_slot()
        return True

    # -- the timer and the exit wait ----------------------------------------------------

    def set_timer(self, timer: Timer) -> bool:
        """Make `timer` the only pending one; False (and cancelled) when the worker ended."""
        with self._lock:
            if self._phase in _ENDED:
                previous: Timer | None = timer
            else:
                previous, self._timer = self._timer, timer
        if previous is not None:
            previous.cancel()
        return previous is not timer

    def set_exit_wait(self, exit_wait: ExitTicket) -> bool:
        """Keep a new wait where a detach closes it; False (and closed) once detached."""
        with self._lock:
            if self._phase is not Phase.DETACHED:
                self._exit_wait = exit_wait
                return True
        exit_wait.close()
        return False

    def current_exit_wait(self) -> ExitTicket | None:
        """The wait in place (opened at launch or adoption, or by the watcher)."""
        with self._lock:
            return self._exit_wait

    def drop_exit_wait(self, exit_wait: ExitTicket) -> None:
        """Forget a wait that answered or broke (if it is still the one in place)."""
        with self._lock:
            if self._exit_wait is exit_wait:
                self._exit_wait = None


def log_ids(worker: ActiveWorker, **more: object) -> dict[str, object]:
    """A log record's `extra` about `worker`: its job id, short container id, and `more`."""
    return {"job_id": worker.job_id, "container_id": worker.container_id[:12], **more}


class SafeListener:
    """Calls the host's listener; an exception there is logged, never propagated."""

    def __init__(
        self, listener: WorkerLifecycleListener | None, reporter: Reporter | None = None
    ) -> None:
        self._listener = listener  # None: nobody to tell
        self._reporter = reporter or Reporter()

    def started(self, worker: ActiveWorker) -> None:
        self._call("on_worker_started", worker.job_id, worker)

    def finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        self._call("on_worker_finished", worker.job_id, worker, outcome)

    def orphan_stopped(self, container_id: str, labels: dict[str, str]) -> None:
        self._call("on_orphan_stopped", None, container_id, labels)

    def _call(self, hook: str, job_id: str | None, *args: object) -> None:
        if self._listener is None:
            return
        try:
            getattr(self._listener, hook)(*args)
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


# -- worker slots: a FIFO gate, and the lease a worker holds on a slot --


class SlotGate:
    """At most `capacity` slots held at once; waiters are served in arrival order.

    A released slot is handed straight to the oldest waiter, so a late arrival can never
    overtake it, and the count can never exceed the capacity. A wait that ends in any way
    but success (timeout, KeyboardInterrupt, a signal handler's exception) leaves the line,
    and gives on a slot that was handed over meanwhile.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._free = capacity
        self._lock = threading.Lock()
        self._waiters: deque[threading.Event] = deque()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._capacity - self._free

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)

    def lease(self, timeout: float | None) -> SlotLease | None:
        """A slot as a lease (released exactly once), or None on timeout."""
        return SlotLease(self) if self.acquire(timeout) else None

    def lease_over_capacity(self) -> SlotLease:
        """A slot even when none is free (adopted workers already run)."""
        with self._lock:
            self._free -= 1
        return SlotLease(self)

    def acquire(self, timeout: float | None) -> bool:
        """Take a slot, waiting up to `timeout` seconds (None or inf: forever); False on timeout."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            granted = threading.Event()
            self._waiters.append(granted)
        try:
            _wait(granted, timeout)
        except BaseException:
            if self._leave(granted):
                self.release()  # handed over as the wait broke: not ours to keep
            raise
        return self._leave(granted)

    def _leave(self, granted: threading.Event) -> bool:
        """End a wait; True when the slot was handed over (also just as the wait ended)."""
        with self._lock:
            if granted.is_set():
                return True
            self._waiters.remove(granted)
            return False

    def release(self) -> None:
        with self._lock:
            if self._waiters and self._free >= 0:
                self._waiters.popleft().set()
            else:
                self._free += 1


def _wait(granted: threading.Event, timeout: float | None) -> None:
    if timeout is None or math.isinf(timeout) or timeout >= threading.TIMEOUT_MAX:
        granted.wait()  # `monotonic() + inf` would make Event.wait raise OverflowError
        return
    deadline = time.monotonic() + max(0.0, timeout)
    granted.wait(max(0.0, deadline - time.monotonic()))


class SlotLease:
    """One held slot; `release()` gives it back once, any later call does nothing."""

    def __init__(self, gate: SlotGate) -> None:
        self._gate = gate
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> bool:
        """Give the slot back; True only for the call that did."""
        with self._lock:
            if not self._held:
                return False
            self._held = False
        self._gate.release()
        return True

"""Worker tracking: each worker's state machine (and the ids a log record about it carries).

A worker runs → stops (the kill path) → exits → settles, or is detached; one object per
worker owns that state under one lock, and every reader goes through it. Before a worker
runs, its launch holds the slot lease (`_slots`) and the job id's reservation
(`_registry`); the `TrackedWorker` takes the lease over when the container has started and
releases it on the one transition that ends it.
"""

from __future__ import annotations

import enum
import threading
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from ._secrets import Masker

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._driver import ExitTicket
    from ._models import ActiveWorker, OutcomeStatus, WorkerOutcome
    from ._output import OutputPipe

__all__ = ["Phase", "TrackedWorker", "log_ids"]


class Phase(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"  # the kill path began: the exit that follows is its status
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
        output: OutputPipe | None = None,
    ) -> None:
        self.worker = worker
        self.env_keys = env_keys  # names of the launch env, for scrubbing snapshots
        self.masker = masker or Masker(frozenset())  # for the worker's log tail
        self.auto_remove = auto_remove  # the engine removes it on exit
        self.output = output  # its output, read since before its start (None: not read)
        self.future: Future[WorkerOutcome] = Future()
        self._release_slot = release_slot  # a `SlotLease.release`: idempotent
        self._lock = threading.Lock()
        self._phase = Phase.RUNNING
        self._timer: Timer | None = None
        self._exit_wait = exit_wait
        self._kill_began: datetime | None = None
        self._kill_status: OutcomeStatus = "timed_out"  # what the kill's exit ends as
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

    @property
    def kill_status(self) -> OutcomeStatus:
        """The status of an exit the kill caused: `timed_out`, or `cancelled`."""
        with self._lock:
            return self._kill_status

    # -- transitions --------------------------------------------------------------------

    def begin_kill(self, status: OutcomeStatus = "timed_out") -> bool:
        """running → stopping, the exit to end as `status`; False in any other phase."""
        with self._lock:
            if self._phase is not Phase.RUNNING:
                return False
            self._phase = Phase.STOPPING
            self._kill_began = datetime.now(UTC)
            self._kill_status = status
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
        if self.output is not None and phase is Phase.DETACHED:
            self.output.detach()  # the container runs on; nobody reads it any more
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

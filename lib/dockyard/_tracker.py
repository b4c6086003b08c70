"""Worker tracking: one record per job, from the reservation of its id to its end.

A job's record is made when its id is reserved (`_registry`), holds the slot lease
(`_slots`) from when the spawn gets one, and becomes a running worker in the one step a
launch and an adoption both end in (`begin`). Its phases — reserved → running → stopping →
exited → settled, or abandoned (no worker started) or detached — are kept under one lock,
every reader goes through it, and the one transition that ends it gives the slot back.
(Also here: the ids a log record about a worker carries.)
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
    RESERVED = "reserved"  # the job id is claimed; no worker runs yet
    RUNNING = "running"
    STOPPING = "stopping"  # the kill path began: the exit that follows is its status
    EXITED = "exited"  # the engine reported the exit; exit handling is under way
    SETTLED = "settled"  # the one outcome was delivered
    DETACHED = "detached"  # forgotten without an outcome; the container keeps running
    ABANDONED = "abandoned"  # the spawn ended without a worker


_ENDED = frozenset({Phase.SETTLED, Phase.DETACHED, Phase.ABANDONED})


class Timer(Protocol):
    def cancel(self) -> None: ...


class TrackedWorker:
    """One job from its reservation to its end: its ids, its slot, its phase, and
    everything needed to end it exactly once."""

    def __init__(self, job_id: str, container_name: str | None = None) -> None:
        self.job_id = job_id
        self._container_name = container_name  # None: not known before the worker runs
        self.future: Future[WorkerOutcome] = Future()
        self._worker: ActiveWorker | None = None
        self.env_keys: tuple[str, ...] = ()  # names of the launch env, for scrubbing snapshots
        self.masker = Masker(frozenset())  # for the worker's log tail
        self.auto_remove = False  # the engine removes it on exit
        self.output: OutputPipe | None = None  # its output, read since before its start
        self._release_slot: Callable[[], object] | None = None  # a `SlotLease.release`
        self._lock = threading.Lock()
        self._phase = Phase.RESERVED
        self._timer: Timer | None = None
        self._exit_wait: ExitTicket | None = None
        self._kill_began: datetime | None = None
        self._kill_status: OutcomeStatus = "timed_out"  # what the kill's exit ends as
        self._cancel_requested = False  # the host cancelled the job before its worker ran
        # Set when the worker ends (or exits, for the kill): every back-off waits on these.
        self.ended = threading.Event()
        self.exited = threading.Event()

    def __repr__(self) -> str:
        return f"TrackedWorker({self.job_id!r}, {self.phase.value})"

    @property
    def worker(self) -> ActiveWorker:
        """The running worker; only a record that `begin` made running has one."""
        worker = self._worker
        if worker is None:
            raise RuntimeError(f"job {self.job_id!r} has no worker yet")
        return worker

    @property
    def has_worker(self) -> bool:
        return self._worker is not None

    @property
    def container_name(self) -> str | None:
        worker = self._worker
        return worker.container_name if worker is not None else self._container_name

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

    @property
    def cancel_requested(self) -> bool:
        with self._lock:
            return self._cancel_requested

    def request_cancel(self) -> None:
        """Mark a job not running yet as cancelled: its spawn (or the step that begins its
        tracking) cancels it when it looks."""
        with self._lock:
            self._cancel_requested = True

    # -- transitions --------------------------------------------------------------------

    def take_slot(self, release_slot: Callable[[], object]) -> None:
        """Hold the spawn's slot lease: the transition that ends the record releases it."""
        with self._lock:
            ended = self._phase in _ENDED
            if not ended:
                self._release_slot = release_slot
        if ended:
            release_slot()

    def begin(
        self,
        worker: ActiveWorker,
        *,
        exit_wait: ExitTicket | None = None,
        env_keys: tuple[str, ...] = (),
        masker: Masker | None = None,
        auto_remove: bool = False,
        output: OutputPipe | None = None,
    ) -> bool:
        """reserved → running, with the started worker; False once the record ended."""
        with self._lock:
            if self._phase is not Phase.RESERVED:
                return False
            self._worker = worker
            self.env_keys = env_keys
            self.masker = masker or self.masker
            self.auto_remove = auto_remove
            self.output = output
            self._exit_wait = exit_wait
            self._phase = Phase.RUNNING
            return True

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

    def to_abandoned(self) -> bool:
        """reserved → abandoned, once: the spawn started no worker; its slot goes back."""
        return self._end(Phase.ABANDONED, only_from=Phase.RESERVED)

    def to_detached(self) -> bool:
        """→ detached, once: timer cancelled, wait closed, slot and future given up."""
        if not self._end(Phase.DETACHED):
            return False
        self.future.cancel()  # wait_for_worker raises CancelledError instead of hanging
        return True

    def _end(self, phase: Phase, only_from: Phase | None = None) -> bool:
        """The one transition that ends the record: it alone gives the slot back."""
        with self._lock:
            if self._phase in _ENDED or only_from not in (None, self._phase):
                return False
            self._phase = phase
            timer, self._timer = self._timer, None
            exit_wait, self._exit_wait = self._exit_wait, None
            release_slot, self._release_slot = self._release_slot, None
        self.ended.set()
        self.exited.set()
        if timer is not None:
            timer.cancel()
        if exit_wait is not None and phase is Phase.DETACHED:
            exit_wait.close()  # a settled worker's wait has answered already
        if self.output is not None and phase is Phase.DETACHED:
            self.output.detach()  # the container runs on; nobody reads it any more
        if release_slot is not None:
            release_slot()
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

"""Swarm exit watching: one poller thread reads every watched service's tasks in one call a tick.

Each worker is a `replicated-job` service with one task. Exit waits are the Docker
backend's tickets (`_exit_monitor.ExitWait`), resolved by the poller from the task's
state: a terminal state (`complete`, `failed`, `rejected`, `shutdown`, `orphaned`, ...)
answers with the task's exit code; a task that never reaches `running` within the
pending timeout (no node can take it) answers with no exit code, and the service is
marked as failed to place. Closing a ticket touches no socket. End hooks (`on_end`) are
told of the same ending first: a service's followed log ends with them (`_swarm_logs`).
The number of engine calls per tick does not grow with the number of workers: one
`tasks` call filtered by all watched service ids (plus one service listing in the rare
tick where a watched service vanished under us).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cachetools import TTLCache

from ._driver import ExitResult
from ._errors import DockerUnavailableError, EngineNotFoundError, RetriesExhaustedError
from ._exit_monitor import ExitWait
from ._retry import RetryPolicy, RetryState

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "PRE_RUNNING",
    "TERMINAL",
    "TaskPoller",
    "exit_code_of",
    "latest_task",
    "task_state",
]

log = logging.getLogger("dockyard.swarm")

# Task states (swarmkit's api.TaskState) before the container runs, and after it ended.
PRE_RUNNING = frozenset(
    {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}
)
TERMINAL = frozenset({"complete", "failed", "rejected", "shutdown", "orphaned", "remove"})
_REMEMBERED = 4096
_MEMORY_S = 600.0


def task_state(task: dict[str, Any] | None) -> str:
    return str(((task or {}).get("Status") or {}).get("State") or "").lower()


def exit_code_of(task: dict[str, Any] | None) -> int | None:
    """The task container's exit code; None when it never had a container (rejected, ...)."""
    state = task_state(task)
    if state not in TERMINAL or state == "rejected":
        return None
    container = ((task or {}).get("Status") or {}).get("ContainerStatus") or {}
    code = container.get("ExitCode")
    if isinstance(code, int) and container.get("ContainerID"):
        return code
    return 0 if state == "complete" else None


def latest_task(tasks: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest task (a job service with restart condition none has exactly one)."""
    if not tasks:
        return None
    return max(tasks, key=lambda t: int((t.get("Version") or {}).get("Index") or 0))


@dataclass
class _Watch:
    service_id: str
    registered: float
    tickets: list[ExitWait] = field(default_factory=list)
    hooks: list[Callable[[], None]] = field(default_factory=list)  # told of the task's end
    running: threading.Event = field(default_factory=threading.Event)  # running or ended
    seen: bool = False
    gone: bool = False


@dataclass(frozen=True)
class Ending:
    """How a watched service's task ended, remembered for the inspect after the exit."""

    task: dict[str, Any] | None
    unplaced: str | None = None  # the scheduler's reason when it never ran


class TaskPoller:
    """Polls the tasks of every watched service on one daemon thread."""

    def __init__(
        self,
        list_tasks: Callable[[list[str]], list[dict[str, Any]]],
        list_services: Callable[[], set[str]],
        *,
        interval_s: float,
        pending_timeout_s: float,
        unreachable_window_s: float,
        fast_interval_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        autostart: bool = True,
    ) -> None:
        self._list_tasks = list_tasks
        self._list_services = list_services
        self._interval_s = interval_s
        self._fast_interval_s = fast_interval_s
        self._pending_timeout_s = pending_timeout_s
        self._unreachable_window_s = unreachable_window_s
        self._clock = clock
        self._autostart = autostart  # False: only explicit `tick()` calls poll (tests)
        self._cond = threading.Condition()
        self._watches: dict[str, _Watch] = {}
        self._starting = 0  # callers blocked in `await_running`: poll fast meanwhile
        self._last: TTLCache[str, dict[str, Any]] = TTLCache(_REMEMBERED, _MEMORY_S)
        self._endings: TTLCache[str, Ending] = TTLCache(_REMEMBERED, _MEMORY_S)
        self._failing: RetryState | None = None  # polls failing since this run began
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.ticks = 0  # polls made, for tests and benchmarks

    # -- tickets ------------------------------------------------------------------------

    def register(self, service_id: str) -> ExitWait:
        """A ticket for the service's task to end; answered at the next tick if it has."""
        ticket = ExitWait(service_id, self._forget)
        with self._cond:
            if self._stopping:
                raise DockerUnavailableError("the swarm gateway is closed")
            ending = self._endings.get(service_id)
            if ending is not None:
                ticket._resolve(_body(ending))
                return ticket
            watch = self._watch(service_id)
            watch.tickets.append(ticket)
            self._ensure_thread()
            self._cond.notify_all()
        return ticket

    def await_running(self, service_id: str, timeout_s: float) -> None:
        """Block until the service's task runs or ended, or `timeout_s` passed."""
        with self._cond:
            if self._stopping:
                raise DockerUnavailableError("the swarm gateway is closed")
            if service_id in self._endings:
                return
            watch = self._watch(service_id)
            self._starting += 1
            self._ensure_thread()
            self._cond.notify_all()
        try:
            watch.running.wait(timeout_s)
        finally:
            with self._cond:
                self._starting -= 1
                idle = not watch.tickets and not watch.hooks
                if idle and watch.running.is_set() and self._watches.get(service_id) is watch:
                    del self._watches[service_id]

    def on_end(self, service_id: str, hook: Callable[[], None]) -> Callable[[], None]:
        """Call `hook` once when the service's task ended (on the poller's thread, before
        its tickets are answered; at once when it ended already) or the poller closes.

        Returns how to drop the hook. A poll failure does not call it: the task may run on.
        """
        with self._cond:
            if self._stopping:
                raise DockerUnavailableError("the swarm gateway is closed")
            ended = service_id in self._endings
            if not ended:
                self._watch(service_id).hooks.append(hook)
                self._ensure_thread()
                self._cond.notify_all()
        if ended:
            _call_hooks([hook])
            return _nothing
        return lambda: self._drop_hook(service_id, hook)

    def _drop_hook(self, service_id: str, hook: Callable[[], None]) -> None:
        with self._cond:
            watch = self._watches.get(service_id)
            if watch is not None and hook in watch.hooks:
                watch.hooks.remove(hook)
                self._drop_if_idle(watch)

    def _drop_if_idle(self, watch: _Watch) -> None:
        """Forget a watch nobody waits on any more (held: `_cond`)."""
        idle = not watch.tickets and not watch.hooks and self._starting == 0
        if idle and self._watches.get(watch.service_id) is watch:
            del self._watches[watch.service_id]

    def _watch(self, service_id: str) -> _Watch:
        watch = self._watches.get(service_id)
        if watch is None:
            watch = _Watch(service_id, self._clock())
            self._watches[service_id] = watch
        return watch

    def _forget(self, ticket: ExitWait) -> None:
        with self._cond:
            watch = self._watches.get(ticket.container_id)
            if watch is not None and ticket in watch.tickets:
                watch.tickets.remove(ticket)
                self._drop_if_idle(watch)

    def last_task(self, service_id: str) -> dict[str, Any] | None:
        with self._cond:
            return self._last.get(service_id)

    def ending(self, service_id: str) -> Ending | None:
        with self._cond:
            return self._endings.get(service_id)

    def gone(self, service_id: str) -> None:
        """The service was removed: its tickets answer at the next tick."""
        with self._cond:
            watch = self._watches.get(service_id)
            if watch is not None:
                watch.gone = True
                self._cond.notify_all()

    def ended(self, service_id: str, task: dict[str, Any] | None) -> None:
        """The service was removed and `task` is its task's last known state."""
        with self._cond:
            if task is not None:
                self._last[service_id] = task
            watch = self._watches.get(service_id)
            if watch is not None:
                watch.gone = True
                self._cond.notify_all()

    def watched(self) -> int:
        with self._cond:
            return len(self._watches)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self, join_s: float) -> None:
        with self._cond:
            self._stopping = True
            tickets = [t for w in self._watches.values() for t in w.tickets]
            hooks = [h for w in self._watches.values() for h in w.hooks]
            for watch in self._watches.values():
                watch.running.set()
            self._watches.clear()
            self._cond.notify_all()
            thread = self._thread
        _call_hooks(hooks)
        for ticket in tickets:
            ticket.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(join_s)

    def _ensure_thread(self) -> None:
        if self._thread is None and self._autostart:
            self._thread = threading.Thread(
                target=self._run, name="dockyard-swarm-tasks", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._watches:
                    self._cond.wait()
                if self._stopping:
                    return
            try:
                self.tick()
            except Exception:  # the poller must outlive any one bad answer
                log.exception("swarm task poll failed")
            with self._cond:
                if self._stopping:
                    return
                interval = self._fast_interval_s if self._starting else self._interval_s
                self._cond.wait(interval)

    # -- one poll -----------------------------------------------------------------------

    def tick(self) -> None:
        """Read the tasks of every watched service (one call) and answer what ended."""
        with self._cond:
            ids = [sid for sid, w in self._watches.items() if not w.gone]
            has_gone = any(w.gone for w in self._watches.values())
        if not ids and not has_gone:
            return
        self.ticks += 1
        try:
            tasks = self._tasks_of(ids) if ids else []
        except Exception as err:  # whatever failed, the poll failed: ridden out for a window
            self._poll_failed(err)
            return
        self._failing = None
        by_service: dict[str, list[dict[str, Any]]] = {}
        for task in tasks:
            by_service.setdefault(str(task.get("ServiceID") or ""), []).append(task)
        now = self._clock()
        with self._cond:
            watches = list(self._watches.values())
        for watch in watches:
            self._settle(watch, latest_task(by_service.get(watch.service_id, [])), now)

    def _tasks_of(self, ids: list[str]) -> list[dict[str, Any]]:
        try:
            return self._list_tasks(ids)
        except EngineNotFoundError:
            pass
        # A watched service was removed behind our back: the filter names a missing
        # service and the engine refuses the whole call. Find the survivors, ask again.
        existing = self._list_services()
        for sid in ids:
            if sid not in existing:
                self.gone(sid)
        survivors = [sid for sid in ids if sid in existing]
        return self._list_tasks(survivors) if survivors else []

    def _poll_failed(self, err: BaseException) -> None:
        log.info("swarm task poll failed; retrying", extra={"error": str(err)})
        if self._failing is None:
            policy = RetryPolicy(retry_on=(Exception,), window_s=self._unreachable_window_s)
            self._failing = policy.begin(clock=self._clock)
        try:
            self._failing = self._failing.increment(err)
            return  # keep the tickets: a blip must not write every worker off
        except RetriesExhaustedError:
            pass
        with self._cond:
            tickets = [t for w in self._watches.values() for t in w.tickets]
            for watch in self._watches.values():
                watch.tickets.clear()
        for ticket in tickets:
            ticket._fail(err)  # their owners re-inspect and decide (lost past their bound)

    def _settle(self, watch: _Watch, task: dict[str, Any] | None, now: float) -> None:
        state = task_state(task)
        ending: Ending | None = None
        if task is not None:
            watch.seen = True
            with self._cond:
                self._last[watch.service_id] = task
            if state not in PRE_RUNNING:
                watch.running.set()
            if state in TERMINAL:
                ending = Ending(task)
        if ending is None and watch.gone:
            ending = Ending(self.last_task(watch.service_id))
        if ending is None and (task is None or state in PRE_RUNNING):
            if watch.seen and task is None:
                ending = Ending(self.last_task(watch.service_id))  # removed meanwhile
            elif now - watch.registered > self._pending_timeout_s:
                ending = Ending(task, unplaced=_unplaced_reason(task, self._pending_timeout_s))
        if ending is None:
            return
        with self._cond:
            self._endings[watch.service_id] = ending
            if self._watches.get(watch.service_id) is watch:
                del self._watches[watch.service_id]
            tickets, watch.tickets = watch.tickets, []
            hooks, watch.hooks = watch.hooks, []
        watch.running.set()
        _call_hooks(hooks)
        for ticket in tickets:
            ticket._resolve(_body(ending))


def _call_hooks(hooks: list[Callable[[], None]]) -> None:
    for hook in hooks:
        try:
            hook()
        except Exception:  # one broken hook must not keep the others or the tickets waiting
            log.exception("swarm task end hook failed")


def _nothing() -> None:
    pass


def _body(ending: Ending) -> ExitResult:
    return ExitResult(exit_code_of(ending.task))


def _unplaced_reason(task: dict[str, Any] | None, timeout_s: float) -> str:
    status = (task or {}).get("Status") or {}
    reason = status.get("Err") or status.get("Message") or "no task was scheduled"
    state = task_state(task) or "no task"
    return f"not running after {timeout_s:g}s ({state}): {reason}"

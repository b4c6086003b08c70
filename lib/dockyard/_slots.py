"""Worker slots: a gate with a router capacity, per-project caps and priorities.

A waiter asks for a slot for a project (or none) with a priority. A slot goes to the
best waiter that can use it: highest priority first, first come first served within a
priority, skipping waiters whose project is at its cap; a capped project therefore never
blocks the waiters of other projects behind it (no head-of-line blocking). Jobs without a
project count against the router's capacity only.

Priorities are strict: while higher-priority waiters that can run keep arriving, a lower
one waits (it can starve); its slot timeout bounds the wait.

A freed slot is handed straight to the chosen waiter under the gate's lock, so a late
arrival never overtakes a waiter that could have had it, and neither the router's count
nor a project's ever exceeds its limit (the over-capacity lease for workers that already
run aside). A wait that ends in any way but success (timeout, cancellation,
KeyboardInterrupt, a signal handler's exception) leaves the line, and gives back a slot
handed over meanwhile.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from typing import TYPE_CHECKING

from ._errors import NoWorkerSlotError, WorkerCancelledError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["SlotGate", "SlotLease"]


_WAITING, _GRANTED, _GONE = 0, 1, 2
_KEEP_PROJECTS = 256  # idle project records kept before a sweep forgets them


class _Waiter:
    __slots__ = ("cancelled", "granted", "name", "project", "state")

    def __init__(self, name: str | None, project: str | None) -> None:
        self.name = name
        self.project = project
        self.granted = threading.Event()
        self.state = _WAITING
        self.cancelled = False


# (-priority, arrival number, waiter): a heap of these pops the best waiter first.
_Entry = tuple[int, int, _Waiter]


class _Project:
    """One project's (or the project-less jobs') slots in use, cap, and waiters."""

    __slots__ = ("cap", "dead", "in_use", "queue")

    def __init__(self) -> None:
        self.cap: int | None = None
        self.in_use = 0
        self.queue: list[_Entry] = []
        self.dead = 0  # entries in `queue` whose waiter left: dropped lazily

    def has_room(self) -> bool:
        return self.cap is None or self.in_use < self.cap

    def head(self) -> _Entry | None:
        queue = self.queue
        while queue and queue[0][2].state != _WAITING:
            heapq.heappop(queue)
            self.dead -= 1
        return queue[0] if queue else None

    def drop_one(self) -> None:
        """A waiter in `queue` left; compact once most of the queue is dead."""
        self.dead += 1
        if self.dead > 32 and self.dead * 2 > len(self.queue):
            self.queue = [entry for entry in self.queue if entry[2].state == _WAITING]
            heapq.heapify(self.queue)
            self.dead = 0


class SlotGate:
    """At most `capacity` slots held at once, at most a project's cap for each project.

    `lease()` waits for a slot and returns a `SlotLease` (released exactly once); it raises
    `NoWorkerSlotError` on timeout (saying whether the router or the project cap was full)
    and `WorkerCancelledError` when `cancel(name)` ended the wait.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._in_use = 0
        self._waiting = 0
        self._lock = threading.Lock()
        self._projects: dict[str | None, _Project] = {}
        self._queued: dict[str | None, _Project] = {}  # the projects with entries queued
        self._names: dict[str, _Waiter] = {}
        self._arrivals = itertools.count()
        self._sweep_at = _KEEP_PROJECTS

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._waiting

    def in_use_by(self, project: str | None) -> int:
        """Slots held for `project` (None: by jobs without a project)."""
        with self._lock:
            record = self._projects.get(project)
            return record.in_use if record is not None else 0

    def waiting_for(self, project: str | None) -> int:
        """Waiters for `project` (None: jobs without a project)."""
        with self._lock:
            record = self._projects.get(project)
            if record is None:
                return 0
            return sum(1 for entry in record.queue if entry[2].state == _WAITING)

    def lease(
        self,
        timeout: float | None,
        *,
        project: str | None = None,
        cap: int | None = None,
        priority: int = 0,
        name: str | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> SlotLease:
        """A slot for `project` as a lease, waiting up to `timeout` seconds (None or inf: forever).

        `cap` is the project's cap (None: none), `priority` the waiter's rank (higher
        first), `name` what `cancel` finds the waiter by (the job id) and the error names.
        `cancelled` is asked under the gate's lock before the wait begins: a cancel that
        marks the job and then calls `cancel(name)` either finds the waiter in line or is
        seen here, never neither.
        Raises `NoWorkerSlotError` on timeout, `WorkerCancelledError` when cancelled.
        """
        with self._lock:
            if cancelled is not None and cancelled():
                raise WorkerCancelledError(name or "", waiting=True)
            record = self._project(project, cap)
            if self._in_use < self._capacity and record.has_room():
                # Every waiter that could run was handed a slot already (the gate
                # dispatches on every change): nobody this arrival could overtake.
                self._take(record)
                return SlotLease(self, project)
            started = time.monotonic()
            waiter = _Waiter(name, project)
            heapq.heappush(record.queue, (-priority, next(self._arrivals), waiter))
            self._queued[project] = record
            self._waiting += 1
            if name is not None:
                self._names[name] = waiter
        try:
            _wait(waiter.granted, timeout)
        except BaseException:
            if self._leave(waiter):
                self.release(project)  # handed over as the wait broke: not ours to keep
            raise
        if self._leave(waiter):
            return SlotLease(self, project)
        if waiter.cancelled:
            raise WorkerCancelledError(name or "", waiting=True)
        raise self._refusal(waiter, time.monotonic() - started)

    def lease_over_capacity(self, project: str | None = None, cap: int | None = None) -> SlotLease:
        """A slot even when none is free, router- or project-wide (adopted workers already run)."""
        with self._lock:
            self._take(self._project(project, cap))
        return SlotLease(self, project)

    def cancel(self, name: str) -> bool:
        """End the wait of the waiter named `name`: its `lease` raises `WorkerCancelledError`.

        False when no such waiter waits (never was, or was handed its slot already).
        """
        with self._lock:
            waiter = self._names.get(name)
            if waiter is None or waiter.state != _WAITING:
                return False
            waiter.cancelled = True
            self._drop(waiter)
            self._sweep()
        waiter.granted.set()
        return True

    def release(self, project: str | None = None) -> None:
        """Give back one slot held for `project`; the best waiter that can use one gets it."""
        with self._lock:
            self._in_use -= 1
            self._projects[project].in_use -= 1
            if self._queued:
                self._dispatch()
            if len(self._projects) > self._sweep_at:
                self._sweep()

    # -- internals, all under the lock --------------------------------------------------

    def _project(self, project: str | None, cap: int | None) -> _Project:
        """The record of `project`; its cap is the one its latest request named."""
        record = self._projects.get(project)
        if record is None:
            record = self._projects[project] = _Project()
        if project is not None and record.cap != cap:
            raised = cap is None or (record.cap is not None and cap > record.cap)
            record.cap = cap
            if raised:
                self._dispatch()
        return record

    def _take(self, record: _Project) -> None:
        self._in_use += 1
        record.in_use += 1

    def _dispatch(self) -> None:
        """Hand free slots to the best waiters that can use them, until none can."""
        while self._in_use < self._capacity and self._queued:
            best: _Entry | None = None
            best_record: _Project | None = None
            for project, record in list(self._queued.items()):
                head = record.head()
                if head is None:
                    del self._queued[project]
                    record.dead = 0
                elif record.has_room() and (best is None or head < best):
                    best, best_record = head, record
            if best is None or best_record is None:
                return
            heapq.heappop(best_record.queue)
            waiter = best[2]
            waiter.state = _GRANTED
            self._waiting -= 1
            self._take(best_record)
            waiter.granted.set()

    def _drop(self, waiter: _Waiter) -> None:
        """Take a waiting waiter out of the line."""
        waiter.state = _GONE
        self._waiting -= 1
        record = self._projects[waiter.project]
        record.drop_one()
        if waiter.name is not None and self._names.get(waiter.name) is waiter:
            del self._names[waiter.name]

    def _leave(self, waiter: _Waiter) -> bool:
        """End a wait; True when the slot was handed over (also just as the wait ended)."""
        with self._lock:
            if waiter.name is not None and self._names.get(waiter.name) is waiter:
                del self._names[waiter.name]
            if waiter.state == _GRANTED:
                return True
            if waiter.state == _WAITING:
                self._drop(waiter)
            self._sweep()
            return False

    def _sweep(self) -> None:
        """Forget projects with nothing held or queued, once many are known (ids come and go)."""
        if len(self._projects) <= self._sweep_at:
            return
        for project, record in list(self._projects.items()):
            if record.in_use <= 0 and record.head() is None:
                del self._projects[project]
                self._queued.pop(project, None)
        # Many busy projects: sweep again only once as many more came.
        self._sweep_at = max(_KEEP_PROJECTS, 2 * len(self._projects))

    def _refusal(self, waiter: _Waiter, waited_s: float) -> NoWorkerSlotError:
        """The timeout error: which limit kept the waiter out as it gave up."""
        with self._lock:
            record = self._projects.get(waiter.project)
            cap = record.cap if record is not None and not record.has_room() else None
            router_full = self._in_use >= self._capacity
        return NoWorkerSlotError(
            waiter.name or "",
            waited_s,
            self._capacity,
            project_id=waiter.project,
            project_cap=cap,
            router_full=router_full or cap is None,
        )


def _wait(granted: threading.Event, timeout: float | None) -> None:
    if timeout is None or math.isinf(timeout) or timeout >= threading.TIMEOUT_MAX:
        granted.wait()  # `monotonic() + inf` would make Event.wait raise OverflowError
        return
    granted.wait(max(0.0, timeout))


class SlotLease:
    """One held slot; `release()` gives it back once, any later call does nothing."""

    __slots__ = ("_gate", "_held", "_lock", "project")

    def __init__(self, gate: SlotGate, project: str | None = None) -> None:
        self._gate = gate
        self.project = project
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> bool:
        """Give the slot back; True only for the call that did."""
        with self._lock:
            if not self._held:
                return False
            self._held = False
        self._gate.release(self.project)
        return True

"""`ListenerRecorder`: the one lifecycle listener the tests use to see what dockyard told it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from dockyard import ActiveWorker, WorkerLifecycleListener, WorkerOutcome


class ListenerRecorder(WorkerLifecycleListener):
    """Keeps every lifecycle call, in order, from whatever thread it arrives.

    - ``events``: ``(kind, job_id, worker or outcome)`` for each start and finish;
    - ``started``: the job ids in start order; ``finished``: ``(job_id, outcome)`` pairs;
    - ``orphans``: ``(container_id, labels)`` for each orphan stopped.

    - ``output``: job id → ``(stream, line)`` for each output line, in order
      (``output_delay_s`` makes each ``on_worker_output`` call that slow first).

    Read them under ``lock`` while workers may still report; `outcomes`, `of` and
    `wait_finished` take it themselves. ``on_started`` is called with each started worker
    before it is recorded.
    """

    def __init__(
        self,
        on_started: Callable[[ActiveWorker], None] | None = None,
        output_delay_s: float = 0.0,
    ) -> None:
        self.lock = threading.Condition()
        self.events: list[tuple[str, str, Any]] = []
        self.started: list[str] = []
        self.finished: list[tuple[str, WorkerOutcome]] = []
        self.orphans: list[tuple[str, dict[str, str]]] = []
        self.output: dict[str, list[tuple[str, str]]] = {}
        self.output_delay_s = output_delay_s
        self._on_started = on_started

    def on_worker_started(self, worker: ActiveWorker) -> None:
        if self._on_started is not None:
            self._on_started(worker)
        with self.lock:
            self.events.append(("started", worker.job_id, worker))
            self.started.append(worker.job_id)
            self.lock.notify_all()

    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        with self.lock:
            self.events.append(("finished", worker.job_id, outcome))
            self.finished.append((worker.job_id, outcome))
            self.lock.notify_all()

    def on_orphan_stopped(self, container_id: str, labels: dict[str, str]) -> None:
        with self.lock:
            self.orphans.append((container_id, labels))

    def on_worker_output(self, worker: ActiveWorker, stream: str, line: str) -> None:
        if self.output_delay_s:
            time.sleep(self.output_delay_s)
        with self.lock:
            self.output.setdefault(worker.job_id, []).append((stream, line))

    def lines(self, job_id: str, stream: str | None = None) -> list[str]:
        """The output lines delivered for ``job_id`` (of one stream, or of both), in order."""
        with self.lock:
            got = list(self.output.get(job_id, ()))
        return [line for s, line in got if stream is None or s == stream]

    def of(self, job_id: str) -> list[str]:
        """The kinds of call (``started``, ``finished``) made about ``job_id``, in order."""
        with self.lock:
            return [kind for kind, jid, _ in self.events if jid == job_id]

    def outcomes(self, job_id: str) -> list[WorkerOutcome]:
        """Every outcome delivered for ``job_id``."""
        with self.lock:
            return [outcome for jid, outcome in self.finished if jid == job_id]

    def wait_finished(self, job_id: str, timeout: float = 30.0) -> WorkerOutcome:
        """The first outcome of ``job_id``, waiting up to ``timeout`` s for it."""
        with self.lock:
            ok = self.lock.wait_for(lambda: self.outcomes(job_id), timeout)
            assert ok, f"no on_worker_finished for {job_id} within {timeout}s: {self.events!r}"
            return self.outcomes(job_id)[0]

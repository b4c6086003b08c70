"""Feeding the batch to the manager: its jobs spawn in file order from a few threads, and
the manager's slot gate queues them."""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

from .._errors import NoWorkerSlotError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._jobs import WorkerJob
    from ..container_manager import ContainerManager
    from ._batch import BatchTracker

# A spawn waits this long for a slot before checking for Ctrl-C and queueing again.
_SLOT_POLL_S = 0.5


class Feeders:
    """Spawns the batch's jobs in file order from a few threads; the slot gate queues them."""

    def __init__(
        self, manager: ContainerManager, tracker: BatchTracker, jobs: Sequence[WorkerJob]
    ) -> None:
        self._manager = manager
        self._tracker = tracker
        self._jobs = list(jobs)
        self._next = 0
        # Jobs whose project was at its cap: put aside so that the feeding threads are not
        # all held by one project's jobs, tried again in turn.
        self._deferred: deque[WorkerJob] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        config = manager.config
        count = max(1, min(len(self._jobs), config.max_workers, config.launch_concurrency))
        # Daemon threads: a second Ctrl-C must be able to end the process even if a launch
        # hangs on an unresponsive engine.
        self._threads = [
            threading.Thread(target=self._feed, name=f"dockyard-cli-feed-{i}", daemon=True)
            for i in range(count)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """No new spawns; a launch under way still completes (and its worker is tracked)."""
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _take(self) -> WorkerJob | None:
        with self._lock:
            if self._stop.is_set():
                return None
            if self._next < len(self._jobs):
                job = self._jobs[self._next]
                self._next += 1
                return job
            return self._deferred.popleft() if self._deferred else None

    def _feed(self) -> None:
        while (job := self._take()) is not None:
            self._spawn(job)

    def _spawn(self, job: WorkerJob) -> None:
        assert job.id is not None
        while not self._stop.is_set():
            try:
                self._manager.spawn_worker(job, slot_timeout=_SLOT_POLL_S)
            except NoWorkerSlotError as err:
                if err.limit == "project" and self._defer(job):
                    return  # its project is full: feed other jobs meanwhile
                continue  # all slots busy: look at the stop flag, then queue again
            except Exception as err:
                self._tracker.spawn_failed(job.id, err)
            return

    def _defer(self, job: WorkerJob) -> bool:
        """Put a job of a full project aside; False when nothing else is left to feed."""
        with self._lock:
            if self._next >= len(self._jobs) and not self._deferred:
                return False
            self._deferred.append(job)
            return True

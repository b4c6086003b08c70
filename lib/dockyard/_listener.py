"""Notifications: the host's lifecycle listener, called so that it can never break a worker."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._models import ActiveWorker, WorkerLifecycleListener, WorkerOutcome
from ._sentry import Reporter

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["SafeListener", "log_ids", "wants_output"]


log = logging.getLogger("dockyard.tracker")


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

    def output(self, worker: ActiveWorker, stream: str, line: str) -> None:
        self._call("on_worker_output", worker.job_id, worker, stream, line)

    def output_lines(
        self,
        worker: ActiveWorker,
        stream: str,
        lines: Sequence[str],
        stopped: Callable[[], bool],
    ) -> int:
        """`output` of each line in turn until `stopped()`; how many went out. One hook
        look-up and one `try` for the lot: a chatty worker's lines cost a call each."""
        if self._listener is None:
            return 0
        hook = self._listener.on_worker_output
        done = 0
        count = len(lines)
        while done < count:
            try:
                for line in lines[done:] if done else lines:
                    if stopped():
                        return done
                    hook(worker, stream, line)
                    done += 1
            except Exception as err:
                done += 1  # the line that raised counts as delivered: it was handed over
                self._failed("on_worker_output", worker.job_id, err)
        return done

    def _call(self, hook: str, job_id: str | None, *args: object) -> None:
        if self._listener is None:
            return
        try:
            getattr(self._listener, hook)(*args)
        except Exception as err:
            self._failed(hook, job_id, err)

    def _failed(self, hook: str, job_id: str | None, err: Exception) -> None:
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


def wants_output(listener: WorkerLifecycleListener | None) -> bool:
    """Whether the host's listener does anything with output lines (else none are queued)."""
    if listener is None:
        return False
    hook = getattr(type(listener), "on_worker_output", None)
    return hook is not None and hook is not WorkerLifecycleListener.on_worker_output

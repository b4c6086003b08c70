"""Notifications: the host's lifecycle listener, called so that it can never break a worker,
and counted in the metrics before the host hears."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ._models import ActiveWorker, WorkerLifecycleListener, WorkerOutcome
from ._sentry import Reporter

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._metrics import Metrics

__all__ = ["MeteredListener", "SafeListener", "lifecycle_listener", "wants_output"]


log = logging.getLogger("dockyard.tracker")


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


class MeteredListener(SafeListener):
    """The manager's safe listener, counting starts and outcomes before the host hears."""

    def __init__(
        self,
        listener: WorkerLifecycleListener | None,
        metrics: Metrics,
        reporter: Reporter | None = None,
    ) -> None:
        super().__init__(listener, reporter)
        self._metrics = metrics

    def started(self, worker: ActiveWorker) -> None:
        self._metrics.worker_started()
        super().started(worker)

    def finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        duration = outcome.duration_s
        if duration is None:  # the engine could not tell (say, auto-removed): our own clock
            duration = max(0.0, (datetime.now(UTC) - worker.started_at).total_seconds())
        self._metrics.worker_finished(outcome, duration)
        super().finished(worker, outcome)


def lifecycle_listener(
    listener: WorkerLifecycleListener | None, metrics: Metrics, reporter: Reporter | None = None
) -> SafeListener:
    """The listener the manager hands around: metered when metrics are on."""
    if metrics.enabled:
        return MeteredListener(listener, metrics, reporter)
    return SafeListener(listener, reporter)

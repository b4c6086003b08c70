"""Metrics: what dockyard reports, the no-op `NO_METRICS`, and the listener that counts.

Every part that reports takes a `Metrics`; without a registry it is `NO_METRICS`, whose
methods do nothing. The Prometheus series behind it are `_prometheus`'s, built by its
`build_metrics` only when the host gives a `CollectorRegistry`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ._listener import SafeListener

if TYPE_CHECKING:
    from ._models import ActiveWorker, WorkerLifecycleListener, WorkerOutcome
    from ._sentry import Reporter

__all__ = [
    "NO_METRICS",
    "MeteredListener",
    "Metrics",
    "lifecycle_listener",
]


class Metrics:
    """What dockyard reports to metrics; this base class records nothing (no registry)."""

    enabled = False

    def worker_started(self) -> None:
        """A worker's container started (launched or adopted)."""

    def worker_finished(self, outcome: WorkerOutcome, duration_s: float | None) -> None:
        """A worker got its one outcome."""

    def slot_wait(self, seconds: float, *, acquired: bool) -> None:
        """A spawn waited `seconds` for a worker slot, and got one or gave up."""

    def spawn_latency(self, seconds: float) -> None:
        """A launch took `seconds` from submission (slot held) until its container ran."""

    def spawn_failed(self, err: BaseException) -> None:
        """A launch failed after it had a slot."""

    def engine_call(self, operation: str, result: str, seconds: float) -> None:
        """One Docker gateway call: its name, how it ended (`ok`, `not_found`, ...), its time."""

    def snapshot_lookup(self, *, hit: bool) -> None:
        """A snapshot-enabled spawn found a snapshot to start from, or none (starts cold)."""

    def snapshot_fallback(self) -> None:
        """A snapshot image had vanished: the spawn fell back to the base image."""

    def snapshot_commit(self, *, ok: bool) -> None:
        """A clean exit was committed and registered as a snapshot, or the commit failed
        (the next run starts cold)."""

    def snapshots_evicted(self, count: int) -> None:
        """A cleanup evicted `count` snapshots."""

    def orphans_reaped(self, count: int) -> None:
        """An orphan scan stopped or removed `count` containers."""

    def image_pull(self, *, ok: bool, result: str | None = None) -> None:
        """A base image was pulled, or its pull failed; `result` says how it ended
        (`_pull_policy.PULL_RESULTS`; default `ok` or `error`)."""

    def dangling_images_removed(self, count: int) -> None:
        """A dangling-image cleanup removed `count` images."""

    def log_lines(self, stream: str, count: int) -> None:
        """Workers printed `count` more lines on `stream` (`stdout` or `stderr`)."""

    def log_lines_dropped(self, count: int) -> None:
        """`count` output lines were not delivered: the host's listener fell behind."""

    def close(self) -> None:
        """Unregister the series (the manager is closed)."""


NO_METRICS = Metrics()


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

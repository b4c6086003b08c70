"""Metrics: what dockyard reports, and the no-op `NO_METRICS`.

Every part that reports takes a `Metrics`; without a registry it is `NO_METRICS`, whose
methods do nothing. The Prometheus series behind it are `_prometheus`'s, built by its
`build_metrics` only when the host gives a `CollectorRegistry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import WorkerOutcome

__all__ = ["NO_METRICS", "Metrics"]


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

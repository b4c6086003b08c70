"""The Prometheus series: every series dockyard exposes, and the values of their labels.

`build_metrics(None, ...)` returns `NO_METRICS` (prometheus-client is then never imported).
Given a `CollectorRegistry`, `PrometheusMetrics` registers the series below on it (names
under `dockyard_`; labels take a handful of values, never a job id).
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any

from ._drivers import DRIVERS
from ._errors import ConfigError, DockerUnavailableError, DockyardError, WorkerSpawnError
from ._metrics import NO_METRICS, Metrics
from ._models import BOOT_FAILURE_EXIT_CODE, WorkerOutcome
from ._pull_policy import PULL_RESULTS

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import CollectorRegistry

__all__ = [
    "PrometheusMetrics",
    "build_metrics",
    "engine_operations",
    "error_kind",
    "outcome_reason",
]

# Jobs run from seconds to hours (the default timeout is 30 min; projects may set more).
JOB_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
# A free slot is taken in microseconds; a busy router makes jobs wait minutes.
SLOT_WAIT_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)  # fmt: skip
# create + start take tens to hundreds of ms; a pull or a busy engine takes seconds.
SPAWN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Most engine calls answer in ms; commits, pulls and stops with a grace take seconds.
ENGINE_CALL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
)  # fmt: skip

_SIGNAL_EXIT = 128  # a shell reports death by signal N as exit code 128 + N

# -- every value a label of a labelled series can take, in one place --
# The series exist at zero from the manager's start: Prometheus's rate() and increase()
# miss the first increment of a series that appears with value 1, and prometheus-client
# makes a labelled child only on first use. Unit tests hold these lists to the code that
# picks the values (`outcome_reason`, `error_kind`, the gateways' operation names).

OUTCOME_LABELS: tuple[tuple[str, str], ...] = (
    ("succeeded", "completed"),
    ("failed", "exit_error"),
    ("failed", "boot_failure"),
    ("failed", "exit_signal"),
    ("failed", "oom"),
    ("failed", "unknown"),
    ("timed_out", "timeout"),
    ("cancelled", "cancelled"),
    ("lost", "lost"),
)
"""(status, reason) of `dockyard_worker_outcomes_total`: the pairs `outcome_reason` makes."""

OUTCOME_STATUSES: tuple[str, ...] = tuple(dict.fromkeys(status for status, _ in OUTCOME_LABELS))

SPAWN_FAILURE_KINDS: tuple[str, ...] = (
    "engine",
    "docker_unavailable",
    "worker_image_resolution",
    "duplicate_job",
    "invalid_job",
    "job_data_offload",
    "other",
)
"""`error` of `dockyard_spawn_failures_total`; a kind outside this list is counted as `other`."""

LOG_STREAMS: tuple[str, ...] = ("stdout", "stderr")
"""`stream` of `dockyard_log_lines_total`."""

ENGINE_CALL_RESULTS: tuple[str, ...] = ("ok", "not_found", "conflict", "unreachable", "error")

DOCKER_OPERATIONS: tuple[str, ...] = DRIVERS["docker"].operations
"""`operation` of the engine-call series on the Docker backend (containers and images)."""

SWARM_OPERATIONS: tuple[str, ...] = DRIVERS["swarm"].operations
"""On the Swarm backend: its service and task calls, and the node engine's own."""


def engine_operations(backend: str) -> tuple[str, ...]:
    """The engine call operations a manager on `backend` can report (the driver table's)."""
    return DRIVERS[backend].operations


def outcome_reason(outcome: WorkerOutcome) -> str:
    """A low-cardinality reason for an outcome, for the `reason` label.

    `completed`, `timeout`, `cancelled`, `lost`, `oom`, `boot_failure` (exit 2),
    `exit_signal` (killed by a signal, exit > 128), `exit_error` (any other non-zero exit)
    or `unknown`.
    """
    if outcome.status == "succeeded":
        return "completed"
    if outcome.status == "cancelled":
        return "cancelled"
    if outcome.status == "timed_out":
        return "timeout"
    if outcome.status == "lost":
        return "lost"
    if outcome.oom_killed:
        return "oom"
    code = outcome.exit_code
    if code is None:
        return "unknown"
    if code == BOOT_FAILURE_EXIT_CODE:
        return "boot_failure"
    return "exit_signal" if code > _SIGNAL_EXIT else "exit_error"


def error_kind(err: BaseException) -> str:
    """A low-cardinality name for a spawn error: dockyard's own types, else engine/other."""
    if isinstance(err, WorkerSpawnError):
        return "engine"  # the engine refused (its docker-py error is the cause)
    if isinstance(err, DockerUnavailableError):
        return "docker_unavailable"  # also its private subclasses (a timeout)
    if isinstance(err, DockyardError):
        name = type(err).__name__.removesuffix("Error")
        return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    module = type(err).__module__ or ""
    return "engine" if module.startswith(("docker", "requests", "urllib3")) else "other"


class PrometheusMetrics(Metrics):
    """The series on a prometheus-client `CollectorRegistry`, one set per manager."""

    enabled = True

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        max_workers: int,
        active: Callable[[], int],
        waiting: Callable[[], int],
        backend: str = "docker",
    ) -> None:
        from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415  (opt-in)

        self._registry = registry
        self._collectors: list[Any] = []

        def add(metric: Any) -> Any:
            self._collectors.append(metric)
            return metric

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return add(Counter(name, doc, labels, registry=None))

        gauge = add(Gauge("dockyard_workers_active", "Worker containers running.", registry=None))
        gauge.set_function(active)
        gauge = add(Gauge("dockyard_worker_slots_limit", "max_workers.", registry=None))
        gauge.set(max_workers)
        gauge = add(Gauge("dockyard_slot_waiters", "Spawns waiting for a slot.", registry=None))
        gauge.set_function(waiting)
        self._started = counter(
            "dockyard_workers_started", "Worker containers started (launched or adopted)."
        )
        self._outcomes = counter(
            "dockyard_worker_outcomes",
            "Worker outcomes by status and reason (exit class, oom, timeout, lost, ...).",
            ("status", "reason"),
        )
        self._duration = add(
            Histogram(
                "dockyard_job_duration_seconds",
                "Worker run time, start to exit, by outcome status.",
                ("status",),
                buckets=JOB_DURATION_BUCKETS,
                registry=None,
            )
        )
        self._slot_wait = add(
            Histogram(
                "dockyard_slot_wait_seconds",
                "Time a spawn waited for a worker slot (spawns that got one).",
                buckets=SLOT_WAIT_BUCKETS,
                registry=None,
            )
        )
        self._slot_timeouts = counter(
            "dockyard_slot_wait_timeouts", "Spawns that gave up waiting for a slot."
        )
        self._spawn = add(
            Histogram(
                "dockyard_spawn_duration_seconds",
                "Launch time, submission (slot held) to container running.",
                buckets=SPAWN_BUCKETS,
                registry=None,
            )
        )
        self._spawn_failures = counter(
            "dockyard_spawn_failures", "Launches that failed after taking a slot.", ("error",)
        )
        self._engine_calls = counter(
            "dockyard_engine_calls", "Docker engine calls by operation and result.",
            ("operation", "result"),
        )  # fmt: skip
        self._engine_latency = add(
            Histogram(
                "dockyard_engine_call_duration_seconds",
                "Docker engine call latency by operation.",
                ("operation",),
                buckets=ENGINE_CALL_BUCKETS,
                registry=None,
            )
        )
        self._snapshot_hits = counter("dockyard_snapshot_hits", "Spawns started from a snapshot.")
        self._snapshot_misses = counter(
            "dockyard_snapshot_misses", "Snapshot-enabled spawns with no snapshot to start from."
        )
        self._snapshot_fallbacks = counter(
            "dockyard_snapshot_fallbacks", "Spawns whose snapshot image had vanished."
        )
        self._snapshot_commits = counter("dockyard_snapshot_commits", "Snapshots committed.")
        self._snapshot_commit_failures = counter(
            "dockyard_snapshot_commit_failures", "Snapshot commits that failed."
        )
        self._snapshot_evictions = counter("dockyard_snapshot_evictions", "Snapshots evicted.")
        self._orphans = counter("dockyard_orphans_reaped", "Orphaned containers stopped/removed.")
        self._pulls = counter(
            "dockyard_image_pulls", "Base image pulls by how they ended.", ("result",)
        )
        for result in PULL_RESULTS:  # every series from zero: a first failure shows in rate()
            self._pulls.labels(result)
        self._pull_failures = counter("dockyard_image_pull_failures", "Failed image pulls.")
        self._dangling = counter(
            "dockyard_dangling_images_removed", "Dangling dockyard images removed."
        )
        self._log_lines = counter(
            "dockyard_log_lines", "Lines workers printed, by stream (masked, read live).",
            ("stream",),
        )  # fmt: skip
        self._log_lines_dropped = counter(
            "dockyard_log_lines_dropped",
            "Output lines not delivered to the listener: it fell behind its workers.",
        )
        self._call_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._create_known_series(engine_operations(backend))
        self._register()

    def _create_known_series(self, operations: tuple[str, ...]) -> None:
        """Every label set of the labelled series, at zero (see `OUTCOME_LABELS`)."""
        for status, reason in OUTCOME_LABELS:
            self._outcomes.labels(status, reason)
        for status in OUTCOME_STATUSES:
            self._duration.labels(status)
        for kind in SPAWN_FAILURE_KINDS:
            self._spawn_failures.labels(kind)
        for stream in LOG_STREAMS:
            self._log_lines.labels(stream)
        for operation in operations:
            for result in ENGINE_CALL_RESULTS:
                self._call_children[(operation, result)] = (
                    self._engine_calls.labels(operation, result),
                    self._engine_latency.labels(operation),
                )

    def _register(self) -> None:
        done = []
        try:
            for collector in self._collectors:
                self._registry.register(collector)
                done.append(collector)
        except ValueError as err:  # a name taken already: another manager on this registry
            for collector in done:
                self._registry.unregister(collector)
            raise ConfigError(
                "metrics_registry",
                f"{err}; give each ContainerManager a CollectorRegistry of its own",
            ) from None

    def close(self) -> None:
        for collector in self._collectors:
            with contextlib.suppress(KeyError):  # closed already
                self._registry.unregister(collector)

    def worker_started(self) -> None:
        self._started.inc()

    def worker_finished(self, outcome: WorkerOutcome, duration_s: float | None) -> None:
        self._outcomes.labels(outcome.status, outcome_reason(outcome)).inc()
        if duration_s is not None:
            self._duration.labels(outcome.status).observe(duration_s)

    def slot_wait(self, seconds: float, *, acquired: bool) -> None:
        if acquired:
            self._slot_wait.observe(seconds)
        else:
            self._slot_timeouts.inc()

    def spawn_latency(self, seconds: float) -> None:
        self._spawn.observe(seconds)

    def spawn_failed(self, err: BaseException) -> None:
        kind = error_kind(err)
        self._spawn_failures.labels(kind if kind in SPAWN_FAILURE_KINDS else "other").inc()

    def engine_call(self, operation: str, result: str, seconds: float) -> None:
        # The hottest path: the labelled children are looked up once per (operation, result).
        children = self._call_children.get((operation, result))
        if children is None:
            children = (
                self._engine_calls.labels(operation, result),
                self._engine_latency.labels(operation),
            )
            self._call_children[(operation, result)] = children
        children[0].inc()
        children[1].observe(seconds)

    def snapshot_lookup(self, *, hit: bool) -> None:
        (self._snapshot_hits if hit else self._snapshot_misses).inc()

    def snapshot_fallback(self) -> None:
        self._snapshot_fallbacks.inc()

    def snapshot_commit(self, *, ok: bool) -> None:
        (self._snapshot_commits if ok else self._snapshot_commit_failures).inc()

    def snapshots_evicted(self, count: int) -> None:
        self._snapshot_evictions.inc(count)

    def orphans_reaped(self, count: int) -> None:
        self._orphans.inc(count)

    def image_pull(self, *, ok: bool, result: str | None = None) -> None:
        self._pulls.labels(result or ("ok" if ok else "error")).inc()
        if not ok:
            self._pull_failures.inc()

    def dangling_images_removed(self, count: int) -> None:
        self._dangling.inc(count)

    def log_lines(self, stream: str, count: int) -> None:
        if stream in LOG_STREAMS:
            self._log_lines.labels(stream).inc(count)

    def log_lines_dropped(self, count: int) -> None:
        self._log_lines_dropped.inc(count)


def build_metrics(
    registry: object | None,
    *,
    max_workers: int,
    active: Callable[[], int],
    waiting: Callable[[], int],
    backend: str = "docker",
) -> Metrics:
    """`NO_METRICS` without a registry (prometheus-client stays unimported), else the series.

    `active` and `waiting` are read at scrape time: the gauges can never drift. `backend`
    picks the engine operations whose series exist from the start.
    """
    if registry is None:
        return NO_METRICS
    try:
        from prometheus_client import CollectorRegistry  # noqa: PLC0415  (opt-in)
    except ImportError:  # pragma: no cover - a registry implies the package
        raise ConfigError(
            "metrics_registry", "needs prometheus-client: pip install 'dockyard[metrics]'"
        ) from None
    if not isinstance(registry, CollectorRegistry):
        raise ConfigError(
            "metrics_registry",
            f"expected a prometheus_client.CollectorRegistry, got {type(registry).__name__}",
        )
    return PrometheusMetrics(
        registry, max_workers=max_workers, active=active, waiting=waiting, backend=backend
    )

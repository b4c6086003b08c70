"""Metrics without an engine: zero cost when off, outcome reasons, registry handling, the
gateway's observer hook and the metered listener (series read with prometheus_client.parser).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests
from prometheus_client import CollectorRegistry

from dockyard import (
    ActiveWorker,
    ConfigError,
    ContainerManager,
    DockerUnavailableError,
    DockyardError,
    NoWorkerSlotError,
    RouterConfig,
    WorkerLifecycleListener,
    WorkerOutcome,
)
from dockyard._docker import DockerGateway
from dockyard._errors import result_of, translate
from dockyard._listener import MeteredListener
from dockyard._metrics import NO_METRICS, Metrics
from dockyard._prometheus import PrometheusMetrics, build_metrics, error_kind, outcome_reason
from dockyard._pull_policy import PULL_RESULTS
from promscrape import Scrape
from support.listeners import ListenerRecorder

LIB = Path(__file__).resolve().parents[2] / "lib"


def api_error(status: int, text: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    cls = docker.errors.NotFound if status == 404 else docker.errors.APIError
    return cls(f"{status} error", response=response, explanation=text)


def metrics_on(registry: CollectorRegistry, *, active: int = 0, waiting: int = 0) -> Metrics:
    return build_metrics(registry, max_workers=3, active=lambda: active, waiting=lambda: waiting)


def outcome(status: str, exit_code: int | None = None, oom: bool | None = None) -> WorkerOutcome:
    return WorkerOutcome("job-1", status, exit_code=exit_code, oom_killed=oom)  # type: ignore[arg-type]


def worker(started_ago_s: float = 5.0) -> ActiveWorker:
    started = datetime.now(UTC) - timedelta(seconds=started_ago_s)
    return ActiveWorker(
        job_id="job-1",
        container_id="c" * 64,
        container_name="cascade-worker-job-1",
        image="img",
        started_at=started,
        deadline=started + timedelta(hours=1),
    )


# --------------------------------------------------------------------------- off: zero cost


def test_without_a_registry_prometheus_client_is_never_imported() -> None:
    """A manager built, used for a spawn refusal and closed without metrics_registry."""
    script = textwrap.dedent(
        """
        import sys
        import docker
        from dockyard import ContainerManager, RouterConfig
        from dockyard._metrics import NO_METRICS

        api = docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
        manager = ContainerManager(RouterConfig(worker_image="img"), docker_client=api)
        assert manager._parts.metrics is NO_METRICS
        assert manager._parts.driver.observer is None
        manager.scan_and_cleanup_orphans()
        manager.close()
        loaded = sorted(m for m in sys.modules if m.startswith("prometheus_client"))
        print("loaded:", loaded)
        assert not loaded, loaded
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        env={"PYTHONPATH": str(LIB), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "loaded: []" in done.stdout


def test_the_no_op_metrics_accept_every_call() -> None:
    assert build_metrics(None, max_workers=1, active=int, waiting=int) is NO_METRICS
    NO_METRICS.worker_started()
    NO_METRICS.worker_finished(outcome("succeeded", 0), 1.0)
    NO_METRICS.slot_wait(0.1, acquired=True)
    NO_METRICS.engine_call("create", "ok", 0.01)
    NO_METRICS.dangling_images_removed(2)
    NO_METRICS.close()
    assert NO_METRICS.enabled is False


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("status", "code", "oom", "reason"),
    [
        ("succeeded", 0, False, "completed"),
        ("failed", 1, False, "exit_error"),
        ("failed", 3, None, "exit_error"),
        ("failed", 2, False, "boot_failure"),
        ("failed", 137, True, "oom"),
        ("failed", 137, False, "exit_signal"),
        ("failed", None, None, "unknown"),
        ("timed_out", 137, False, "timeout"),
        ("timed_out", None, None, "timeout"),
        ("lost", None, None, "lost"),
    ],
)
def test_outcome_reasons(status: str, code: int | None, oom: bool | None, reason: str) -> None:
    assert outcome_reason(outcome(status, code, oom)) == reason


def test_spawn_error_kinds_are_few_and_fixed() -> None:
    assert error_kind(DockerUnavailableError("down")) == "docker_unavailable"
    assert error_kind(NoWorkerSlotError("j", 1.0, 3)) == "no_worker_slot"
    assert error_kind(api_error(500, "boom")) == "engine"
    assert error_kind(requests.exceptions.ConnectionError("x")) == "engine"
    assert error_kind(RuntimeError("job-12345 something")) == "other"


# --------------------------------------------------------------------------- registry


def test_every_series_is_registered_with_its_type() -> None:
    registry = CollectorRegistry()
    metrics = metrics_on(registry, active=2, waiting=1)
    metrics.worker_started()
    metrics.worker_finished(outcome("failed", 137, True), 12.0)
    metrics.slot_wait(0.002, acquired=True)
    metrics.slot_wait(5.0, acquired=False)
    metrics.spawn_latency(0.3)
    metrics.spawn_failed(DockerUnavailableError("down"))
    metrics.engine_call("create", "ok", 0.02)
    metrics.engine_call("inspect", "not_found", 0.001)
    metrics.snapshot_lookup(hit=True)
    metrics.snapshot_lookup(hit=False)
    metrics.snapshot_fallback()
    metrics.snapshot_commit(ok=True)
    metrics.snapshot_commit(ok=False)
    metrics.snapshots_evicted(2)
    metrics.orphans_reaped(3)
    metrics.image_pull(ok=True)
    metrics.image_pull(ok=False)
    metrics.dangling_images_removed(4)
    metrics.log_lines("stdout", 3)
    metrics.log_lines_dropped(1)

    got = Scrape.of(registry)
    # (prometheus-client also exposes a `<name>_created` gauge per counter and histogram.)
    types = {name: got.type_of(name) for name in got.families if not name.endswith("_created")}
    assert types == {
        "dockyard_workers_active": "gauge",
        "dockyard_worker_slots_limit": "gauge",
        "dockyard_slot_waiters": "gauge",
        "dockyard_workers_started": "counter",
        "dockyard_worker_outcomes": "counter",
        "dockyard_job_duration_seconds": "histogram",
        "dockyard_slot_wait_seconds": "histogram",
        "dockyard_slot_wait_timeouts": "counter",
        "dockyard_spawn_duration_seconds": "histogram",
        "dockyard_spawn_failures": "counter",
        "dockyard_engine_calls": "counter",
        "dockyard_engine_call_duration_seconds": "histogram",
        "dockyard_snapshot_hits": "counter",
        "dockyard_snapshot_misses": "counter",
        "dockyard_snapshot_fallbacks": "counter",
        "dockyard_snapshot_commits": "counter",
        "dockyard_snapshot_commit_failures": "counter",
        "dockyard_snapshot_evictions": "counter",
        "dockyard_orphans_reaped": "counter",
        "dockyard_image_pulls": "counter",
        "dockyard_image_pull_failures": "counter",
        "dockyard_dangling_images_removed": "counter",
        "dockyard_log_lines": "counter",
        "dockyard_log_lines_dropped": "counter",
    }
    assert got.value("dockyard_workers_active") == 2
    assert got.value("dockyard_worker_slots_limit") == 3
    assert got.value("dockyard_slot_waiters") == 1
    assert got.value("dockyard_workers_started_total") == 1
    assert got.value("dockyard_worker_outcomes_total", {"status": "failed", "reason": "oom"}) == 1
    assert got.bucket("dockyard_job_duration_seconds", "15.0", {"status": "failed"}) == 1
    assert got.bucket("dockyard_job_duration_seconds", "5.0", {"status": "failed"}) == 0
    assert got.bucket("dockyard_slot_wait_seconds", "0.005") == 1
    assert got.bucket("dockyard_slot_wait_seconds", "0.001") == 0
    assert got.value("dockyard_slot_wait_timeouts_total") == 1
    assert got.value("dockyard_spawn_duration_seconds_count") == 1
    assert got.value("dockyard_spawn_failures_total", {"error": "docker_unavailable"}) == 1
    calls = {"operation": "inspect", "result": "not_found"}
    assert got.value("dockyard_engine_calls_total", calls) == 1
    assert got.value("dockyard_engine_call_duration_seconds_count", {"operation": "create"}) == 1
    assert got.value("dockyard_snapshot_evictions_total") == 2
    assert got.value("dockyard_orphans_reaped_total") == 3
    assert got.value("dockyard_dangling_images_removed_total") == 4
    assert got.value("dockyard_image_pull_failures_total") == 1
    assert got.value("dockyard_image_pulls_total", {"result": "ok"}) == 1
    assert got.value("dockyard_image_pulls_total", {"result": "error"}) == 1
    metrics.image_pull(ok=False, result="auth_failed")
    got = Scrape.of(registry)
    assert got.value("dockyard_image_pulls_total", {"result": "auth_failed"}) == 1
    # Every result's series exists from the start (at zero), so a first failure shows in rate().
    assert got.label_values("dockyard_image_pulls", "result") == set(PULL_RESULTS)
    assert got.value("dockyard_image_pull_failures_total") == 2


def test_not_a_registry_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="metrics_registry"):
        build_metrics(object(), max_workers=1, active=int, waiting=int)


def test_a_registry_in_use_is_refused_whole_and_free_again_after_close() -> None:
    registry = CollectorRegistry()
    first = metrics_on(registry)
    with pytest.raises(ConfigError, match="CollectorRegistry of its own"):
        metrics_on(registry)
    first.worker_started()
    # The refused one left nothing behind: the first set is intact and alone.
    assert Scrape.of(registry).value("dockyard_workers_started_total") == 1
    first.close()
    first.close()  # idempotent
    assert Scrape.of(registry).families == {}
    second = metrics_on(registry)
    assert isinstance(second, PrometheusMetrics)
    assert "dockyard_workers_started" in Scrape.of(registry).families


def test_two_managers_on_one_registry_are_refused_until_the_first_closes() -> None:
    registry = CollectorRegistry()
    api = docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    config = RouterConfig(worker_image="img", max_workers=2)
    try:
        first = ContainerManager(config, docker_client=api, metrics_registry=registry)
        with pytest.raises(ConfigError, match="metrics_registry"):
            ContainerManager(config, docker_client=api, metrics_registry=registry)
        assert Scrape.of(registry).value("dockyard_worker_slots_limit") == 2
        first.close()
        with ContainerManager(config, docker_client=api, metrics_registry=registry):
            assert Scrape.of(registry).value("dockyard_workers_active") == 0
        with pytest.raises(ConfigError, match="CollectorRegistry"):
            ContainerManager(config, docker_client=api, metrics_registry="registry")  # type: ignore[arg-type]
    finally:
        api.close()


# --------------------------------------------------------------------------- gateway hook


class _StubAPI:
    def __init__(self) -> None:
        self.fail: BaseException | None = None

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        return {"Id": container_id}


def test_the_gateway_tells_its_observer_each_call_and_its_result() -> None:
    api = _StubAPI()
    seen: list[tuple[str, str, float]] = []
    gateway = DockerGateway(api)  # type: ignore[arg-type]
    assert gateway.inspect("abc") == {"Id": "abc"}  # no observer: just the call
    gateway.observer = lambda op, result, seconds: seen.append((op, result, seconds))
    gateway.inspect("abc")
    api.fail = api_error(404, "No such container: abc")
    with pytest.raises(DockyardError) as not_found:  # translated: a typed error
        gateway.inspect("abc")
    assert isinstance(not_found.value.__cause__, docker.errors.NotFound)
    api.fail = requests.exceptions.ConnectionError("reset")
    with pytest.raises(DockerUnavailableError):
        gateway.inspect("abc")
    assert [(op, result) for op, result, _ in seen] == [
        ("inspect", "ok"),
        ("inspect", "not_found"),
        ("inspect", "unreachable"),
    ]
    assert all(seconds >= 0 for *_, seconds in seen)


def test_a_failing_observer_never_breaks_the_call() -> None:
    api = _StubAPI()

    def broken(op: str, result: str, seconds: float) -> None:
        raise RuntimeError("observer bug")

    gateway = DockerGateway(api, observer=broken)  # type: ignore[arg-type]
    assert gateway.inspect("abc") == {"Id": "abc"}


def test_call_results() -> None:
    assert result_of(None) == "ok"
    assert result_of(translate("call", api_error(409, "conflict"))) == "conflict"
    assert result_of(translate("call", api_error(503, "unavailable"))) == "unreachable"
    assert result_of(translate("call", api_error(500, "boom"))) == "error"


# --------------------------------------------------------------------------- listener


class _Raising(WorkerLifecycleListener):
    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        raise RuntimeError("host bug")


def test_the_metered_listener_counts_before_the_host_and_survives_it() -> None:
    registry = CollectorRegistry()
    listener = MeteredListener(_Raising(), metrics_on(registry))
    listener.started(worker())
    listener.finished(worker(started_ago_s=90), outcome("timed_out", 137))
    got = Scrape.of(registry)
    assert got.value("dockyard_workers_started_total") == 1
    timeout = {"status": "timed_out", "reason": "timeout"}
    assert got.value("dockyard_worker_outcomes_total", timeout) == 1
    # The engine gave no duration: the worker's own start time stands in (90 s ago).
    assert got.bucket("dockyard_job_duration_seconds", "60.0", {"status": "timed_out"}) == 0
    assert got.bucket("dockyard_job_duration_seconds", "120.0", {"status": "timed_out"}) == 1


def test_the_metered_listener_passes_every_event_on() -> None:
    registry = CollectorRegistry()
    recording = ListenerRecorder()
    listener = MeteredListener(recording, metrics_on(registry))
    listener.started(worker())
    listener.finished(worker(), WorkerOutcome("job-1", "succeeded", exit_code=0, duration_s=1.5))
    assert recording.of("job-1") == ["started", "finished"]
    assert (
        Scrape.of(registry).bucket("dockyard_job_duration_seconds", "5.0", {"status": "succeeded"})
        == 1
    )

"""Counters a dashboard can trust: every label set of dockyard's labelled series exists at
zero from the manager's start (Prometheus's rate() misses the first increment of a series
born at 1), and the lists of known label values cover every value the code can produce.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import dockyard
from dockyard import (
    ContainerManager,
    DockerUnavailableError,
    DockyardError,
    DuplicateJobError,
    InvalidJobError,
    JobDataOffloadError,
    RouterConfig,
    WorkerImageResolutionError,
    WorkerJob,
    WorkerOutcome,
    WorkerSpawnError,
)
from dockyard._exit_monitor import ExitWaitClosedError
from dockyard._models import OutcomeStatus
from dockyard._prometheus import (
    DOCKER_OPERATIONS,
    ENGINE_CALL_RESULTS,
    LOG_STREAMS,
    OUTCOME_LABELS,
    OUTCOME_STATUSES,
    SPAWN_FAILURE_KINDS,
    SWARM_OPERATIONS,
    build_metrics,
    error_kind,
    outcome_reason,
)
from dockyard.testing import DEFAULT_IMAGE, FakeDockerAPI, RecordingReporter, api_error
from promscrape import Scrape

PACKAGE = Path(dockyard.__file__).parent


def present(got: Scrape, name: str, labels: dict[str, str]) -> float | None:
    """The sample's value, or None when the series does not exist at all."""
    return got.samples.get((name, frozenset(labels.items())))


def expected_zero_series(operations: tuple[str, ...]) -> dict[tuple[str, frozenset], float]:
    series: list[tuple[str, dict[str, str]]] = [
        ("dockyard_worker_outcomes_total", {"status": s, "reason": r}) for s, r in OUTCOME_LABELS
    ]
    series += [("dockyard_job_duration_seconds_count", {"status": s}) for s in OUTCOME_STATUSES]
    series += [("dockyard_spawn_failures_total", {"error": kind}) for kind in SPAWN_FAILURE_KINDS]
    series += [("dockyard_log_lines_total", {"stream": stream}) for stream in LOG_STREAMS]
    series += [("dockyard_log_lines_dropped_total", {})]
    series += [
        ("dockyard_engine_calls_total", {"operation": op, "result": result})
        for op in operations
        for result in ENGINE_CALL_RESULTS
    ]
    series += [
        ("dockyard_engine_call_duration_seconds_count", {"operation": op}) for op in operations
    ]
    return {(name, frozenset(labels.items())): 0.0 for name, labels in series}


def test_every_known_label_set_is_at_zero_right_after_the_manager_starts() -> None:
    registry = CollectorRegistry()
    api = FakeDockerAPI(images={DEFAULT_IMAGE})
    config = RouterConfig(worker_image=DEFAULT_IMAGE, router_instance_id="zero")
    with ContainerManager(config, docker_client=api, metrics_registry=registry):  # type: ignore[arg-type]
        got = Scrape.of(registry)
    expected = expected_zero_series(DOCKER_OPERATIONS)
    assert {key: got.samples.get(key) for key in expected} == expected
    # And nothing labelled beyond them: no swarm operation on the Docker backend.
    counters = {
        "dockyard_worker_outcomes_total",
        "dockyard_spawn_failures_total",
        "dockyard_engine_calls_total",
        "dockyard_log_lines_total",
    }
    labelled = {key for key in got.samples if key[0] in counters}
    assert labelled <= set(expected)


def test_the_swarm_backend_has_its_service_calls_at_zero_too() -> None:
    registry = CollectorRegistry()
    build_metrics(registry, max_workers=1, active=int, waiting=int, backend="swarm")
    got = Scrape.of(registry)
    expected = expected_zero_series(SWARM_OPERATIONS)
    assert {key: got.samples.get(key) for key in expected} == expected
    assert set(DOCKER_OPERATIONS) < set(SWARM_OPERATIONS)


def test_a_failure_after_start_moves_its_existing_series_from_zero_to_one() -> None:
    registry = CollectorRegistry()
    api = FakeDockerAPI(images={DEFAULT_IMAGE})
    config = RouterConfig(worker_image=DEFAULT_IMAGE, router_instance_id="zero")
    with ContainerManager(
        config,
        docker_client=api,  # type: ignore[arg-type]
        metrics_registry=registry,
        reporter=RecordingReporter(),
    ) as manager:
        labels = {"status": "failed", "reason": "exit_error"}
        assert present(Scrape.of(registry), "dockyard_worker_outcomes_total", labels) == 0
        worker = manager.spawn_worker(WorkerJob("j", "build", {}))
        api.exit(worker.container_id, 3)
        assert manager.wait_for_worker("j", timeout=5).status == "failed"
        api.failures["create_container"] = [api_error(500, "disk full")]
        with pytest.raises(WorkerSpawnError):
            manager.spawn_worker(WorkerJob("k", "build", {}))
        got = Scrape.of(registry)
    assert present(got, "dockyard_worker_outcomes_total", labels) == 1
    assert present(got, "dockyard_spawn_failures_total", {"error": "engine"}) == 1
    create_error = {"operation": "create", "result": "error"}
    assert present(got, "dockyard_engine_calls_total", create_error) == 1
    others = [(s, r) for s, r in OUTCOME_LABELS if (s, r) != ("failed", "exit_error")]
    assert all(
        present(got, "dockyard_worker_outcomes_total", {"status": s, "reason": r}) == 0
        for s, r in others
    )


# -- the lists hold every value the code can produce ------------------------------------


def test_the_outcome_statuses_are_the_models_statuses() -> None:
    assert set(OUTCOME_STATUSES) == set(get_args(OutcomeStatus))


@given(
    status=st.sampled_from(get_args(OutcomeStatus)),
    exit_code=st.none() | st.integers(min_value=-1, max_value=300),
    oom=st.none() | st.booleans(),
)
def test_every_outcome_lands_on_a_known_status_and_reason(
    status: OutcomeStatus, exit_code: int | None, oom: bool | None
) -> None:
    outcome = WorkerOutcome("j", status, exit_code=exit_code, oom_killed=oom)
    assert (status, outcome_reason(outcome)) in OUTCOME_LABELS


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (WorkerSpawnError("refused", 500), "engine"),
        (DockerUnavailableError("down"), "docker_unavailable"),
        (ExitWaitClosedError("closed"), "docker_unavailable"),
        (WorkerImageResolutionError("no digest"), "worker_image_resolution"),
        (DuplicateJobError("j"), "duplicate_job"),
        (InvalidJobError("bad"), "invalid_job"),
        (JobDataOffloadError("redis down"), "job_data_offload"),
        (RuntimeError("a bug"), "other"),
    ],
)
def test_what_a_launch_can_raise_has_a_known_kind(err: BaseException, kind: str) -> None:
    assert error_kind(err) == kind
    assert kind in SPAWN_FAILURE_KINDS


def test_an_unlisted_kind_is_counted_as_other() -> None:
    class SurpriseError(DockyardError):
        pass

    registry = CollectorRegistry()
    metrics = build_metrics(registry, max_workers=1, active=int, waiting=int)
    metrics.spawn_failed(SurpriseError("new"))
    got = Scrape.of(registry)
    assert present(got, "dockyard_spawn_failures_total", {"error": "other"}) == 1
    assert present(got, "dockyard_spawn_failures_total", {"error": "surprise"}) is None


def _operations_named_in(module: str) -> set[str]:
    """The literal operation names a gateway module passes to its engine-call choke point."""
    tree = ast.parse((PACKAGE / module).read_text())
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in {"_run", "_call", "run"}
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


def test_every_engine_operation_the_gateways_name_is_listed() -> None:
    docker_side = _operations_named_in("_docker.py") | _operations_named_in("_docker_images.py")
    swarm_side = (
        _operations_named_in("_swarm.py")
        | _operations_named_in("_swarm_tasks.py")
        | _operations_named_in("_swarm_ending.py")
    )
    assert "create" in docker_side
    assert "service_create" in swarm_side
    assert docker_side <= set(DOCKER_OPERATIONS), docker_side - set(DOCKER_OPERATIONS)
    assert swarm_side <= set(SWARM_OPERATIONS), swarm_side - set(SWARM_OPERATIONS)

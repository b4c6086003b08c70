"""Metrics on a real engine, read from a real /metrics endpoint while real workers run.

Each test serves a fresh `CollectorRegistry` with `prometheus_client.start_http_server` on
127.0.0.1 (a free port, shut down at teardown), gives it to a manager, runs containers, and
reads the series back with `prometheus_client.parser`. Counters are compared after the
test's own `ListenerRecorder` heard of the outcome: the metrics are updated before the
host's listener is called.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest
from prometheus_client import CollectorRegistry, start_http_server

from dockyard import ContainerManager, NoWorkerSlotError, RouterConfig, WorkerJob, WorkerSpawnError
from dockyard._pull_policy import pull_result
from promscrape import Scrape, scrape
from support.engine import is_podman
from support.hold import let_go
from support.listeners import ListenerRecorder
from support.servers import free_port

WAIT_S = 60.0
HOLD = "while [ ! -e /go ]; do sleep 0.05; done"  # runs until the test creates /go
OOM_ATTEMPTS = 4


class Endpoint:
    """A registry served over HTTP on 127.0.0.1."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.port = free_port()
        self.server, self.thread = start_http_server(
            self.port, addr="127.0.0.1", registry=self.registry
        )
        self.url = f"http://127.0.0.1:{self.port}/metrics"

    def scrape(self) -> Scrape:
        return scrape(self.url)

    def wait_for(self, what: str, check: Callable[[Scrape], bool]) -> Scrape:
        """Scrape until `check` holds (something another thread does must show up)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            got = self.scrape()
            if check(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"no scrape showed {what}; last: {got.samples}")
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    served = Endpoint()
    yield served
    served.close()


@pytest.fixture
def metered(
    endpoint: Endpoint, instance_id: str, test_image: str, snapshot_image_prefix: str
) -> Iterator[Callable[..., tuple[ContainerManager, ListenerRecorder]]]:
    """`make(**config)`: a manager on the test image, metered into `endpoint`'s registry."""
    made: list[ContainerManager] = []

    def make(**overrides: Any) -> tuple[ContainerManager, ListenerRecorder]:
        settings: dict[str, Any] = {
            "worker_image": test_image,
            "router_instance_id": instance_id,
            "snapshot_image_prefix": snapshot_image_prefix,
            "container_name_prefix": f"{instance_id}-",
            "stop_grace_s": 1,
            "worker_memory_mb": 64,
            "slot_wait_timeout_s": 30,
            "docker_network": "none",
        }
        settings.update(overrides)
        listener = ListenerRecorder()
        manager = ContainerManager(
            RouterConfig(**settings), listener=listener, metrics_registry=endpoint.registry
        )
        made.append(manager)
        return manager, listener

    yield make
    for manager in reversed(made):
        manager.close()


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def job(job_id: str, script: str, **fields: Any) -> WorkerJob:
    return WorkerJob(id=job_id, type="metrics-test", data={}, command=sh(script), **fields)


def release(client: docker.DockerClient, container_id: str) -> None:
    let_go(client.containers.get(container_id))


def outcomes(got: Scrape, status: str, reason: str) -> float:
    return got.value("dockyard_worker_outcomes_total", {"status": status, "reason": reason})


def assert_no_ids_in_labels(got: Scrape) -> None:
    """Job, project and work item ids here all start with `jid-`: none may be a label value."""
    values = {value for (_, labels) in got.samples for _, value in labels}
    assert not [v for v in values if "jid-" in v], values


# --------------------------------------------------------------------------- lifecycle


def test_success_and_crash_show_in_a_live_scrape(
    metered: Callable[..., tuple[ContainerManager, ListenerRecorder]],
    endpoint: Endpoint,
    docker_client: docker.DockerClient,
) -> None:
    manager, listener = metered(max_workers=3)
    before = endpoint.scrape()
    assert before.value("dockyard_worker_slots_limit") == 3
    assert before.value("dockyard_workers_active") == 0
    assert before.value("dockyard_workers_started_total") == 0

    held = manager.spawn_worker(job("jid-ok", HOLD))
    running = endpoint.scrape()
    assert running.value("dockyard_workers_active") == 1
    assert running.value("dockyard_workers_started_total") == 1
    assert running.value("dockyard_spawn_duration_seconds_count") == 1
    assert running.value("dockyard_slot_wait_seconds_count") == 1
    assert running.value("dockyard_engine_calls_total", {"operation": "create", "result": "ok"})
    assert running.value("dockyard_engine_calls_total", {"operation": "start", "result": "ok"})
    release(docker_client, held.container_id)
    assert listener.wait_finished("jid-ok").status == "succeeded"

    manager.spawn_worker(job("jid-crash", "exit 3"))
    manager.spawn_worker(job("jid-boot", "exit 2"))
    assert listener.wait_finished("jid-crash").exit_code == 3
    assert listener.wait_finished("jid-boot").exit_code == 2

    got = endpoint.scrape()
    assert got.value("dockyard_workers_active") == 0
    assert got.value("dockyard_workers_started_total") == 3
    assert outcomes(got, "succeeded", "completed") == 1
    assert outcomes(got, "failed", "exit_error") == 1
    assert outcomes(got, "failed", "boot_failure") == 1
    counted = got.label_values("dockyard_worker_outcomes", "status", nonzero=True)
    assert counted == {"succeeded", "failed"}
    # Every status exists from the start, at zero until it happens.
    statuses = {"succeeded", "failed", "timed_out", "cancelled", "lost"}
    assert got.label_values("dockyard_worker_outcomes", "status") == statuses
    duration = "dockyard_job_duration_seconds"
    assert got.value(f"{duration}_count", {"status": "succeeded"}) == 1
    assert got.value(f"{duration}_count", {"status": "failed"}) == 2
    assert got.bucket(duration, "+Inf", {"status": "failed"}) == 2
    assert got.value("dockyard_spawn_duration_seconds_count") == 3
    assert got.value("dockyard_spawn_duration_seconds_sum") > 0
    assert got.value("dockyard_slot_wait_seconds_count") == 3
    assert got.value("dockyard_slot_wait_timeouts_total") == 0
    # The exits were handled through the gateway (inspect after each exit).
    calls = got.label_values("dockyard_engine_calls", "operation", nonzero=True)
    assert {"create", "open_wait", "start", "inspect"} <= calls
    assert got.value("dockyard_engine_calls_total", {"operation": "create", "result": "ok"}) == 3
    assert got.value("dockyard_engine_call_duration_seconds_count", {"operation": "start"}) == 3
    assert got.label_values("dockyard_engine_calls", "result") <= {
        "ok", "not_found", "conflict", "unreachable", "error",
    }  # fmt: skip
    assert_no_ids_in_labels(got)


def test_oom_kill_counts_as_oom(
    metered: Callable[..., tuple[ContainerManager, ListenerRecorder]], endpoint: Endpoint
) -> None:
    """See test_core_integration: the engine now and then records a real OOM kill as
    OOMKilled=false, so a few attempts are allowed; those count as killed by a signal."""
    manager, listener = metered(worker_memory_mb=32, auto_remove_workers=False)
    flagged = 0
    attempts = 0
    for attempts in range(1, OOM_ATTEMPTS + 1):
        job_id = f"oom-{attempts}"
        manager.spawn_worker(job(job_id, "head -c 200m /dev/zero | tail"))
        outcome = listener.wait_finished(job_id, timeout=WAIT_S)
        assert (outcome.status, outcome.exit_code) == ("failed", 137)
        if outcome.oom_killed:
            flagged = 1
            break
    assert flagged, "no attempt was recorded as OOMKilled"
    got = endpoint.scrape()
    assert outcomes(got, "failed", "oom") == 1
    assert outcomes(got, "failed", "exit_signal") == attempts - 1
    assert got.value("dockyard_job_duration_seconds_count", {"status": "failed"}) == attempts


def test_timeout_counts_as_timed_out_with_its_duration(
    metered: Callable[..., tuple[ContainerManager, ListenerRecorder]],
    endpoint: Endpoint,
    docker_client: docker.DockerClient,
) -> None:
    manager, listener = metered(worker_timeout_s=1.5)
    manager.spawn_worker(job("slow", "sleep 60"))
    outcome = listener.wait_finished("slow", timeout=WAIT_S)
    assert outcome.status == "timed_out"
    got = endpoint.scrape()
    assert outcomes(got, "timed_out", "timeout") == 1
    assert (
        got.value("dockyard_worker_outcomes_total", {"status": "failed", "reason": "exit_signal"})
        == 0
    )
    duration = "dockyard_job_duration_seconds"
    assert got.value(f"{duration}_count", {"status": "timed_out"}) == 1
    assert got.bucket(duration, "1.0", {"status": "timed_out"}) == 0  # ran past 1.5 s
    # On Podman dockyard counts the grace itself: the stop signal and then SIGKILL (`sleep`
    # ignores SIGTERM) are two `kill`s; Docker's is one `stop`.
    if is_podman(docker_client):
        assert got.value("dockyard_engine_calls_total", {"operation": "kill", "result": "ok"}) == 2
    else:
        assert got.value("dockyard_engine_calls_total", {"operation": "stop", "result": "ok"}) == 1
    assert got.value("dockyard_workers_active") == 0


# --------------------------------------------------------------------------- slots


def test_slot_wait_and_slot_timeout(
    metered: Callable[..., tuple[ContainerManager, ListenerRecorder]],
    endpoint: Endpoint,
    docker_client: docker.DockerClient,
) -> None:
    manager, listener = metered(max_workers=1)
    first = manager.spawn_worker(job("first", HOLD))
    with pytest.raises(NoWorkerSlotError):
        manager.spawn_worker(job("refused", "true"), slot_timeout=0.2)
    got = endpoint.scrape()
    assert got.value("dockyard_slot_wait_timeouts_total") == 1
    assert got.value("dockyard_slot_wait_seconds_count") == 1  # only spawns that got a slot

    second: list[Any] = []
    waiter = threading.Thread(
        target=lambda: second.append(manager.spawn_worker(job("second", HOLD)))
    )
    waiter.start()
    endpoint.wait_for(
        "a spawn waiting for the slot", lambda s: s.value("dockyard_slot_waiters") == 1
    )
    time.sleep(0.3)  # the waiter's slot wait grows past the 0.25 s bucket bound
    release(docker_client, first.container_id)
    waiter.join(WAIT_S)
    assert second, "the waiting spawn did not start"
    got = endpoint.scrape()
    assert got.value("dockyard_slot_waiters") == 0
    assert got.value("dockyard_slot_wait_seconds_count") == 2
    assert got.bucket("dockyard_slot_wait_seconds", "0.25") == 1  # the first: no wait
    assert got.bucket("dockyard_slot_wait_seconds", "+Inf") == 2
    assert got.value("dockyard_workers_active") == 1
    release(docker_client, second[0].container_id)
    assert listener.wait_finished("second").status == "succeeded"
    assert endpoint.scrape().value("dockyard_workers_active") == 0


# --------------------------------------------------------------------------- snapshots


def test_snapshot_miss_commit_hit_fallback_and_eviction(
    metered: Callable[..., tuple[ContainerManager, ListenerRecorder]],
    endpoint: Endpoint,
    docker_client: docker.DockerClient,
) -> None:
    manager, listener = metered(snapshot_enabled=True, snapshot_max_count=1)

    def run(job_id: str, work_item: str = "jid-card-1") -> None:
        manager.spawn_worker(job(job_id, "true", project_id="jid-proj", work_item_id=work_item))
        assert listener.wait_finished(job_id, timeout=WAIT_S).status == "succeeded"

    run("jid-cold")  # miss, then commit
    got = endpoint.scrape()
    assert got.value("dockyard_snapshot_misses_total") == 1
    assert got.value("dockyard_snapshot_hits_total") == 0
    assert got.value("dockyard_snapshot_commits_total") == 1
    assert got.value("dockyard_engine_calls_total", {"operation": "commit", "result": "ok"}) == 1

    run("jid-warm")  # hit, and commits again
    got = endpoint.scrape()
    assert got.value("dockyard_snapshot_hits_total") == 1
    assert got.value("dockyard_snapshot_fallbacks_total") == 0

    meta = manager.snapshots.get("jid-proj", "jid-card-1")
    assert meta is not None
    docker_client.images.remove(meta.image_name, force=True)
    run("jid-fallback")  # a hit whose image vanished: falls back to the base image
    got = endpoint.scrape()
    assert got.value("dockyard_snapshot_hits_total") == 2
    assert got.value("dockyard_snapshot_fallbacks_total") == 1
    assert (
        got.value("dockyard_engine_calls_total", {"operation": "create", "result": "not_found"})
        == 1
    )
    assert got.value("dockyard_snapshot_commits_total") == 3

    run("jid-other", work_item="jid-card-2")  # a second work item: one over the count limit
    manager.run_snapshot_cleanup()
    got = endpoint.scrape()
    assert got.value("dockyard_snapshot_misses_total") == 2
    assert got.value("dockyard_snapshot_evictions_total") == 1
    assert got.value("dockyard_snapshot_commit_failures_total") == 0
    assert_no_ids_in_labels(got)


# --------------------------------------------------------------------------- images, orphans


def test_missing_image_counts_a_pull_failure_and_a_spawn_failure(
    metered: Callable[..., tuple[ContainerManager, ListenerRecorder]],
    endpoint: Endpoint,
    docker_client: docker.DockerClient,
) -> None:
    missing = f"dockyard-test-missing-{uuid.uuid4().hex[:10]}:latest"
    # What the engine answers depends on its network: "no such host" (final, `error`) where
    # it resolves names, "network is unreachable" (transient) where it has no network.
    with pytest.raises(docker.errors.APIError) as engine_answer:
        docker_client.api.pull(missing)
    expected = pull_result(engine_answer.value)
    manager, _ = metered(worker_image=missing, image_pull_retries=0)
    with pytest.raises(WorkerSpawnError):
        manager.spawn_worker(job("doomed", "true"))
    got = endpoint.scrape()
    assert got.value("dockyard_image_pull_failures_total") == 1
    assert got.value("dockyard_image_pulls_total", {"result": "ok"}) == 0
    assert expected in ("error", "transient"), engine_answer.value
    assert got.value("dockyard_image_pulls_total", {"result": expected}) == 1
    assert got.value("dockyard_spawn_failures_total", {"error": "engine"}) == 1
    assert got.value("dockyard_engine_calls_total", {"operation": "pull", "result": "error"}) == 1
    assert got.value("dockyard_workers_started_total") == 0
    assert got.value("dockyard_spawn_duration_seconds_count") == 0


def test_orphan_scan_counts_reaped_containers(
    metered: Callable[..., tuple[ContainerManager, ListenerRecorder]],
    endpoint: Endpoint,
    docker_client: docker.DockerClient,
) -> None:
    first, _ = metered(auto_remove_workers=False)
    worker = first.spawn_worker(job("left", "true"))
    first.detach_all()  # forgets it; the exited container stays behind
    container = docker_client.containers.get(worker.container_id)
    container.wait(timeout=WAIT_S)
    first.close()  # frees the registry for the next manager
    second, _ = metered()
    reaped = second.scan_and_cleanup_orphans()
    assert reaped == [worker.container_id]
    got = endpoint.scrape()
    assert got.value("dockyard_orphans_reaped_total") == 1
    assert got.value(
        "dockyard_engine_calls_total", {"operation": "list_containers", "result": "ok"}
    )
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.containers.get(worker.container_id).remove(force=True)

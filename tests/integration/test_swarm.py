"""The Swarm backend on a real single-node swarm: each job a `replicated-job` service.

Runs on the swarm manager engine of `tests/swarm_engine.sh` (see `support.swarm`). Every
test leaves no service of its router instance behind (the `swarm_instance` fixture fails
the test otherwise).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import docker
import pytest

from dockyard import ConfigError, ContainerManager, RouterConfig, WorkerJob
from support.engine import instance_containers
from support.listeners import ListenerRecorder
from support.sentry import CapturedEvents
from support.swarm import instance_services
from support.threads import ThreadBaseline

# Tasks on the manager node only: these tests read what only a local container tells.
pytestmark = [pytest.mark.swarm, pytest.mark.usefixtures("swarm_local_node")]

MakeManager = Callable[..., ContainerManager]
LONG = ["sh", "-c", "trap 'exit 143' TERM; sleep 60 & wait"]


def job(job_id: str, command: list[str], **fields: Any) -> WorkerJob:
    return WorkerJob(id=job_id, type="swarm-test", data={}, command=command, **fields)


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_success_is_one_outcome_and_leaves_no_service(
    make_swarm_manager: MakeManager, swarm_client: docker.DockerClient, swarm_instance: str
) -> None:
    recorder = ListenerRecorder()
    manager = make_swarm_manager(listener=recorder)
    worker = manager.spawn_worker(job("ok-1", ["sh", "-c", "sleep 0.5; exit 0"]))
    assert worker.container_name == "cascade-worker-ok-1"
    outcome = manager.wait_for_worker("ok-1", timeout=30)
    assert outcome.status == "succeeded"
    assert outcome.exit_code == 0
    assert outcome.oom_killed is False  # the task ran on this node: its container was read
    assert outcome.duration_s is not None and 0.4 <= outcome.duration_s < 10
    assert recorder.outcomes("ok-1") == [outcome]
    # The outcome comes after the removal: the service and its container are gone.
    assert instance_services(swarm_client, swarm_instance) == []
    assert instance_containers(swarm_client, swarm_instance) == []


def test_service_carries_the_job_settings(
    make_swarm_manager: MakeManager, swarm_client: docker.DockerClient, swarm_instance: str
) -> None:
    manager = make_swarm_manager(pids_limit=64, worker_memory_mb=48)
    worker = manager.spawn_worker(job("spec-1", LONG))
    service = swarm_client.api.inspect_service(worker.container_id)
    spec = service["Spec"]
    assert spec["Name"] == "cascade-worker-spec-1"
    assert spec["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    template = spec["TaskTemplate"]
    assert template["RestartPolicy"]["Condition"] == "none"
    assert template["Resources"]["Limits"]["MemoryBytes"] == 48 * 2**20
    assert template["Resources"]["Reservations"]["MemoryBytes"] == 48 * 2**20
    assert template["ContainerSpec"]["StopGracePeriod"] == 1_000_000_000
    labels = spec["Labels"]
    assert labels["cascade.router.instance"] == swarm_instance
    assert labels["cascade.job.id"] == "spec-1"
    assert labels["cascade.managed"] == "true"
    assert "JOB_ID=spec-1" in template["ContainerSpec"]["Env"]
    # Its task container, running on this node: labels, memory, pids limit.
    (container,) = instance_containers(swarm_client, swarm_instance)
    container.reload()
    assert container.status == "running"
    assert container.labels["cascade.job.id"] == "spec-1"
    assert container.attrs["HostConfig"]["Memory"] == 48 * 2**20
    assert container.attrs["HostConfig"]["PidsLimit"] == 64
    assert manager.kill_worker("spec-1") is True
    assert manager.wait_for_worker("spec-1", timeout=30).status == "timed_out"


def test_non_zero_exit_fails_with_its_code_reported_and_tail_masked(
    make_swarm_manager: MakeManager,
    sentry_events: CapturedEvents,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Credentials:
        def get_project_credentials(self, project_id: str) -> dict[str, str]:
            return {"API_TOKEN": "s3cr3t-swarm-value"}

    manager = make_swarm_manager(credentials=Credentials(), auto_remove_workers=True)
    caplog.set_level(logging.INFO, logger="dockyard")
    manager.spawn_worker(
        job("bad-1", ["sh", "-c", 'echo "token is $API_TOKEN"; exit 3'], project_id="p1")
    )
    outcome = manager.wait_for_worker("bad-1", timeout=30)
    assert outcome.status == "failed"
    assert outcome.exit_code == 3
    assert outcome.oom_killed is False
    assert outcome.describe().startswith("Worker crashed with exit code 3")
    tails = [r.getMessage() for r in caplog.records if "worker output" in r.getMessage()]
    assert tails and "token is ***" in tails[0]
    assert "s3cr3t-swarm-value" not in caplog.text
    (event,) = sentry_events.wait_for("worker_exit", timeout=10)
    assert event["extra"]["statusCode"] == 3
    assert event["extra"]["jobId"] == "bad-1"


def test_oom_kill_on_the_local_node(make_swarm_manager: MakeManager) -> None:
    manager = make_swarm_manager(worker_memory_mb=32)
    manager.spawn_worker(job("oom-1", ["sh", "-c", "head -c 200m /dev/zero | tail"]))
    outcome = manager.wait_for_worker("oom-1", timeout=60)
    assert outcome.status == "failed"
    assert outcome.oom_killed is True
    assert outcome.exit_code == 137


def test_timeout_removes_the_service_and_ends_timed_out_once(
    make_swarm_manager: MakeManager,
    swarm_client: docker.DockerClient,
    swarm_instance: str,
    sentry_events: CapturedEvents,
) -> None:
    recorder = ListenerRecorder()
    manager = make_swarm_manager(listener=recorder, worker_timeout_s=2)
    started = time.monotonic()
    manager.spawn_worker(job("slow-1", LONG))
    outcome = manager.wait_for_worker("slow-1", timeout=60)
    assert outcome.status == "timed_out"
    assert outcome.exit_code == 143  # SIGTERM reached the job's trap: stopped with grace
    assert time.monotonic() - started < 30
    assert recorder.outcomes("slow-1") == [outcome]
    assert [e["extra"]["jobId"] for e in sentry_events.with_source("worker_timeout")] == ["slow-1"]
    assert sentry_events.with_source("worker_exit") == []  # the kill's exit is no failure
    assert instance_services(swarm_client, swarm_instance) == []
    assert wait_until(lambda: instance_containers(swarm_client, swarm_instance) == [])


def test_kill_worker_on_request(make_swarm_manager: MakeManager) -> None:
    recorder = ListenerRecorder()
    manager = make_swarm_manager(listener=recorder)
    manager.spawn_worker(job("kill-1", LONG))
    assert manager.get_active_worker_count() == 1
    assert manager.kill_worker("kill-1") is True
    outcome = manager.wait_for_worker("kill-1", timeout=30)
    assert outcome.status == "timed_out"
    assert outcome.exit_code == 143
    assert recorder.outcomes("kill-1") == [outcome]
    assert manager.kill_worker("kill-1") is False
    assert manager.get_active_worker_count() == 0


def test_placement_failure_memory_larger_than_the_node_fails_after_pending_timeout(
    make_swarm_manager: MakeManager,
    swarm_client: docker.DockerClient,
    swarm_instance: str,
) -> None:
    node_memory_mb = swarm_client.info()["MemTotal"] // 2**20
    manager = make_swarm_manager(worker_memory_mb=node_memory_mb * 4, swarm_pending_timeout_s=3)
    began = time.monotonic()
    manager.spawn_worker(job("huge-1", ["true"]))
    outcome = manager.wait_for_worker("huge-1", timeout=30)
    assert 3 <= time.monotonic() - began < 20
    assert outcome.status == "failed"
    assert outcome.exit_code is None
    assert outcome.exit_reason is not None
    assert "insufficient resources" in outcome.exit_reason
    assert "pending" in outcome.exit_reason
    assert instance_services(swarm_client, swarm_instance) == []


def test_placement_failure_image_missing_on_the_node(make_swarm_manager: MakeManager) -> None:
    manager = make_swarm_manager(worker_image="dockyard-no-such-image:latest")
    manager.spawn_worker(job("noimg-1", ["true"]))
    outcome = manager.wait_for_worker("noimg-1", timeout=30)
    assert outcome.status == "failed"
    assert outcome.exit_reason is not None and "No such image" in outcome.exit_reason


def test_orphans_of_a_dead_router_are_reaped(
    make_swarm_manager: MakeManager, swarm_client: docker.DockerClient, swarm_instance: str
) -> None:
    dead = make_swarm_manager(worker_timeout_s=2)
    overdue = dead.spawn_worker(job("orphan-run", LONG))
    done = dead.spawn_worker(job("orphan-done", ["sh", "-c", "sleep 1"]))
    dead.close()  # detaches: the services keep running (or finish), nobody tracks them

    def task_state(service_id: str) -> str:
        tasks = swarm_client.api.tasks(filters={"service": [service_id]})
        return str(tasks[0]["Status"]["State"]) if tasks else ""

    # The finished one is an exited leftover; the running one passes its deadline.
    assert wait_until(lambda: task_state(done.container_id) == "complete")
    assert wait_until(lambda: datetime.now(UTC) > overdue.deadline, timeout=10)
    recorder = ListenerRecorder()
    heir = make_swarm_manager(listener=recorder)
    reaped = heir.scan_and_cleanup_orphans()
    assert overdue.container_id in reaped
    assert len(reaped) == 2
    assert [cid for cid, _ in recorder.orphans] == [overdue.container_id]
    assert recorder.orphans[0][1]["cascade.job.id"] == "orphan-run"
    assert instance_services(swarm_client, swarm_instance) == []


def test_stray_task_container_of_a_removed_service_is_reaped(
    make_swarm_manager: MakeManager, swarm_client: docker.DockerClient, swarm_instance: str
) -> None:
    dead = make_swarm_manager()
    worker = dead.spawn_worker(job("stray-1", ["sh", "-c", "sleep 1"]))
    dead.close()

    def complete() -> bool:
        tasks = swarm_client.api.tasks(filters={"service": [worker.container_id]})
        return bool(tasks) and tasks[0]["Status"]["State"] == "complete"

    assert wait_until(complete)
    swarm_client.api.remove_service(worker.container_id)  # by hand: the engine keeps its task
    (stray,) = instance_containers(swarm_client, swarm_instance)
    heir = make_swarm_manager()
    assert heir.adopt_workers() == []
    assert heir.scan_and_cleanup_orphans() == [stray.id]
    assert instance_containers(swarm_client, swarm_instance) == []


def test_adoption_after_restart_gets_exactly_one_outcome(
    make_swarm_manager: MakeManager, swarm_client: docker.DockerClient, swarm_instance: str
) -> None:
    first = make_swarm_manager()
    original = first.spawn_worker(job("adopt-1", ["sh", "-c", "sleep 3; exit 5"]))
    first.close()
    recorder = ListenerRecorder()
    second = make_swarm_manager(listener=recorder)
    adopted = second.adopt_workers()
    assert [w.job_id for w in adopted] == ["adopt-1"]
    assert adopted[0].container_id == original.container_id
    assert adopted[0].container_name == original.container_name
    # The deadline label is set just before the launch; the launch took a moment.
    assert 0 <= (original.deadline - adopted[0].deadline).total_seconds() < 5
    outcome = second.wait_for_worker("adopt-1", timeout=30)
    assert outcome.status == "failed"
    assert outcome.exit_code == 5
    assert recorder.outcomes("adopt-1") == [outcome]
    assert second.adopt_workers() == []
    assert instance_services(swarm_client, swarm_instance) == []


def test_adopted_worker_times_out_on_its_original_deadline(make_swarm_manager: MakeManager) -> None:
    first = make_swarm_manager(worker_timeout_s=4)
    first.spawn_worker(job("adopt-slow", LONG))
    first.close()
    second = make_swarm_manager()
    assert [w.job_id for w in second.adopt_workers()] == ["adopt-slow"]
    assert second.wait_for_worker("adopt-slow", timeout=40).status == "timed_out"


def test_concurrent_jobs_share_one_poller(make_swarm_manager: MakeManager) -> None:
    manager = make_swarm_manager(max_workers=6, launch_concurrency=6)
    ids = [f"many-{i}" for i in range(6)]
    threads = [
        threading.Thread(
            target=manager.spawn_worker, args=(job(i, ["sh", "-c", f"sleep 1; exit {n}"]),)
        )
        for n, i in enumerate(ids)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    outcomes = [manager.wait_for_worker(i, timeout=60) for i in ids]
    assert [o.exit_code for o in outcomes] == list(range(6))
    pollers = [t for t in threading.enumerate() if t.name == "dockyard-swarm-tasks"]
    assert len(pollers) >= 1


def test_close_leaves_no_thread_behind(
    thread_baseline: ThreadBaseline, make_swarm_manager: MakeManager
) -> None:
    manager = make_swarm_manager()
    manager.spawn_worker(job("threads-1", ["sh", "-c", "exit 0"]))
    assert manager.wait_for_worker("threads-1", timeout=30).status == "succeeded"
    manager.close()
    thread_baseline.assert_no_new_threads()


def test_manager_refuses_an_engine_that_is_not_a_swarm_manager(
    docker_client: docker.DockerClient,
) -> None:
    info = docker_client.info().get("Swarm") or {}
    if info.get("LocalNodeState") == "active":
        pytest.skip("the main engine is in a swarm here")
    config = RouterConfig(backend="swarm", router_instance_id="not-a-swarm")
    with pytest.raises(ConfigError, match="swarm manager"):
        ContainerManager(config, docker_client=docker_client)

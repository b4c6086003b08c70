"""The Swarm backend with a task on another node: the facts only a local container has are
None (and said so), the exit code, the log tail and the kill still work.

Needs the second node of `tests/swarm_engine.sh start-worker`, named by
``DOCKYARD_SWARM_WORKER_HOST`` (default ``unix:///run/dyswarm2/docker.sock``); skipped
without it. The manager node is paused for the test (no new task lands on it), so every
task runs on the second node.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import docker
import pytest

from dockyard import ContainerManager, WorkerJob
from support.engine import instance_containers
from support.listeners import ListenerRecorder
from support.swarm import set_availability, worker_host

pytestmark = pytest.mark.swarm

MakeManager = Callable[..., ContainerManager]


@pytest.fixture
def second_node(swarm_client: docker.DockerClient) -> Iterator[docker.DockerClient]:
    """The second node's engine, with the manager node paused while the test runs."""
    host = worker_host()
    try:
        worker = docker.DockerClient(base_url=host, timeout=30)
        state = (worker.info().get("Swarm") or {}).get("LocalNodeState")
    except Exception as exc:
        pytest.skip(f"no second swarm node at {host}: {exc}")
    if state != "active":
        worker.close()
        pytest.skip(f"the engine at {host} is not in the swarm")
    manager_id = swarm_client.info()["Swarm"]["NodeID"]
    set_availability(swarm_client, manager_id, "pause")
    try:
        yield worker
    finally:
        set_availability(swarm_client, manager_id, "active")
        worker.close()


def test_task_on_another_node(
    second_node: docker.DockerClient,
    make_swarm_manager: MakeManager,
    swarm_instance: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = ListenerRecorder()
    manager = make_swarm_manager(listener=recorder)
    caplog.set_level("INFO", logger="dockyard")
    try:
        manager.spawn_worker(
            WorkerJob(id="remote-1", type="t", data={}, command=["sh", "-c", "echo far; exit 7"])
        )
        outcome = manager.wait_for_worker("remote-1", timeout=60)
        assert outcome.status == "failed"
        assert outcome.exit_code == 7
        assert outcome.oom_killed is None and outcome.duration_s is None
        assert outcome.exit_reason is not None
        assert "OOMKilled and duration not known from here" in outcome.exit_reason
        assert recorder.outcomes("remote-1") == [outcome]
        assert any("far" in r.getMessage() for r in caplog.records if "output" in r.getMessage())
        # The kill stops a task on another node too (and nothing keeps running there).
        manager.spawn_worker(
            WorkerJob(
                id="remote-2",
                type="t",
                data={},
                command=["sh", "-c", "trap 'exit 143' TERM; sleep 60 & wait"],
            )
        )
        assert [c.status for c in instance_containers(second_node, swarm_instance)].count(
            "running"
        ) == 1
        assert manager.kill_worker("remote-2") is True
        killed = manager.wait_for_worker("remote-2", timeout=60)
        assert killed.status == "timed_out"
        # The engine may drop the stopped task's record before dockyard reads its code.
        assert killed.exit_code in (143, None), killed
        assert all(c.status != "running" for c in instance_containers(second_node, swarm_instance))
    finally:
        manager.close()
        for container in instance_containers(second_node, swarm_instance):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)

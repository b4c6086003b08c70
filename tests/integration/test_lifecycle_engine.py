"""Worker lifecycle on the real engine: a host hook that fails mid-exit, and close() mid-run."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import docker

from dockyard import ContainerManager, ProjectConfig, WorkerJob
from support.listeners import ListenerRecorder
from support.threads import ThreadBaseline

WAIT_S = 60.0


class FlakyProjects:
    """A host's project directory that starts failing after the spawn (a database blip)."""

    def __init__(self) -> None:
        self.failing = threading.Event()
        self.calls_while_failing = 0

    def list_projects(self) -> list[ProjectConfig]:
        if self.failing.is_set():
            self.calls_while_failing += 1
            raise ConnectionError("project database unreachable")
        return [ProjectConfig("proj-1")]

    def find_project_by_repo(self, repo_full_name: str) -> ProjectConfig | None:
        return None


def test_a_failing_project_hook_during_the_snapshot_commit_keeps_the_success(
    make_manager: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
) -> None:
    projects = FlakyProjects()
    manager = make_manager(snapshot_enabled=True, projects=projects)
    job = WorkerJob(
        f"{instance_id}-hook",
        "trello",
        {"projectId": "proj-1", "workItemId": "card-1"},
        command=["sh", "-c", "sleep 0.5"],
    )
    worker = manager.spawn_worker(job)
    projects.failing.set()  # the TTL lookup of the commit meets a failing hook

    outcome = manager.wait_for_worker(job.id or "", timeout=WAIT_S)

    assert projects.calls_while_failing >= 1  # the hook was called, and failed
    assert outcome.status == "succeeded", outcome
    labels = [f"cascade.router.instance={instance_id}"]
    assert docker_client.api.containers(all=True, filters={"label": labels}) == []
    assert not [c for c in docker_client.api.containers(all=True) if c["Id"] == worker.container_id]


def test_close_from_the_finished_callback_on_the_real_engine(
    thread_baseline: ThreadBaseline,
    make_manager: Callable[..., ContainerManager],
    instance_id: str,
) -> None:
    closed = threading.Event()
    errors: list[BaseException] = []
    manager_box: list[ContainerManager] = []

    class Closing(ListenerRecorder):
        def on_worker_finished(self, worker: Any, outcome: Any) -> None:
            super().on_worker_finished(worker, outcome)
            try:
                manager_box[0].close()
            except BaseException as err:  # the listener guard would only log it
                errors.append(err)
            closed.set()

    manager = make_manager(listener=Closing())
    manager_box.append(manager)
    manager.spawn_worker(WorkerJob(f"{instance_id}-close", "trello", {}, command=["true"]))

    assert closed.wait(WAIT_S)
    assert errors == []
    thread_baseline.assert_no_new_threads(timeout=10.0)

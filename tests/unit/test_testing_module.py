"""`dockyard.testing` is what a router's own unit tests use: its documented example runs."""

from __future__ import annotations

import pytest

import dockyard.testing
from dockyard import ContainerManager, RouterConfig, WorkerJob, WorkerSpawnError
from dockyard.testing import FakeDockerAPI, RecordingReporter, api_error


def test_the_documented_example_runs() -> None:
    api = FakeDockerAPI(images={"worker:1"})
    config = RouterConfig(worker_image="worker:1", router_instance_id="test")
    with ContainerManager(config, docker_client=api) as manager:  # type: ignore[arg-type]
        worker = manager.spawn_worker(WorkerJob("job-1", "build", {}))
        api.exit(worker.container_id, 0)
        assert manager.wait_for_worker("job-1", timeout=5).status == "succeeded"

        api.failures["create_container"] = [api_error(500, "disk full")]
        with pytest.raises(WorkerSpawnError) as info:
            manager.spawn_worker(WorkerJob("job-2", "build", {}))
    assert info.value.status_code == 500
    assert "api.exit(worker.container_id, 0)" in (dockyard.testing.__doc__ or "")


def test_a_router_sees_its_reports_and_snapshots_without_docker() -> None:
    api = FakeDockerAPI(images={"worker:1"})
    reporter = RecordingReporter()
    config = RouterConfig(worker_image="worker:1", router_instance_id="test", snapshot_enabled=True)
    with ContainerManager(config, docker_client=api, reporter=reporter) as manager:  # type: ignore[arg-type]
        job = WorkerJob("job-1", "trello", {"projectId": "p", "workItemId": "c"})
        worker = manager.spawn_worker(job)
        api.exit(worker.container_id, 0)
        assert manager.wait_for_worker("job-1", timeout=5).status == "succeeded"
        snapshot = manager.snapshots.get("p", "c")
        assert snapshot is not None  # committed, checked and named on the fake engine
        assert snapshot.image_name in api.image_names

        failed = manager.spawn_worker(WorkerJob("job-2", "trello", {}))
        api.exit(failed.container_id, 3)
        assert manager.wait_for_worker("job-2", timeout=5).status == "failed"
    assert reporter.sources() == ["worker_exit"]

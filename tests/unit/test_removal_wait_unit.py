"""The wait for an auto-removed worker's removal: an engine slow to remove it is waited for,
not raced by a removal of dockyard's own; one that refuses gets that removal."""

from __future__ import annotations

import requests

from dockyard import ContainerManager, RouterConfig, WorkerJob
from dockyard.testing import DEFAULT_IMAGE, FakeDockerAPI, RecordingReporter


def run(api: FakeDockerAPI) -> str:
    config = RouterConfig(worker_image=DEFAULT_IMAGE, router_instance_id="removal")
    with ContainerManager(config, docker_client=api, reporter=RecordingReporter()) as manager:
        worker = manager.spawn_worker(WorkerJob("job-1", "build", {}))
        api.exit(worker.container_id, 0)
        return manager.wait_for_worker("job-1", timeout=30).status


def test_a_removal_the_engine_is_slow_to_finish_is_waited_for() -> None:
    api = FakeDockerAPI(images={DEFAULT_IMAGE})
    slow = [requests.exceptions.ReadTimeout("no answer in time") for _ in range(2)]
    api.failures["blocking_wait"] = slow
    assert run(api) == "succeeded"
    assert api.calls_of("blocking_wait") == ["removed"] * 3
    assert api.calls_of("remove_container") == [], "no removal of dockyard's own"


def test_a_removal_wait_the_engine_refuses_falls_back_to_removing_it() -> None:
    api = FakeDockerAPI(images={DEFAULT_IMAGE})
    refused = requests.exceptions.HTTPError("500 Server Error")
    refused.response = requests.Response()
    refused.response.status_code = 500
    api.failures["blocking_wait"] = [refused]
    assert run(api) == "succeeded"
    assert api.calls_of("blocking_wait")[:1] == ["removed"]
    assert len(api.calls_of("remove_container")) == 1

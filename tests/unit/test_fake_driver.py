"""The fake at the driver interface: one fake for Docker-like and Swarm-like engines, chosen
by the capabilities it declares; the core reads those, never the driver's name."""

from __future__ import annotations

import pytest

from dockyard import ConfigError, ContainerManager, RouterConfig, WorkerJob
from dockyard._errors import DockerUnavailableError, EngineServerError
from dockyard.testing import DOCKER_LIKE, SWARM_LIKE, FakeDriver, RecordingReporter
from support.listeners import ListenerRecorder

IMAGE = "worker:1"


def manager(driver: FakeDriver, **settings: object) -> ContainerManager:
    config = RouterConfig(worker_image=IMAGE, router_instance_id="fake", **settings)  # type: ignore[arg-type]
    return ContainerManager(config, driver=driver, reporter=RecordingReporter())


@pytest.mark.parametrize("capabilities", [DOCKER_LIKE, SWARM_LIKE], ids=["docker", "swarm"])
def test_a_job_runs_to_its_outcome_on_either_kind_of_engine(capabilities: object) -> None:
    driver = FakeDriver(capabilities=capabilities, images={IMAGE})  # type: ignore[arg-type]
    with manager(driver) as jobs:
        worker = jobs.spawn_worker(WorkerJob("job-1", "build", {}))
        driver.exit(worker.container_id, 3)
        outcome = jobs.wait_for_worker("job-1", timeout=5)
    assert (outcome.status, outcome.exit_code) == ("failed", 3)
    # Auto-removal only where the engine does it; elsewhere the core removes the worker.
    removed_by_core = ("remove", worker.container_id) in driver.calls
    assert removed_by_core is not capabilities.auto_remove  # type: ignore[attr-defined]


def test_a_docker_like_engine_pulls_a_missing_image_once() -> None:
    driver = FakeDriver()
    with manager(driver) as jobs:
        worker = jobs.spawn_worker(WorkerJob("job-1", "build", {}))
        driver.exit(worker.container_id, 0)
        assert jobs.wait_for_worker("job-1", timeout=5).status == "succeeded"
    assert driver.images is not None and driver.images.pulls == [IMAGE]


def test_a_driver_without_snapshots_refuses_a_snapshot_config() -> None:
    with pytest.raises(ConfigError, match="snapshot_enabled"):
        manager(FakeDriver(capabilities=SWARM_LIKE), snapshot_enabled=True)


def test_typed_failures_are_scripted_per_verb() -> None:
    driver = FakeDriver(images={IMAGE})
    driver.failures["start"] = [EngineServerError("start", 500, "cannot start")]
    with manager(driver) as jobs:
        with pytest.raises(Exception, match="cannot start"):
            jobs.spawn_worker(WorkerJob("job-1", "build", {}))
        driver.failures["create"] = [DockerUnavailableError("engine down")]
        with pytest.raises(DockerUnavailableError):
            jobs.spawn_worker(WorkerJob("job-2", "build", {}))
    assert driver.running() == []  # nothing created-but-not-started was left behind


@pytest.mark.parametrize("capabilities", [DOCKER_LIKE, SWARM_LIKE], ids=["docker", "swarm"])
def test_output_is_read_only_from_a_driver_that_declares_live_output(
    capabilities: object,
) -> None:
    driver = FakeDriver(capabilities=capabilities, images={IMAGE})  # type: ignore[arg-type]
    recorder = ListenerRecorder()
    config = RouterConfig(worker_image=IMAGE, router_instance_id="fake")
    with ContainerManager(config, driver=driver, listener=recorder) as jobs:
        worker = jobs.spawn_worker(WorkerJob("job-1", "build", {}))
        if capabilities.live_output:  # type: ignore[attr-defined]
            driver.write_output(worker.container_id, b"hello\nwor")
            driver.write_output(worker.container_id, b"ld\n", stream=2)
            driver.write_output(worker.container_id, b"bye\n")
        driver.exit(worker.container_id, 0)
        outcome = jobs.wait_for_worker("job-1", timeout=5)
    attached = ("attach", worker.container_id) in driver.calls
    assert attached is capabilities.live_output  # type: ignore[attr-defined]
    if attached:
        assert recorder.output["job-1"] == [
            ("stdout", "hello"),
            ("stderr", "ld"),  # stderr's own line: stdout's "wor" goes on
            ("stdout", "worbye"),
        ]
        assert outcome.log_tail == ("hello", "ld", "worbye")
    else:
        assert outcome.log_tail == ()

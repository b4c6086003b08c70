"""The Docker driver's auto-removal: the engine's AutoRemove and its own removal wait on
Docker; on Podman, whose AutoRemove takes a worker's log before a follower read its end,
the worker made without it and removed by the driver, and a container removing itself
looked for with inspects (Podman's waits poll the container's state)."""

from __future__ import annotations

import threading
import time

import pytest

from dockyard._docker import DockerGateway
from dockyard._docker_driver import DockerDriver
from dockyard._errors import DockerUnavailableError, EngineTimeoutError
from dockyard.testing import FakeDockerAPI, api_error
from support.rig import running

REMOVING_ITSELF = api_error(409, "removal of container abc is already in progress")


@pytest.fixture
def driver(gateway: DockerGateway) -> DockerDriver:
    return DockerDriver(gateway)


def test_docker_removes_it_and_is_waited_for_with_its_own_wait(
    driver: DockerDriver, api: FakeDockerAPI
) -> None:
    worker = running(driver, auto_remove=True)
    assert api.containers_by_id[worker].host_config["auto_remove"] is True
    driver.wait_removed(worker, 10.0)
    assert api.calls_of("blocking_wait") == ["removed"]
    assert api.calls_of("remove_container") == []


def test_on_podman_the_driver_removes_it_after_its_exit(
    driver: DockerDriver, api: FakeDockerAPI
) -> None:
    api.podman = True
    worker = running(driver, auto_remove=True)
    assert api.containers_by_id[worker].host_config["auto_remove"] is False  # its log stays
    api.exit(worker, 0)
    driver.wait_removed(worker, 10.0)
    assert worker not in api.containers_by_id
    assert api.calls_of("remove_container") == [worker]
    assert api.calls_of("blocking_wait") == []


def test_a_container_removing_itself_on_podman_is_polled_until_gone_with_no_wait(
    driver: DockerDriver, api: FakeDockerAPI
) -> None:
    api.podman = True
    worker = running(driver, auto_remove=True)
    api.exit(worker, 0)
    api.failures["remove_container"] = [REMOVING_ITSELF]
    remover = threading.Timer(1.2, api.remove_container, args=(worker,))
    remover.start()
    started = time.monotonic()
    driver.wait_removed(worker, 10.0)
    waited = time.monotonic() - started
    remover.join()
    assert 1.2 <= waited < 3.0, waited  # returned within a poll of the removal
    assert api.calls_of("blocking_wait") == []
    assert len(api.calls_of("inspect_container")) >= 3  # asked again, not once


def test_a_container_that_stays_on_podman_times_out_as_a_wait_would(
    driver: DockerDriver, api: FakeDockerAPI
) -> None:
    api.podman = True
    worker = running(driver, auto_remove=True)
    api.failures["remove_container"] = [REMOVING_ITSELF]
    started = time.monotonic()
    with pytest.raises(EngineTimeoutError):
        driver.wait_removed(worker, 1.0)
    assert 1.0 <= time.monotonic() - started < 2.0


def test_closing_the_gateway_ends_a_poll_on_podman(
    driver: DockerDriver, api: FakeDockerAPI, gateway: DockerGateway
) -> None:
    api.podman = True
    worker = running(driver, auto_remove=True)
    api.failures["remove_container"] = [REMOVING_ITSELF]
    threading.Timer(0.3, gateway.close).start()
    started = time.monotonic()
    with pytest.raises(DockerUnavailableError):
        driver.wait_removed(worker, 30.0)
    assert time.monotonic() - started < 2.0

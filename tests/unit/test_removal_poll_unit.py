"""The Docker driver's removal wait: the engine's own wait on Docker; on Podman, whose waits
poll the container's state, inspects until the container is gone."""

from __future__ import annotations

import threading
import time

import pytest

from dockyard._docker import DockerGateway
from dockyard._docker_driver import DockerDriver
from dockyard._errors import DockerUnavailableError, EngineTimeoutError
from dockyard.testing import FakeDockerAPI
from support.rig import running


@pytest.fixture
def driver(gateway: DockerGateway) -> DockerDriver:
    return DockerDriver(gateway)


def test_docker_waits_for_the_removal_with_its_own_wait(
    driver: DockerDriver, api: FakeDockerAPI
) -> None:
    worker = running(driver)
    driver.wait_removed(worker, 10.0)
    assert api.calls_of("blocking_wait") == ["removed"]


def test_podman_is_polled_until_the_container_is_gone_and_sends_no_wait(
    driver: DockerDriver, api: FakeDockerAPI
) -> None:
    api.podman = True
    worker = running(driver)
    api.exit(worker, 0)
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
    worker = running(driver)
    started = time.monotonic()
    with pytest.raises(EngineTimeoutError):
        driver.wait_removed(worker, 1.0)
    assert 1.0 <= time.monotonic() - started < 2.0


def test_closing_the_gateway_ends_a_poll_on_podman(
    driver: DockerDriver, api: FakeDockerAPI, gateway: DockerGateway
) -> None:
    api.podman = True
    worker = running(driver)
    threading.Timer(0.3, gateway.close).start()
    started = time.monotonic()
    with pytest.raises(DockerUnavailableError):
        driver.wait_removed(worker, 30.0)
    assert time.monotonic() - started < 2.0

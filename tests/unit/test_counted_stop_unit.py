"""The Docker driver's stop: the engine's own on Docker; on Podman, whose stop calls take
turns, the grace counted by dockyard (the stop signal, the exit event, SIGKILL)."""

from __future__ import annotations

import threading
import time

import pytest

from dockyard._docker import DockerGateway
from dockyard._docker_driver import DockerDriver
from dockyard.testing import DEFAULT_IMAGE, FakeDockerAPI
from support.rig import running


@pytest.fixture
def driver(gateway: DockerGateway) -> DockerDriver:
    return DockerDriver(gateway)


def test_docker_keeps_its_own_stop(driver: DockerDriver, api: FakeDockerAPI) -> None:
    worker = running(driver)
    driver.stop(worker, 3.0)
    assert api.calls_of("stop") == [(worker, 3)]
    assert api.calls_of("signal") == [] and api.calls_of("kill") == []


def test_podman_gets_the_stop_signal_and_no_kill_when_it_exits_in_time(
    driver: DockerDriver, api: FakeDockerAPI
) -> None:
    api.podman = True
    api.signal_exits = True
    worker = running(driver)
    started = time.monotonic()
    driver.stop(worker, 5.0)
    assert time.monotonic() - started < 2.0, "returned at the exit, not after the grace"
    assert api.calls_of("stop") == []
    assert api.calls_of("signal") == [(worker, "SIGTERM")]
    assert api.calls_of("kill") == []


def test_podman_gets_sigkill_when_the_grace_runs_out(
    driver: DockerDriver, api: FakeDockerAPI
) -> None:
    api.podman = True  # and the worker ignores its stop signal
    worker = running(driver)
    started = time.monotonic()
    driver.stop(worker, 0.5)
    assert time.monotonic() - started >= 0.5, "the whole grace was given"
    assert api.calls_of("signal") == [(worker, "SIGTERM")]
    assert api.calls_of("kill") == [worker]


def test_podman_with_no_grace_is_killed_at_once(driver: DockerDriver, api: FakeDockerAPI) -> None:
    api.podman = True
    worker = running(driver)
    driver.stop(worker, 0)
    assert api.calls_of("signal") == [] and api.calls_of("kill") == [worker]


def test_a_stopped_container_on_podman_is_left_as_it_is(
    driver: DockerDriver, api: FakeDockerAPI
) -> None:
    api.podman = True
    worker = running(driver)
    api.exit(worker, 0)
    driver.stop(worker, 5.0)
    assert api.calls_of("kill") == []


def test_the_engine_is_asked_once_which_it_is(driver: DockerDriver, api: FakeDockerAPI) -> None:
    api.podman = True
    api.signal_exits = True
    for name in ("a", "b", "c"):
        driver.stop(running(driver, name), 5.0)
    assert api.calls_of("ping") == [None]


def test_many_stops_on_podman_run_side_by_side(driver: DockerDriver, api: FakeDockerAPI) -> None:
    """Each stop holds no engine call for its grace: 20 ignored signals end in one grace."""
    api.podman = True
    workers = [running(driver, f"w{i}") for i in range(20)]
    threads = [threading.Thread(target=driver.stop, args=(w, 0.5)) for w in workers]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - started < 2.0
    assert sorted(api.calls_of("kill")) == sorted(workers)


def test_podman_sends_the_images_stop_signal_read_once(
    driver: DockerDriver, api: FakeDockerAPI
) -> None:
    api.podman = True
    api.signal_exits = True
    api.image_info[DEFAULT_IMAGE] = {
        "Id": "sha256:" + "a" * 64,
        "Config": {"StopSignal": "SIGQUIT"},
    }
    workers = [running(driver, f"w{i}") for i in range(3)]
    for worker in workers:
        driver.stop(worker, 5.0)
    assert api.calls_of("signal") == [(worker, "SIGQUIT") for worker in workers]
    assert api.calls_of("inspect_image") == [DEFAULT_IMAGE], "one look at the image"
    assert api.calls_of("inspect_container") == [], "no container inspect per stop"


def test_a_worker_made_elsewhere_gets_its_own_configs_stop_signal(
    driver: DockerDriver, api: FakeDockerAPI
) -> None:
    api.podman = True
    api.signal_exits = True
    other = running(driver, "adopted")
    fresh = DockerDriver(driver.client)  # a new manager's driver: it made no worker
    fresh.stop(other, 5.0)
    assert api.calls_of("signal") == [(other, "SIGTERM")]
    assert api.calls_of("inspect_container") == [other]

"""The test infrastructure itself: the Docker gating, the test image, the leak detector."""

from __future__ import annotations

import threading
from pathlib import Path

import docker
import pytest

from images import TEST_IMAGE, find_static_busybox, is_static_elf
from support.engine import docker_required
from support.threads import ThreadBaseline


def test_test_image_runs_a_shell(docker_client: docker.DockerClient, test_image: str) -> None:
    assert test_image == TEST_IMAGE
    container = docker_client.containers.create(
        test_image, ["sh", "-c", "echo hi"], labels={"dockyard.test": "infrastructure"}
    )
    try:
        container.start()
        result = container.wait(timeout=30)
        assert result["StatusCode"] == 0
        assert container.logs(stdout=True, stderr=False) == b"hi\n"
    finally:
        container.remove(force=True)


def test_instance_id_is_unique_and_has_no_leftovers(
    instance_id: str, snapshot_image_prefix: str, docker_client: docker.DockerClient
) -> None:
    assert instance_id.startswith("dockyard-test-")
    assert len(instance_id) == len("dockyard-test-") + 8
    assert snapshot_image_prefix == "dockyard-test-snap-" + instance_id[-8:] + "-"
    assert not docker_client.containers.list(
        all=True, filters={"label": f"cascade.router.instance={instance_id}"}
    )


@pytest.mark.allow_leftovers
def test_allow_leftovers_still_cleans_up(
    instance_id: str, docker_client: docker.DockerClient, test_image: str
) -> None:
    # Left running on purpose: the fixture removes it without failing the test.
    docker_client.containers.run(
        test_image,
        ["sleep", "300"],
        detach=True,
        labels={"cascade.managed": "true", "cascade.router.instance": instance_id},
    )


def test_static_busybox_detection() -> None:
    busybox = find_static_busybox()
    if busybox is not None:
        assert is_static_elf(busybox)
    assert not is_static_elf(Path(__file__))


def test_docker_required_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("DOCKYARD_REQUIRE_DOCKER", raising=False)
    assert not docker_required()
    monkeypatch.setenv("DOCKYARD_REQUIRE_DOCKER", "1")
    assert docker_required()
    monkeypatch.delenv("DOCKYARD_REQUIRE_DOCKER")
    monkeypatch.setenv("CI", "true")
    assert docker_required()


def test_thread_baseline_waits_for_finishing_threads(thread_baseline: ThreadBaseline) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, args=(0.2,), name="short-lived")
    thread.start()
    thread_baseline.assert_no_new_threads(timeout=2.0)
    assert not thread.is_alive()


def test_thread_baseline_reports_stuck_threads(thread_baseline: ThreadBaseline) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="stuck", daemon=True)
    thread.start()
    try:
        with pytest.raises(AssertionError, match="stuck"):
            thread_baseline.assert_no_new_threads(timeout=0.2)
    finally:
        stop.set()
        thread.join()

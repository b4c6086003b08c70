"""Fixtures for the Swarm backend's tests: a swarm manager engine, its test image, leak checks.

The swarm engine is a second engine (``tests/swarm_engine.sh start``), named by
``DOCKYARD_SWARM_HOST`` (default ``unix:///run/dyswarm/docker.sock``). Without one the
tests that need it are **skipped**, unless ``DOCKYARD_REQUIRE_DOCKER=1`` or ``CI=true``, in
which case they **fail**. Import the fixtures into a test module::

    from swarm_support import make_swarm_manager, swarm_client, swarm_image, swarm_instance
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from conftest import LABEL_PREFIX, ManagerFactory, docker_required
from images import TEST_IMAGE, ensure_test_images

DEFAULT_SWARM_HOST = "unix:///run/dyswarm/docker.sock"
DEFAULT_WORKER_HOST = "unix:///run/dyswarm2/docker.sock"  # the second node, when started
SERVICE_GONE_S = 10.0


def swarm_host() -> str:
    return os.environ.get("DOCKYARD_SWARM_HOST", "").strip() or DEFAULT_SWARM_HOST


def worker_host() -> str:
    """The second swarm node's engine (`tests/swarm_engine.sh start-worker`)."""
    return os.environ.get("DOCKYARD_SWARM_WORKER_HOST", "").strip() or DEFAULT_WORKER_HOST


@pytest.fixture(scope="session")
def swarm_client() -> Iterator[docker.DockerClient]:
    """A client of the swarm manager engine; skip (or fail when required) without one."""
    host = swarm_host()
    try:
        client = docker.DockerClient(base_url=host, timeout=60, max_pool_size=64)
        swarm = client.info().get("Swarm") or {}
    except Exception as exc:
        _missing(f"no swarm engine at {host}: {type(exc).__name__}: {exc}")
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        client.close()
        _missing(f"the engine at {host} is not a swarm manager")
    try:
        yield client
    finally:
        client.close()


def _missing(message: str) -> Any:
    if docker_required():
        pytest.fail(message + " (required: DOCKYARD_REQUIRE_DOCKER=1 or CI=true)", pytrace=False)
    pytest.skip(message + " (start one with tests/swarm_engine.sh start)")


@pytest.fixture(scope="session")
def swarm_image(swarm_client: docker.DockerClient) -> str:
    ensure_test_images(swarm_client)
    return TEST_IMAGE


def instance_services(client: docker.DockerClient, instance: str) -> list[dict[str, Any]]:
    label = f"{LABEL_PREFIX}.router.instance={instance}"
    return list(client.api.services(filters={"label": [label]}))


def instance_containers(client: docker.DockerClient, instance: str) -> list[Any]:
    label = f"{LABEL_PREFIX}.router.instance={instance}"
    return list(client.containers.list(all=True, filters={"label": label}))


@pytest.fixture
def swarm_instance(
    request: pytest.FixtureRequest, swarm_client: docker.DockerClient
) -> Iterator[str]:
    """A fresh router instance id; at teardown the test fails if a service of it is left.

    Services (and their task containers) of the instance are removed either way.
    """
    instance = f"dockyard-swarm-test-{uuid.uuid4().hex[:8]}"
    yield instance
    leftovers = instance_services(swarm_client, instance)
    for service in leftovers:
        with contextlib.suppress(docker.errors.NotFound):
            swarm_client.api.remove_service(service["ID"])
    deadline = time.monotonic() + SERVICE_GONE_S
    while time.monotonic() < deadline:
        containers = instance_containers(swarm_client, instance)
        if not any(c.status == "running" for c in containers):
            break
        time.sleep(0.2)
    for container in instance_containers(swarm_client, instance):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True)
    allow = request.node.get_closest_marker("allow_leftovers") is not None
    if leftovers and not allow:
        names = ", ".join(str((s.get("Spec") or {}).get("Name")) for s in leftovers)
        pytest.fail(f"leaked {len(leftovers)} service(s) of {instance}: {names}", pytrace=False)


def set_availability(client: docker.DockerClient, node_id: str, availability: str) -> None:
    node = client.api.inspect_node(node_id)
    spec = dict(node["Spec"], Availability=availability)
    client.api.update_node(node_id, node["Version"]["Index"], spec)


@pytest.fixture
def swarm_local_node(swarm_client: docker.DockerClient) -> Iterator[str]:
    """Every task of the test lands on the manager node: other nodes are paused meanwhile.

    For tests of what only a local task container tells (OOMKilled, its labels, ...)."""
    own = swarm_client.info()["Swarm"]["NodeID"]
    others = [n["ID"] for n in swarm_client.api.nodes() if n["ID"] != own]
    paused = []
    try:
        for node_id in others:
            if swarm_client.api.inspect_node(node_id)["Spec"].get("Availability") == "active":
                set_availability(swarm_client, node_id, "pause")
                paused.append(node_id)
        yield own
    finally:
        for node_id in paused:
            set_availability(swarm_client, node_id, "active")


@pytest.fixture
def make_swarm_manager(
    swarm_client: docker.DockerClient, swarm_image: str, swarm_instance: str
) -> Iterator[Callable[..., Any]]:
    """`make_swarm_manager(**config_overrides)`: a swarm-backed manager, closed at teardown.

    Defaults: the test image, this test's instance id, `stop_grace_s=1`,
    `worker_memory_mb=64`, `swarm_pending_timeout_s=10`; `listener`, `projects`,
    `reporter` and `docker_client` go to the manager.
    """
    make = ManagerFactory(
        {
            "backend": "swarm",
            "worker_image": swarm_image,
            "router_instance_id": swarm_instance,
            "stop_grace_s": 1,
            "worker_memory_mb": 64,
            "slot_wait_timeout_s": 30,
            "swarm_pending_timeout_s": 10,
        },
        ("listener", "projects", "reporter", "docker_client", "credentials"),
        docker_client=swarm_client,
    )
    yield make
    make.close_all()

"""The swarm engines of ``tests/swarm_engine.sh``: where they are, and what runs on them.

The swarm engine is a second engine (``tests/swarm_engine.sh start``), named by
``DOCKYARD_SWARM_HOST`` (default ``unix:///run/dyswarm/docker.sock``); its fixtures
(``swarm_client``, ``swarm_image``, ``swarm_instance``, ``swarm_local_node``,
``make_swarm_manager``) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from support.engine import LABEL_PREFIX, docker_required

DEFAULT_SWARM_HOST = "unix:///run/dyswarm/docker.sock"
DEFAULT_WORKER_HOST = "unix:///run/dyswarm2/docker.sock"  # the second node, when started
SERVICE_GONE_S = 10.0


def swarm_host() -> str:
    return os.environ.get("DOCKYARD_SWARM_HOST", "").strip() or DEFAULT_SWARM_HOST


def worker_host() -> str:
    """The second swarm node's engine (`tests/swarm_engine.sh start-worker`)."""
    return os.environ.get("DOCKYARD_SWARM_WORKER_HOST", "").strip() or DEFAULT_WORKER_HOST


def missing_swarm(message: str) -> Any:
    """Skip without a swarm engine; fail where the run requires one."""
    if docker_required():
        pytest.fail(message + " (required: DOCKYARD_REQUIRE_DOCKER=1 or CI=true)", pytrace=False)
    pytest.skip(message + " (start one with tests/swarm_engine.sh start)")


def instance_services(client: docker.DockerClient, instance: str) -> list[dict[str, Any]]:
    label = f"{LABEL_PREFIX}.router.instance={instance}"
    return list(client.api.services(filters={"label": [label]}))


def set_availability(client: docker.DockerClient, node_id: str, availability: str) -> None:
    node = client.api.inspect_node(node_id)
    spec = dict(node["Spec"], Availability=availability)
    client.api.update_node(node_id, node["Version"]["Index"], spec)


@contextlib.contextmanager
def on_second_node(manager_client: docker.DockerClient) -> Iterator[docker.DockerClient]:
    """The second node's engine, with the manager node paused meanwhile (every new task
    lands on the second node); skips without a second node."""
    host = worker_host()
    try:
        worker = docker.DockerClient(base_url=host, timeout=30)
        state = (worker.info().get("Swarm") or {}).get("LocalNodeState")
    except Exception as exc:
        pytest.skip(f"no second swarm node at {host}: {exc}")
    if state != "active":
        worker.close()
        pytest.skip(f"the engine at {host} is not in the swarm")
    manager_id = manager_client.info()["Swarm"]["NodeID"]
    set_availability(manager_client, manager_id, "pause")
    try:
        yield worker
    finally:
        set_availability(manager_client, manager_id, "active")
        worker.close()

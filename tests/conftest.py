"""Shared pytest fixtures for the dockyard test suite.

Docker
    ``DOCKER_CONFIG`` points at an empty directory for the whole run (autouse): a registry
    login on the machine never reaches a test.

    ``docker_client`` (session) talks to a real engine. Without an engine every test
    that needs one is **skipped**, unless ``DOCKYARD_REQUIRE_DOCKER=1`` or ``CI=true``
    is set, in which case it **fails**. Every Docker fixture depends on
    ``docker_client``, and a test marked ``@pytest.mark.docker`` requests it
    automatically, so the gating applies to all of them. Tests that use it (directly
    or through another fixture) get the ``docker`` marker, so ``-m "not docker"``
    runs the unit tests only.

    ``test_image`` (session) is :data:`images.TEST_IMAGE`, built when absent.

    ``instance_id`` (function) is a fresh router instance id. At teardown every
    container labelled ``cascade.router.instance=<id>`` is force-removed and the test
    **fails** if there was any (a leak detector; ``@pytest.mark.allow_leftovers``
    turns the check off, the clean-up still happens). Images whose name starts with
    ``snapshot_image_prefix`` are removed too.

Sentry
    ``sentry_events`` (function) initialises the real sentry-sdk once per session with
    a capturing transport (no network) and returns the list of captured event dicts,
    emptied for each test.

Threads
    ``thread_baseline`` (function) records ``threading.enumerate()`` at set-up; call
    ``thread_baseline.assert_no_new_threads()`` after closing what the test started.

Logs and a second router
    ``dockyard_logs`` (function) captures every ``dockyard`` log record at DEBUG;
    ``other_instance`` (function) is a second router instance id, its containers removed
    after the test.

Swarm
    ``swarm_client`` (session), ``swarm_image`` (session), ``swarm_instance``,
    ``swarm_local_node`` and ``make_swarm_manager`` run on the swarm engine of
    ``tests/swarm_engine.sh`` (see ``support.swarm``).

Only fixtures live here: the helpers the test modules share are in the ``support`` package.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from faultproxy import FaultProxy
from images import TEST_IMAGE, ensure_test_images
from support.engine import (
    LEAK_GRACE_S,
    ManagerFactory,
    docker_required,
    engine_socket,
    instance_containers,
    remove_container,
    remove_images_with_prefix,
    snapshot_prefix_for,
)
from support.hosts import LogCapture
from support.sentry import CAPTURED_EVENTS, CapturedEvents, init_test_sentry
from support.swarm import (
    SERVICE_GONE_S,
    instance_services,
    missing_swarm,
    set_availability,
    swarm_host,
)
from support.threads import ThreadBaseline

# --------------------------------------------------------------------------- docker


@pytest.fixture(scope="session", autouse=True)
def _no_host_docker_login(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`DOCKER_CONFIG` names an empty directory for the whole run.

    dockyard reads registry logins from the Docker config; a login on the machine running
    the tests must not change what they see. A test that needs a config sets its own.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("docker-config")))
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses ``docker_client`` (directly or not) with ``docker``."""
    for item in items:
        if "docker_client" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(autouse=True)
def _docker_marker_gate(request: pytest.FixtureRequest) -> None:
    """A test marked ``docker`` gets the skip/fail gating even without the fixture."""
    if request.node.get_closest_marker("docker") is not None:
        request.getfixturevalue("docker_client")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A ``docker.DockerClient`` from the environment (``DOCKER_HOST`` or the CLI context).

    Skips the test when the engine does not answer; fails it instead when
    ``DOCKYARD_REQUIRE_DOCKER=1`` or ``CI=true``. The client has a 60 s timeout and
    a connection pool of 32.
    """
    try:
        client = docker.from_env(timeout=60, max_pool_size=32)
        client.ping()
    except Exception as exc:  # DockerException, requests errors, OSError, ...
        message = f"Docker engine not reachable: {type(exc).__name__}: {exc}"
        if docker_required():
            pytest.fail(
                message + " (required: DOCKYARD_REQUIRE_DOCKER=1 or CI=true)", pytrace=False
            )
        pytest.skip(message)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def test_image(docker_client: docker.DockerClient) -> str:
    """Name of the busybox test image (``dockyard-test-busybox:latest``), built if absent."""
    ensure_test_images(docker_client)
    return TEST_IMAGE


@pytest.fixture
def instance_id(
    request: pytest.FixtureRequest, docker_client: docker.DockerClient
) -> Iterator[str]:
    """A unique router instance id, ``dockyard-test-<8 hex>``.

    Pass it as ``RouterConfig(router_instance_id=...)``. At teardown (after the
    fixtures that depend on it, e.g. a manager, are closed) every container labelled
    ``cascade.router.instance=<id>`` is force-removed, and the test fails if any was
    still there after a short grace period. ``@pytest.mark.allow_leftovers`` skips
    the failure (not the clean-up). Images named with :func:`snapshot_image_prefix`
    are removed as well.
    """
    suffix = uuid.uuid4().hex[:8]
    instance = f"dockyard-test-{suffix}"
    yield instance

    allow = request.node.get_closest_marker("allow_leftovers") is not None
    leftovers = instance_containers(docker_client, instance)
    if leftovers and not allow:
        deadline = time.monotonic() + LEAK_GRACE_S
        # Only containers that are going away by themselves (exited, being removed)
        # are worth waiting for; a running one is a leak straight away.
        while any(c.status != "running" for c in leftovers) and time.monotonic() < deadline:
            time.sleep(0.1)
            leftovers = instance_containers(docker_client, instance)
    described = []
    for container in leftovers:
        try:
            described.append(f"{container.name} ({container.short_id}, {container.status})")
        except Exception:
            described.append(str(container.id)[:12])
        remove_container(container)
    remove_images_with_prefix(docker_client, snapshot_prefix_for(instance))
    if described and not allow:
        pytest.fail(
            f"leaked {len(described)} container(s) of router instance {instance}: "
            + ", ".join(described),
            pytrace=False,
        )


@pytest.fixture
def snapshot_image_prefix(instance_id: str) -> str:
    """A per-test snapshot image prefix, ``dockyard-test-snap-<8 hex>-``.

    Pass it as ``RouterConfig(snapshot_image_prefix=...)``; ``instance_id`` removes the
    images at teardown.
    """
    return snapshot_prefix_for(instance_id)


# --------------------------------------------------------------------------- sentry


@pytest.fixture
def sentry_events() -> Iterator[CapturedEvents]:
    """The Sentry events captured during this test, as a ``list[dict]``.

    The real sentry-sdk is initialised (once per session) with a transport that
    appends ``envelope.get_event()`` to this list; nothing goes to the network.
    ``sentry_events.with_source("worker_exit")`` filters by the ``source`` tag and
    ``sentry_events.wait_for("worker_timeout")`` waits for background events.
    """
    init_test_sentry()
    CAPTURED_EVENTS.clear()
    yield CAPTURED_EVENTS
    CAPTURED_EVENTS.clear()


# --------------------------------------------------------------------------- threads


@pytest.fixture
def thread_baseline() -> ThreadBaseline:
    """A :class:`ThreadBaseline` taken at set-up (before the test's own fixtures).

    Request it *before* fixtures that start threads, then call
    ``thread_baseline.assert_no_new_threads()`` after closing them.
    """
    return ThreadBaseline()


# --------------------------------------------------------------------------- managers


@pytest.fixture
def make_manager(
    instance_id: str, test_image: str, snapshot_image_prefix: str
) -> Iterator[Callable[..., Any]]:
    """A factory ``make_manager(**config_overrides) -> ContainerManager`` on the real engine.

    The config runs the test image under this test's ``instance_id`` and
    ``snapshot_image_prefix`` with ``stop_grace_s=1``, ``worker_memory_mb=64`` and
    ``slot_wait_timeout_s=30``; keyword arguments override any ``RouterConfig`` field.
    ``listener``, ``credentials``, ``projects``, ``job_data_store``, ``reporter``,
    ``docker_client`` and ``metrics_registry`` go to the manager itself. Every manager made
    is closed at teardown, before ``instance_id`` looks for leaked containers.
    """
    make = ManagerFactory(
        {
            "worker_image": test_image,
            "router_instance_id": instance_id,
            "snapshot_image_prefix": snapshot_image_prefix,
            "stop_grace_s": 1,
            "worker_memory_mb": 64,
            "slot_wait_timeout_s": 30,
        },
        (
            "listener",
            "credentials",
            "projects",
            "job_data_store",
            "reporter",
            "docker_client",
            "metrics_registry",
        ),
    )
    yield make
    make.close_all()


# -- the fault-injection proxy between docker-py and the engine ----------------------------


@pytest.fixture
def proxy_seed() -> int:
    """Seed of the proxy's random faults; a test module overrides it to vary them."""
    return 0


@pytest.fixture
def proxy(docker_client: docker.DockerClient, proxy_seed: int) -> Iterator[FaultProxy]:
    """A started `FaultProxy` in front of the engine, stopped at teardown."""
    started = FaultProxy(upstream=engine_socket(), seed=proxy_seed).start()
    yield started
    started.stop()


@pytest.fixture
def proxied(proxy: FaultProxy) -> Iterator[docker.APIClient]:
    """A docker-py API client that talks to the engine through `proxy`."""
    api = docker.APIClient(base_url=proxy.base_url, timeout=30, max_pool_size=64)
    yield api
    api.close()


# -- a second router, and what dockyard logs ---------------------------------------------


@pytest.fixture
def other_instance(instance_id: str, docker_client: docker.DockerClient) -> Iterator[str]:
    """A second router instance id on the same engine; its containers are removed after."""
    other = f"{instance_id}-b"
    yield other
    for container in instance_containers(docker_client, other):
        remove_container(container)  # 409 (auto-removal under way) and 404 are fine


@pytest.fixture
def dockyard_logs() -> Iterator[LogCapture]:
    """A `LogCapture` on the ``dockyard`` logger at DEBUG, removed at teardown."""
    logger = logging.getLogger("dockyard")
    handler = LogCapture()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# --------------------------------------------------------------------------- swarm


@pytest.fixture(scope="session")
def swarm_client() -> Iterator[docker.DockerClient]:
    """A client of the swarm manager engine; skip (or fail when required) without one."""
    host = swarm_host()
    try:
        client = docker.DockerClient(base_url=host, timeout=60, max_pool_size=64)
        swarm = client.info().get("Swarm") or {}
    except Exception as exc:
        missing_swarm(f"no swarm engine at {host}: {type(exc).__name__}: {exc}")
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        client.close()
        missing_swarm(f"the engine at {host} is not a swarm manager")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def swarm_image(swarm_client: docker.DockerClient) -> str:
    ensure_test_images(swarm_client)
    return TEST_IMAGE


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

"""The Docker boundary on a real engine: exit waits `close()` can always end, typed errors,
pools on a `tcp://` engine, and create recovery (labelled images, client-side timeouts).

A `tcp://127.0.0.1:PORT` engine is a small forwarder thread in front of the engine's
unix socket (or in front of the fault proxy), so the tcp transport of docker-py and
requests is exercised for real.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import docker.errors
import pytest

from dockyard import (
    ContainerManager,
    DockerUnavailableError,
    DockyardError,
    RouterConfig,
    WorkerJob,
    WorkerSpawnError,
)
from dockyard._docker import DockerGateway
from dockyard._errors import NetworkNotFoundError, translate
from faultproxy import FaultProxy, FaultRule
from support.engine import engine_socket, is_podman
from support.listeners import ListenerRecorder
from support.threads import ThreadBaseline

pytestmark = pytest.mark.docker

OUTCOME_TIMEOUT_S = 30.0


class TcpForwarder:
    """Listens on 127.0.0.1:<free port> and pipes each connection to a unix socket."""

    def __init__(self, unix_path: str) -> None:
        self.unix_path = unix_path
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._accept = threading.Thread(target=self._accept_loop, name="tcp-forwarder", daemon=True)
        self._accept.start()

    @property
    def base_url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.unix_path)
            thread = threading.Thread(
                target=self._pipe, args=(client, upstream), name="tcp-forwarder-conn", daemon=True
            )
            with self._lock:
                self._socks += [client, upstream]
                self._threads.append(thread)
            thread.start()

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while not self._stopping.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        self._accept.join(5)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)


@pytest.fixture
def tcp_engine(docker_client: docker.DockerClient) -> Iterator[TcpForwarder]:
    forwarder = TcpForwarder(engine_socket())
    yield forwarder
    forwarder.stop()


@pytest.fixture
def baseline(proxy: FaultProxy) -> ThreadBaseline:
    return ThreadBaseline()


def instance_containers(client: docker.DockerClient, instance_id: str) -> list[dict[str, Any]]:
    return list(
        client.api.containers(all=True, filters={"label": f"cascade.router.instance={instance_id}"})
    )


def closes_within(manager: ContainerManager, seconds: float) -> bool:
    closer = threading.Thread(target=manager.close, name="test-closer", daemon=True)
    closer.start()
    closer.join(seconds)
    return not closer.is_alive()


# -- close() always ends the exit waits ----------------------------------------------------


def test_close_ends_exit_waits_on_a_tcp_engine(
    tcp_engine: TcpForwarder,
    test_image: str,
    instance_id: str,
    monkeypatch: pytest.MonkeyPatch,
    thread_baseline: ThreadBaseline,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", tcp_engine.base_url)
    config = RouterConfig(
        worker_image=test_image,
        router_instance_id=instance_id,
        docker_network="none",
        worker_memory_mb=64,
    )
    manager = ContainerManager(config)
    worker = manager.spawn_worker(WorkerJob(id="tcp-close", type="t", command=["sleep", "60"]))
    started = time.monotonic()
    assert closes_within(manager, 10.0), "close() hangs on an exit wait over tcp://"
    assert time.monotonic() - started < 10.0
    # Nothing is left: no thread of dockyard's, and no connection to the engine (the
    # forwarder's thread for a connection ends when the connection does). An interrupted
    # stream's connection can linger as unreachable garbage until the next collection.
    gc.collect()
    thread_baseline.assert_no_new_threads(timeout=5.0)
    # Detached: the worker still runs; the test's own client removes it.
    docker.APIClient(base_url=tcp_engine.base_url).remove_container(worker.container_id, force=True)


def test_a_hung_engine_does_not_hang_close(
    proxy: FaultProxy,
    baseline: ThreadBaseline,
    make_manager: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
) -> None:
    api = docker.APIClient(base_url=proxy.base_url, timeout=3, max_pool_size=32)
    recorder = ListenerRecorder()
    manager = make_manager(docker_client=api, listener=recorder, docker_network="none")
    worker = manager.spawn_worker(WorkerJob(id="hung", type="t", command=["sleep", "60"]))
    # From now on the engine takes a minute to answer any wait; the open one breaks, so
    # the worker's exit must be waited for again, on a hung engine.
    for op in ("wait", "events"):
        proxy.add_rule(FaultRule(op=op, action="delay", delay_s=60.0, times=None))
    waits, streams = proxy.count("wait"), proxy.count("events")
    assert proxy.cut_active("any") >= 1
    deadline = time.monotonic() + 10
    # Wait until the broken wait is being replaced: that request now hangs in the engine.
    while proxy.count("wait") == waits and proxy.count("events") == streams:
        assert time.monotonic() < deadline, "the broken wait was never replaced"
        time.sleep(0.02)
    started = time.monotonic()
    try:
        assert closes_within(manager, 12.0), "close() hangs while the engine hangs"
        assert time.monotonic() - started < 12.0
    finally:
        proxy.stop()  # lets whatever still hangs go
        docker_client.api.remove_container(worker.container_id, force=True)
        api.close()
    baseline.assert_no_new_threads(timeout=5.0)
    assert recorder.finished == []  # detached, no outcome made up


# -- typed errors only -------------------------------------------------------------------------


def test_engine_refusals_are_worker_spawn_errors_with_the_engine_error_as_cause(
    proxy: FaultProxy,
    proxied: docker.APIClient,
    make_manager: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
) -> None:
    manager = make_manager(docker_client=proxied, docker_network="none")
    proxy.add_rule(FaultRule(op="create", action="fail", status=500, message="disk full"))
    with pytest.raises(WorkerSpawnError) as info:
        manager.spawn_worker(WorkerJob(id="refused", type="t", command=["true"]))
    assert info.value.status_code == 500
    assert isinstance(info.value.__cause__, docker.errors.APIError)
    assert "disk full" in str(info.value)

    proxy.add_rule(FaultRule(op="start", action="fail", status=500, message="no cgroup"))
    with pytest.raises(WorkerSpawnError) as info:
        manager.spawn_worker(WorkerJob(id="refused", type="t", command=["true"]))
    assert info.value.status_code == 500
    assert instance_containers(docker_client, instance_id) == []


def test_a_missing_network_is_a_worker_spawn_error(
    make_manager: Callable[..., ContainerManager], docker_client: docker.DockerClient
) -> None:
    manager = make_manager(docker_network=f"dockyard-missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(WorkerSpawnError) as info:
        manager.spawn_worker(WorkerJob(id="no-net", type="t", command=["true"]))
    # The engine's own status: Docker's 404, Podman's 500 with its message (README, Engines).
    assert info.value.status_code == (500 if is_podman(docker_client) else 404)
    cause = info.value.__cause__
    assert isinstance(cause, docker.errors.APIError)
    assert isinstance(translate("create", cause), NetworkNotFoundError)  # the table reads both


def test_an_absent_image_id_is_a_typed_error(
    make_manager: Callable[..., ContainerManager],
) -> None:
    manager = make_manager(worker_image="sha256:" + "0" * 64, docker_network="none")
    with pytest.raises(DockyardError) as info:
        manager.spawn_worker(WorkerJob(id="no-image", type="t", command=["true"]))
    assert isinstance(info.value, WorkerSpawnError)
    assert "cannot be pulled" in str(info.value)


def test_an_unreachable_engine_is_docker_unavailable(
    make_manager: Callable[..., ContainerManager], tmp_path: Any
) -> None:
    gone = docker.APIClient(base_url=f"unix://{tmp_path}/no-engine.sock", version="1.41")
    manager = make_manager(docker_client=gone)
    with pytest.raises(DockerUnavailableError):
        manager.spawn_worker(WorkerJob(id="nobody-home", type="t", command=["true"]))


# -- pools on tcp -------------------------------------------------------------------------------


def test_no_pool_full_warnings_on_a_tcp_engine(
    tcp_engine: TcpForwarder,
    docker_client: docker.DockerClient,
    test_image: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = DockerGateway.connect(
        short_pool=8,
        wait_pool=12,
        timeout_s=30,
        environment={"DOCKER_HOST": tcp_engine.base_url},
    )
    container = docker_client.api.create_container(
        test_image,
        ["sleep", "30"],
        host_config=docker_client.api.create_host_config(network_mode="none", auto_remove=False),
    )["Id"]
    docker_client.api.start(container)
    caplog.set_level(logging.WARNING, logger="urllib3.connectionpool")
    try:
        # 16 calls in flight at once, each holding its connection for a second or so.
        def hold(_: int) -> None:
            with contextlib.suppress(DockyardError):
                gateway.wait_removed(container, 1.0)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(hold, range(16)))
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: gateway.inspect(container), range(64)))
    finally:
        gateway.close()
        docker_client.api.remove_container(container, force=True)
    full = [r for r in caplog.records if "Connection pool is full" in r.getMessage()]
    assert full == []


# -- create recovery ----------------------------------------------------------------------------


@pytest.fixture
def labelled_image(docker_client: docker.DockerClient, test_image: str) -> Iterator[str]:
    """The test image with a LABEL of its own, which the engine adds to its containers."""
    tag = f"dockyard-test-labelled-{uuid.uuid4().hex[:8]}:latest"
    dockerfile = f"FROM {test_image}\nLABEL org.example.vendor=dockyard-tests\n".encode()
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
    yield tag
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.images.remove(tag, force=True)


def test_create_answer_lost_with_a_labelled_image_uses_the_created_container(
    proxy: FaultProxy,
    proxied: docker.APIClient,
    make_manager: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
    labelled_image: str,
) -> None:
    manager = make_manager(docker_client=proxied, worker_image=labelled_image)
    proxy.add_rule(FaultRule(op="create", action="cut_after", delay_s=0.0))
    worker = manager.spawn_worker(WorkerJob(id="labelled", type="t", command=["true"]))
    assert manager.wait_for_worker("labelled", OUTCOME_TIMEOUT_S).status == "succeeded"
    assert proxy.count("create") == 2  # cut, then the 409 with the container it made
    starts = [path for _, path in proxy.calls if path.split("?")[0].endswith("/start")]
    assert len(starts) == 1 and worker.container_id in starts[0]


def test_a_create_that_times_out_leaves_no_created_container(
    proxy: FaultProxy,
    make_manager: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
) -> None:
    api = docker.APIClient(base_url=proxy.base_url, timeout=2, max_pool_size=32)
    since = int(time.time()) - 1  # whole seconds: Podman answers a fractional one with nothing
    try:
        manager = make_manager(docker_client=api, docker_network="none")
        # The engine gets the create only after the client gave up waiting for it.
        proxy.add_rule(FaultRule(op="create", action="delay", delay_s=2.5))
        try:
            manager.spawn_worker(WorkerJob(id="slow-create", type="t", command=["true"]))
        except DockerUnavailableError:
            pass  # acceptable, as long as nothing is left behind
        else:
            outcome = manager.wait_for_worker("slow-create", OUTCOME_TIMEOUT_S)
            assert outcome.status == "succeeded"
        manager.close()
        # The engine did create the container (its event says so) ...
        deadline = time.monotonic() + 15
        while not engine_created(docker_client, instance_id, since):
            assert time.monotonic() < deadline, "the delayed create never reached the engine"
            time.sleep(0.1)
        # ... and no container of it waits in `created` for an orphan scan.
        containers = instance_containers(docker_client, instance_id)
        left = [(c["Names"], c["State"]) for c in containers if c["State"] == "created"]
        assert left == [], f"a create that timed out left {left}"
    finally:
        api.close()


def engine_created(client: docker.DockerClient, instance_id: str, since: int) -> bool:
    events = client.api.events(
        since=since,
        until=int(time.time()) + 1,
        filters={
            "type": "container",
            "event": "create",
            "label": [f"cascade.router.instance={instance_id}"],
        },
        decode=True,
    )
    try:
        return any(True for _ in events)
    finally:
        events.close()

"""The Docker boundary without an engine: exit tickets on one events stream, typed errors,
the call observer, and no reaching into docker-py / urllib3 internals."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import docker
import docker.errors
import pytest
import requests

import dockyard
from dockyard import (
    ContainerManager,
    DockerUnavailableError,
    RouterConfig,
    WorkerJob,
    WorkerSpawnError,
)
from dockyard._docker import DockerGateway, _size_tcp_pool
from dockyard._driver import ContainerSpec
from dockyard._errors import (
    EngineConflictError,
    EngineNotFoundError,
    ImageNotFoundError,
    translate,
)
from dockyard.testing import DEFAULT_IMAGE, FakeDockerAPI, RecordingReporter, api_error
from support.rig import running
from support.threads import eventually

# -- no private attributes ------------------------------------------------------------------


PRIVATE_ACCESS = re.compile(
    r"\._(post|get|url|raise_for_status|stream_helper|result|connection|fp|sock|version)\b"
)


def test_no_private_docker_py_or_urllib3_attribute_in_lib() -> None:
    offenders = []
    for path in sorted(Path(dockyard.__file__).parent.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE_ACCESS.search(line.split("#", 1)[0]):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


# -- tickets --------------------------------------------------------------------------------


def test_exit_reaches_the_ticket_registered_before_start(
    gateway: DockerGateway, api: FakeDockerAPI
) -> None:
    spec = ContainerSpec(
        image=DEFAULT_IMAGE, name="instant", env={}, labels={}, memory_bytes=1 << 26,
        network="none", auto_remove=True,
    )  # fmt: skip
    container_id = gateway.create(spec)
    ticket = gateway.open_exit_wait(container_id)
    api.exit_on_start = 7  # exits during `start`, before anyone waits in `result()`
    gateway.start(container_id)
    result = ticket.result()
    assert (result.exit_code, result.oom_killed, result.error) == (7, None, None)
    # The run's times are the `start` and `die` events' (the container may be gone).
    assert result.started_at is not None and result.finished_at is not None
    assert result.duration_s is not None and result.duration_s >= 0


def test_close_wakes_a_blocked_result_at_once(gateway: DockerGateway) -> None:
    ticket = gateway.open_exit_wait(running(gateway))
    raised: list[BaseException] = []
    ended = threading.Event()

    def wait() -> None:
        try:
            ticket.result()
        except BaseException as err:
            raised.append(err)
        ended.set()

    threading.Thread(target=wait, daemon=True).start()
    ticket.close()
    assert ended.wait(1.0)
    assert isinstance(raised[0], DockerUnavailableError)
    assert ticket.closed


def test_a_broken_stream_fails_every_ticket_and_reconnects(
    gateway: DockerGateway, api: FakeDockerAPI
) -> None:
    first, second = running(gateway, "a"), running(gateway, "b")
    tickets = [gateway.open_exit_wait(first), gateway.open_exit_wait(second)]
    api.break_event_streams()
    for ticket in tickets:
        with pytest.raises(DockerUnavailableError, match="broke"):
            ticket.result()
    # The owner re-inspects and waits again on the reconnected stream.
    again = gateway.open_wait(first)
    api.exit(first, 3)
    assert again.result().exit_code == 3
    since = api.calls_of("events")[1:]
    assert since and all(value is not None for value in since)  # replays the gap


def test_a_reconnect_replays_events_the_engine_delivers_late(
    gateway: DockerGateway, api: FakeDockerAPI
) -> None:
    """Podman, loaded, delivered die events seconds after their time: each reconnect asks for
    the ten seconds before the last moment the old stream covered, not from that moment."""
    gateway.open_exit_wait(running(gateway)).close()
    eventually(lambda: len(api.calls_of("events")) >= 3)  # idle reconnects
    covered_up_to = time.time()
    for since in api.calls_of("events")[1:]:
        assert since is not None
        assert float(since) <= covered_up_to - 9.0, since


def test_idle_reconnects_keep_the_tickets(gateway: DockerGateway, api: FakeDockerAPI) -> None:
    container_id = running(gateway)
    ticket = gateway.open_exit_wait(container_id)
    eventually(lambda: len(api.calls_of("events")) >= 3)  # a few quiet heartbeats
    assert not ticket.done()
    api.exit(container_id, 0)
    assert ticket.result().exit_code == 0


def test_an_exit_just_before_the_wait_is_remembered(
    gateway: DockerGateway, api: FakeDockerAPI
) -> None:
    container_id = running(gateway)
    gateway.open_exit_wait(running(gateway, "other")).close()  # the stream is connected
    api.exit(container_id, 4)
    eventually(lambda: gateway._exits.remembered_exit(container_id) is not None)
    api.vanish(container_id)  # auto-removed: no inspect could tell the code any more
    ticket = gateway.open_wait(container_id)
    assert ticket.result().exit_code == 4


def test_open_wait_answers_at_once_for_a_stopped_container(
    gateway: DockerGateway, api: FakeDockerAPI
) -> None:
    container_id = running(gateway)
    with api.lock:
        container = api.containers_by_id[container_id]
        container.status, container.exit_code = "exited", 9  # no event: only inspect knows
    assert gateway.open_wait(container_id).result().exit_code == 9


def test_open_wait_on_a_missing_container_raises_not_found(gateway: DockerGateway) -> None:
    with pytest.raises(EngineNotFoundError) as info:
        gateway.open_wait("no-such-container")
    assert isinstance(info.value, EngineNotFoundError)


def test_oom_is_passed_along_with_the_exit(gateway: DockerGateway, api: FakeDockerAPI) -> None:
    container_id = running(gateway)
    ticket = gateway.open_exit_wait(container_id)
    api.exit(container_id, 137, oom=True)
    result = ticket.result()
    assert (result.exit_code, result.oom_killed) == (137, True)
    assert result.finished_at is not None  # the `die` event's time
    assert result.started_at is None  # it started before the wait: no `start` event seen


def test_a_resumed_wait_takes_the_start_from_the_inspect(
    gateway: DockerGateway, api: FakeDockerAPI
) -> None:
    container_id = running(gateway)  # started before any wait (an adopted worker)
    ticket = gateway.open_wait(container_id)
    api.exit(container_id, 3)
    result = ticket.result()
    assert result.started_at == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)  # the inspect's
    assert result.finished_at is not None and result.finished_at > result.started_at


def test_a_closed_wait_forgets_the_start(gateway: DockerGateway, api: FakeDockerAPI) -> None:
    container_id = running(gateway)
    gateway.open_wait(container_id).close()  # detached
    ticket = gateway.open_exit_wait(container_id)
    api.exit(container_id, 0)
    assert ticket.result().started_at is None


def test_a_stream_that_cannot_connect_fails_the_wait_with_a_typed_error(
    gateway: DockerGateway, api: FakeDockerAPI
) -> None:
    container_id = running(gateway)
    api.failures["events"] = [api_error(500, "events are broken")]
    with pytest.raises(dockyard.DockyardError) as info:
        gateway.open_exit_wait(container_id)
    assert getattr(info.value, "status_code", None) == 500
    assert gateway.open_exit_wait(container_id) is not None  # the next attempt connects


def test_gateway_close_ends_the_reader_and_later_calls_raise(api: FakeDockerAPI) -> None:
    gateway = DockerGateway.from_client(api, heartbeat_s=5.0)  # type: ignore[arg-type]
    ticket = gateway.open_exit_wait(running(gateway))
    reader = [t for t in threading.enumerate() if t.name == "dockyard-exit-events"]
    started = time.monotonic()
    gateway.close()
    assert time.monotonic() - started < 1.0  # woken, not waiting out the heartbeat
    assert all(not t.is_alive() for t in reader)
    with pytest.raises(DockerUnavailableError):
        ticket.result()
    with pytest.raises(DockerUnavailableError):
        gateway.inspect("anything")
    with pytest.raises(DockerUnavailableError):
        gateway.open_exit_wait("anything")


# -- errors and the observer ----------------------------------------------------------------


def test_every_call_is_observed_with_its_result(api: FakeDockerAPI) -> None:
    seen: list[tuple[str, str, float]] = []
    gateway = DockerGateway.from_client(api, observer=lambda *call: seen.append(call))  # type: ignore[arg-type]
    try:
        container_id = running(gateway)
        api.failures["inspect_container"] = [requests.exceptions.ConnectionError("down")]
        with pytest.raises(DockerUnavailableError):
            gateway.inspect(container_id)
        with pytest.raises(EngineNotFoundError):
            gateway.inspect("missing")
        api.failures["remove_container"] = [api_error(409, "removal in progress")]
        with pytest.raises(EngineConflictError) as info:
            gateway.remove(container_id)
        assert isinstance(info.value, EngineConflictError)
    finally:
        gateway.close()
    results = [(operation, result) for operation, result, _ in seen]
    assert results == [
        ("create", "ok"),
        ("start", "ok"),
        ("inspect", "unreachable"),
        ("inspect", "not_found"),
        ("remove", "conflict"),
    ]
    assert all(seconds >= 0 for _, _, seconds in seen)


def test_a_failing_observer_never_breaks_a_call(api: FakeDockerAPI) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("metrics down")

    gateway = DockerGateway.from_client(api, observer=broken)  # type: ignore[arg-type]
    try:
        running(gateway)
    finally:
        gateway.close()


def test_the_table_types_raw_errors_and_passes_typed_ones() -> None:
    missing_image = api_error(404, "No such image: x", docker.errors.ImageNotFound)
    assert isinstance(translate("create", missing_image), ImageNotFoundError)
    assert isinstance(
        translate("x", requests.exceptions.ConnectionError("x")), DockerUnavailableError
    )
    unavailable = DockerUnavailableError("x")
    assert translate("x", unavailable) is unavailable
    network = api_error(404, "network x not found", docker.errors.NotFound)
    assert not isinstance(translate("create", network), ImageNotFoundError)
    assert isinstance(translate("create", api_error(404, "No such image: x")), ImageNotFoundError)


def test_spawn_raises_only_dockyard_errors() -> None:
    api = FakeDockerAPI(images=set())
    reporter = RecordingReporter()
    config = RouterConfig(worker_image="sha256:" + "0" * 64, router_instance_id="unit")
    with ContainerManager(config, docker_client=api, reporter=reporter) as manager:  # type: ignore[arg-type]
        with pytest.raises(WorkerSpawnError, match="cannot be pulled"):
            manager.spawn_worker(WorkerJob("job", "t", {}))
        api.image_names.add("sha256:" + "0" * 64)
        api.failures["start"] = [requests.exceptions.ChunkedEncodingError("cut")]
        with pytest.raises(DockerUnavailableError):
            manager.spawn_worker(WorkerJob("job", "t", {}))
        api.failures["create_container"] = [docker.errors.DockerException("odd")]
        with pytest.raises(WorkerSpawnError) as info:
            manager.spawn_worker(WorkerJob("job", "t", {}))
        assert isinstance(info.value.__cause__, docker.errors.DockerException)
    assert api.containers_by_id == {}


def test_tcp_engines_get_a_pool_sized_for_the_workers() -> None:
    for url in ("tcp://127.0.0.1:2375", "https://127.0.0.1:2376"):
        api = docker.APIClient(base_url=url, version="1.41")
        _size_tcp_pool(api, 40)
        adapter = api.get_adapter(api.base_url + "/v1.41/containers/json")
        assert getattr(adapter, "_pool_maxsize", None) == 40
        api.close()

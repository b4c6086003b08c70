"""Tests of the fault-injection proxy (tests/faultproxy.py) against a real Docker engine.

Skipped when the engine socket does not answer, unless DOCKYARD_REQUIRE_DOCKER=1 or
CI=true, in which case every test fails instead.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import uuid

import docker
import pytest
import requests

from support.threads import eventually

try:
    from faultproxy import FaultProxy, FaultRule, operation_of
except ImportError:  # tests/ imported as a package
    from tests.faultproxy import FaultProxy, FaultRule, operation_of

pytestmark = pytest.mark.docker

RUN_ID = uuid.uuid4().hex[:12]
LABELS = {"dockyard.test": "faultproxy", "dockyard.test.run": RUN_ID}


def _upstream_path() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://") :]
    return "/var/run/docker.sock"


UPSTREAM = _upstream_path()
REQUIRED = os.environ.get("DOCKYARD_REQUIRE_DOCKER") == "1" or os.environ.get("CI") == "true"


def _engine_error() -> str | None:
    try:
        client = docker.APIClient(base_url="unix://" + UPSTREAM, version="auto", timeout=5)
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    try:
        client.ping()
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    finally:
        client.close()
    return None


_ENGINE_ERROR = _engine_error()
if _ENGINE_ERROR is not None and not REQUIRED:
    pytest.skip(
        f"Docker engine at {UPSTREAM} not reachable: {_ENGINE_ERROR}", allow_module_level=True
    )


@pytest.fixture(scope="module", autouse=True)
def _require_engine():
    if _ENGINE_ERROR is not None:
        pytest.fail(
            f"Docker engine at {UPSTREAM} not reachable ({_ENGINE_ERROR}) and "
            "DOCKYARD_REQUIRE_DOCKER=1 or CI=true",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def real():
    """A client on the real engine socket, bypassing the proxy."""
    client = docker.APIClient(base_url="unix://" + UPSTREAM, timeout=60)
    yield client
    for c in client.containers(all=True, filters={"label": f"dockyard.test.run={RUN_ID}"}):
        with contextlib.suppress(docker.errors.NotFound):
            client.remove_container(c["Id"], force=True)
    client.close()


@pytest.fixture(scope="module")
def image(test_image: str) -> str:
    """The shared busybox test image (conftest's ``test_image``, built when absent)."""
    return test_image


@pytest.fixture
def proxy():
    p = FaultProxy(upstream=UPSTREAM).start()
    yield p
    p.stop()


@pytest.fixture
def client(proxy):
    c = docker.APIClient(base_url=proxy.base_url, timeout=30, max_pool_size=40)
    yield c
    c.close()


@pytest.fixture
def sleeper(real, image):
    """A running `sleep 30` container, created directly on the engine."""
    cid = real.create_container(image, ["sleep", "30"], labels=LABELS)["Id"]
    real.start(cid)
    yield cid
    with contextlib.suppress(docker.errors.APIError):
        real.kill(cid)  # Podman's forced removal would give it a 10 s grace first
    real.remove_container(cid, force=True)


def _unique_name() -> str:
    return f"faultproxy-{RUN_ID}-{uuid.uuid4().hex[:8]}"


def _running(real, cid: str) -> bool:
    return bool(real.inspect_container(cid)["State"]["Running"])


# -- mapping and validation (no engine traffic) ------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "op"),
    [
        ("POST", "/v1.41/containers/create?name=x", "create"),
        ("POST", "/containers/create", "create"),
        ("POST", "/v1.45/containers/abc/start", "start"),
        ("POST", "/v1.41/containers/abc/wait?condition=not-running", "wait"),
        ("GET", "/v1.41/containers/abc/json", "inspect"),
        ("GET", "/v1.41/containers/json?all=1", "list"),
        ("POST", "/v1.41/containers/abc/stop?t=1", "stop"),
        ("POST", "/v1.41/containers/abc/kill", "kill"),
        ("DELETE", "/v1.41/containers/abc?force=True", "remove"),
        ("POST", "/v1.41/commit?container=abc", "commit"),
        ("GET", "/v1.41/containers/abc/logs?follow=1", "logs"),
        ("POST", "/v1.41/images/create?fromImage=busybox", "pull"),
        ("GET", "/v1.41/images/reg.example:5000/a/b:tag/json", "image_inspect"),
        ("DELETE", "/v1.41/images/a/b:tag?force=False", "image_remove"),
        ("GET", "/v1.41/_ping", None),
        ("HEAD", "/_ping", None),
        ("GET", "/version", None),
        ("GET", "/v1.41/version", None),
        ("GET", "/v1.41/images/json", "other"),
        ("GET", "/v1.41/containers/abc/start", "other"),
        ("POST", "/v1.41/containers/abc/json", "other"),
    ],
)
def test_operation_of(method, path, op):
    assert operation_of(method, path) == op


@pytest.mark.parametrize(
    "kwargs",
    [
        {"op": "nope", "action": "fail"},
        {"op": "create", "action": "explode"},
        {"op": "create", "action": "fail", "status": 42},
        {"op": "create", "action": "delay", "delay_s": -1},
        {"op": "create", "action": "fail", "times": -1},
        {"op": "create", "action": "fail", "probability": 1.5},
    ],
)
def test_rule_validation(kwargs):
    with pytest.raises(ValueError):
        FaultRule(**kwargs)


# -- pass-through --------------------------------------------------------------------------


def test_normal_cycle_through_proxy(proxy, client, real, image):
    name = _unique_name()
    cid = client.create_container(
        image, ["sh", "-c", "echo hello; exit 3"], name=name, labels=LABELS
    )["Id"]
    client.start(cid)
    assert client.wait(cid, timeout=30)["StatusCode"] == 3
    assert client.logs(cid) == b"hello\n"
    info = client.inspect_container(cid)
    assert info["Name"] == "/" + name
    assert info["State"]["ExitCode"] == 3
    client.remove_container(cid)
    assert real.containers(all=True, filters={"name": name}) == []
    for op in ("create", "start", "wait", "logs", "remove"):
        assert proxy.count(op) == 1, op
    assert proxy.count("inspect") == 2  # logs() inspects first (to learn about tty)
    assert proxy.count("any") == 7
    assert proxy.calls[0] == ("GET", "/version")  # docker-py's API version probe


def test_ping_and_version_are_never_faulted(proxy, client):
    rule = proxy.add_rule(FaultRule(op="any", action="fail", times=None))
    assert client.ping()
    assert client.version()["ApiVersion"]
    assert rule.hits == 0
    with pytest.raises(docker.errors.APIError):
        client.info()  # an "other" request: only "any" rules apply to it
    assert proxy.count("other") == 1
    assert proxy.count("any") == 1


def test_high_level_client_and_exec_through_proxy(proxy, image, sleeper):
    high = docker.DockerClient(base_url=proxy.base_url, timeout=30)
    try:
        out = high.containers.run(image, ["echo", "run"], remove=True, labels=LABELS)
        assert out == b"run\n"
        # exec_run uses an HTTP upgrade (101) and a raw two-way stream.
        result = high.containers.get(sleeper).exec_run(
            ["sh", "-c", "echo out; echo err >&2; exit 4"], demux=True
        )
        assert result.exit_code == 4
        assert result.output == (b"out\n", b"err\n")
    finally:
        high.close()


# -- fail --------------------------------------------------------------------------------


def test_fail_500_on_create_creates_nothing(proxy, client, real, image):
    rule = proxy.add_rule(FaultRule(op="create", action="fail", status=500))
    name = _unique_name()
    with pytest.raises(docker.errors.APIError) as info:
        client.create_container(image, ["true"], name=name, labels=LABELS)
    assert info.value.status_code == 500
    assert info.value.explanation == "injected fault"
    assert not isinstance(info.value, docker.errors.NotFound)
    assert real.containers(all=True, filters={"name": name}) == []
    assert rule.times == 0
    assert rule.hits == 1
    assert proxy.count("create") == 1


def test_fail_404_no_such_image_is_image_not_found(proxy, client, real, image):
    proxy.add_rule(FaultRule(op="create", action="fail", status=404, message="No such image: x"))
    name = _unique_name()
    with pytest.raises(docker.errors.ImageNotFound) as info:
        client.create_container(image, ["true"], name=name, labels=LABELS)
    assert info.value.status_code == 404
    assert info.value.explanation == "No such image: x"
    assert real.containers(all=True, filters={"name": name}) == []


def test_fail_404_other_message_is_not_found(proxy, client, image):
    proxy.add_rule(FaultRule(op="image_inspect", action="fail", status=404, message="gone"))
    with pytest.raises(docker.errors.NotFound) as info:
        client.inspect_image(image)
    assert not isinstance(info.value, docker.errors.ImageNotFound)
    assert client.inspect_image(image)["Id"]


def test_times_one_applies_once(proxy, client, real, image):
    proxy.add_rule(FaultRule(op="create", action="fail"))
    name = _unique_name()
    with pytest.raises(docker.errors.APIError):
        client.create_container(image, ["true"], name=name, labels=LABELS)
    cid = client.create_container(image, ["true"], name=name, labels=LABELS)["Id"]
    try:
        assert real.inspect_container(cid)["Name"] == "/" + name
        assert proxy.count("create") == 2
    finally:
        real.remove_container(cid, force=True)


def test_times_n_and_forever(proxy, client):
    proxy.add_rule(FaultRule(op="list", action="fail", status=503, times=2))
    for _ in range(2):
        with pytest.raises(docker.errors.APIError) as info:
            client.containers()
        assert info.value.status_code == 503
    client.containers()
    forever = proxy.add_rule(FaultRule(op="list", action="fail", times=None))
    for _ in range(3):
        with pytest.raises(docker.errors.APIError):
            client.containers()
    assert forever.hits == 3
    proxy.clear_rules()
    client.containers()


def test_match_predicate_and_rule_order(proxy, client, image, sleeper):
    proxy.add_rule(FaultRule(op="inspect", action="fail", status=409, match=lambda m, p: False))
    proxy.add_rule(FaultRule(op="any", action="fail", status=418, match=lambda m, p: sleeper in p))
    with pytest.raises(docker.errors.APIError) as info:
        client.inspect_container(sleeper)
    assert info.value.status_code == 418
    client.inspect_image(image)  # "any" but not matched


def test_probability_is_reproducible_with_seed(image):
    def pattern(seed: int) -> list[bool]:
        with FaultProxy(upstream=UPSTREAM, seed=seed) as p:
            p.add_rule(FaultRule(op="list", action="fail", times=None, probability=0.3))
            c = docker.APIClient(base_url=p.base_url, timeout=30)
            try:
                out = []
                for _ in range(30):
                    try:
                        c.containers(limit=1)
                        out.append(False)
                    except docker.errors.APIError:
                        out.append(True)
                return out
            finally:
                c.close()

    first = pattern(7)
    assert first == pattern(7)
    assert 0 < sum(first) < 30
    # The proxy draws exactly like random.Random(seed) does, one draw per matching call.
    rng = random.Random(7)
    assert first == [rng.random() < 0.3 for _ in range(30)]


# -- delay -------------------------------------------------------------------------------


def test_delay_delays_once(proxy, client, sleeper):
    proxy.add_rule(FaultRule(op="inspect", action="delay", delay_s=0.6))
    t0 = time.monotonic()
    assert client.inspect_container(sleeper)["State"]["Running"]
    assert time.monotonic() - t0 >= 0.6
    t0 = time.monotonic()
    client.inspect_container(sleeper)
    assert time.monotonic() - t0 < 0.5


def test_delay_longer_than_client_timeout_is_read_timeout(proxy, image):
    proxy.add_rule(FaultRule(op="image_inspect", action="delay", delay_s=1.5))
    short = docker.APIClient(base_url=proxy.base_url, timeout=0.3)
    try:
        with pytest.raises(requests.exceptions.ReadTimeout):
            short.inspect_image(image)
    finally:
        short.close()


# -- cut ---------------------------------------------------------------------------------


def test_cut_on_create_is_connection_error_and_creates_nothing(proxy, client, real, image):
    proxy.add_rule(FaultRule(op="create", action="cut"))
    name = _unique_name()
    with pytest.raises(requests.exceptions.ConnectionError):
        client.create_container(image, ["true"], name=name, labels=LABELS)
    assert real.containers(all=True, filters={"name": name}) == []
    assert proxy.count("create") == 1  # no retry by docker-py


def test_cut_during_wait_keeps_container_running(proxy, client, real, sleeper):
    proxy.add_rule(FaultRule(op="wait", action="cut", delay_s=0.5))
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        client.wait(sleeper)
    assert 0.5 <= time.monotonic() - t0 < 5
    assert _running(real, sleeper)
    assert proxy.active("wait") == 0


def test_cut_after_zero_on_wait_is_connection_error(proxy, client, real, sleeper):
    proxy.add_rule(FaultRule(op="wait", action="cut_after", delay_s=0.0))
    with pytest.raises(requests.exceptions.ConnectionError):
        client.wait(sleeper)
    assert _running(real, sleeper)


def test_cut_after_lets_fast_responses_through(proxy, client, sleeper):
    proxy.add_rule(FaultRule(op="inspect", action="cut_after", delay_s=2.0))
    assert client.inspect_container(sleeper)["Id"] == sleeper


def test_cut_active_cuts_blocked_wait(proxy, real, sleeper):
    waiter = docker.APIClient(base_url=proxy.base_url, timeout=None)
    outcome: list[BaseException | dict] = []

    def run() -> None:
        try:
            outcome.append(waiter.wait(sleeper))
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        eventually(lambda: proxy.active("wait") == 1)
        time.sleep(0.3)  # let the request reach the engine
        assert proxy.cut_active("inspect") == 0
        assert proxy.cut_active("wait") == 1
        thread.join(10)
        assert not thread.is_alive()
    finally:
        waiter.close()
    assert len(outcome) == 1
    assert isinstance(outcome[0], requests.exceptions.RequestException), outcome
    assert _running(real, sleeper)
    assert proxy.active("wait") == 0
    assert proxy.cut_active("wait") == 0


# -- concurrency and shutdown -----------------------------------------------------------


def test_many_concurrent_calls(proxy, client, sleeper):
    errors: list[BaseException] = []
    barrier = threading.Barrier(30)

    def work() -> None:
        try:
            barrier.wait(10)
            for _ in range(5):
                assert client.inspect_container(sleeper)["Id"] == sleeper
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert proxy.count("inspect") == 150


def test_stop_leaves_no_threads_and_no_socket(real, sleeper):
    before = set(threading.enumerate())
    p = FaultProxy(upstream=UPSTREAM).start()
    waiter = docker.APIClient(base_url=p.base_url, timeout=None)
    outcome: list[BaseException | dict] = []

    def run() -> None:
        try:
            outcome.append(waiter.wait(sleeper))
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=run)
    try:
        assert waiter.inspect_container(sleeper)["Id"] == sleeper
        thread.start()
        eventually(lambda: p.active("wait") == 1)
        assert any(t.name.startswith("faultproxy-") for t in threading.enumerate())
    finally:
        t0 = time.monotonic()
        p.stop()
        stop_s = time.monotonic() - t0
        thread.join(10)
        waiter.close()
    assert stop_s < 2
    assert isinstance(outcome[0], requests.exceptions.RequestException), outcome
    assert not os.path.exists(p.socket_path)
    assert set(threading.enumerate()) == before
    assert _running(real, sleeper)
    p.stop()  # idempotent


def test_context_manager_and_custom_socket_path(tmp_path):
    path = str(tmp_path / "proxy.sock")
    with FaultProxy(upstream=UPSTREAM, socket_path=path) as p:
        assert p.base_url == "unix://" + path
        c = docker.APIClient(base_url=p.base_url, timeout=30)
        try:
            assert c.ping()
        finally:
            c.close()
        with pytest.raises(RuntimeError):
            p.start()
    assert not os.path.exists(path)

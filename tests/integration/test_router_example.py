"""examples/router.py against a real redis-server and a real Docker engine.

The router runs as a subprocess, as an operator would run it: jobs go in through the Redis
list, outcomes come back through the Redis hash, SIGTERM stops it, and a second router
with the same instance id adopts the worker the first one left running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import dockyard
from conftest import free_port

REPO = Path(__file__).resolve().parents[2]
ROUTER = REPO / "examples" / "router.py"
QUEUE, OUTCOMES, RUNNING = "dockyard:jobs", "dockyard:outcomes", "dockyard:running"
# Generous bounds that only keep a broken run from hanging; nothing here measures speed.
WAIT_S = 90.0

pytestmark = [pytest.mark.redis, pytest.mark.docker]


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server on a free port, without persistence."""
    exe = shutil.which("redis-server")
    if exe is None:
        if _ci():
            pytest.fail("redis-server is not installed (required when CI=true)")
        pytest.skip("redis-server is not installed")
    port = free_port()
    log = (tmp_path / "redis.log").open("wb")
    proc = subprocess.Popen(
        [
            exe,
            *("--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(port=port, socket_connect_timeout=1)

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"redis-server exited: {(tmp_path / 'redis.log').read_text()}")
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        _wait_for("redis-server to answer", answers, timeout=20)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


class RouterProcess:
    def __init__(self, env: dict[str, str], url: str, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROUTER), "--redis-url", url],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT_S)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def start_router(
    redis_url: str, instance_id: str, test_image: str, tmp_path: Path
) -> Iterator[Callable[[str], RouterProcess]]:
    lib = str(Path(dockyard.__file__).resolve().parent.parent)  # the dockyard under test
    env = dict(os.environ)
    env.update(
        CASCADE_ROUTER_INSTANCE=instance_id,
        WORKER_IMAGE=test_image,
        WORKER_TIMEOUT_MS="120000",
        MAX_WORKERS="3",
        DOCKER_NETWORK="none",  # the jobs need no network
        PYTHONPATH=os.pathsep.join(filter(None, [lib, env.get("PYTHONPATH")])),
    )
    env.pop("SENTRY_DSN", None)
    started: list[RouterProcess] = []

    def start(name: str) -> RouterProcess:
        router = RouterProcess(env, redis_url, tmp_path / f"{name}.log")
        started.append(router)
        return router

    yield start
    for router in started:
        router.kill()


def _outcomes(client: redis.Redis) -> dict[str, dict[str, Any]]:
    return {key.decode(): json.loads(value) for key, value in client.hgetall(OUTCOMES).items()}


def _push(client: redis.Redis, job_id: str, command: list[str], **extra: Any) -> None:
    job = {"id": job_id, "type": "router-test", "command": command, **extra}
    client.rpush(QUEUE, json.dumps(job))


def test_router_runs_jobs_records_outcomes_and_hands_over_on_restart(
    start_router: Callable[[str], RouterProcess],
    redis_url: str,
    docker_client: Any,
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        first = start_router("first")
        _push(client, "ok-1", ["sh", "-c", "echo one"])
        _push(
            client,
            "ok-2",
            ["sh", "-c", 'test "$JOB_ID" = ok-2 && test "$JOB_TYPE" = router-test'],
            data={"n": 2},
        )
        _push(client, "fail-1", ["sh", "-c", "exit 4"])
        # Runs until the test creates /go inside it (docker exec), across a restart.
        _push(client, "hold-1", ["sh", "-c", "while [ ! -e /go ]; do sleep 0.1; done"])
        client.rpush(QUEUE, "{not json")

        def first_three() -> dict[str, dict[str, Any]] | None:
            found = _outcomes(client)
            return found if {"ok-1", "ok-2", "fail-1"} <= found.keys() else None

        outcomes = _wait_for("the first three outcomes", first_three)
        assert outcomes["ok-1"]["status"] == "succeeded", outcomes["ok-1"]
        assert outcomes["ok-1"]["exit_code"] == 0
        assert outcomes["ok-2"]["status"] == "succeeded", outcomes["ok-2"]
        assert outcomes["fail-1"]["status"] == "failed", outcomes["fail-1"]
        assert outcomes["fail-1"]["exit_code"] == 4
        assert outcomes["fail-1"]["description"].startswith("Worker crashed with exit code 4")
        rejected = _wait_for("the rejection", lambda: _outcomes(client).get("unparseable"))
        assert rejected["status"] == "rejected" and "not JSON" in rejected["error"]
        running = _wait_for("hold-1 to run", lambda: client.hget(RUNNING, "hold-1"))
        container_name = json.loads(running)["container_name"]
        assert "hold-1" not in _outcomes(client)

        assert first.stop() == 0, first.output()
        assert "detached from 1 running worker(s)" in first.output()
        container = docker_client.containers.get(container_name)
        assert container.status == "running"  # detached, not killed
        assert "hold-1" not in _outcomes(client)

        second = start_router("second")
        _wait_for(
            "the second router to adopt hold-1", lambda: "adopted 1 running" in second.output()
        )
        exit_code, output = container.exec_run(["touch", "/go"])
        assert exit_code == 0, output
        try:
            outcome = _wait_for("hold-1's outcome", lambda: _outcomes(client).get("hold-1"))
        except AssertionError as err:
            raise AssertionError(f"{err}; second router's log:\n{second.output()}") from None
        assert outcome["status"] == "succeeded", outcome
        assert client.hget(RUNNING, "hold-1") is None
        assert second.stop() == 0, second.output()
        assert len(_outcomes(client)) == 5
    finally:
        client.close()

"""examples/router.py against a real redis-server and a real Docker engine.

The router runs as a subprocess, as an operator would run it: jobs go in through the Redis
list, outcomes come back through the Redis hash, SIGTERM stops it, and a second router
with the same instance id adopts the worker the first one left running.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import dockyard
from support.hold import let_go
from support.router import OUTCOMES, QUEUE, RUNNING, WAIT_S, RouterProcess, push_job

pytestmark = [pytest.mark.redis, pytest.mark.docker]


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

    def start(name: str, **extra_env: str) -> RouterProcess:
        router = RouterProcess({**env, **extra_env}, redis_url, tmp_path / f"{name}.log")
        started.append(router)
        return router

    yield start
    for router in started:
        router.kill()


def _outcomes(client: redis.Redis) -> dict[str, dict[str, Any]]:
    return {key.decode(): json.loads(value) for key, value in client.hgetall(OUTCOMES).items()}


def test_router_runs_jobs_records_outcomes_and_hands_over_on_restart(
    start_router: Callable[..., RouterProcess],
    redis_url: str,
    docker_client: Any,
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        first = start_router("first")
        push_job(client, "ok-1", ["sh", "-c", "echo one"])
        push_job(
            client,
            "ok-2",
            ["sh", "-c", 'test "$JOB_ID" = ok-2 && test "$JOB_TYPE" = router-test'],
            data={"n": 2},
        )
        push_job(client, "fail-1", ["sh", "-c", "exit 4"])
        # Runs until the test creates /go inside it (docker exec), across a restart.
        push_job(client, "hold-1", ["sh", "-c", "while [ ! -e /go ]; do sleep 0.1; done"])
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
        let_go(container)
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


def test_router_keeps_each_jobs_last_output_lines_masked_next_to_its_outcome(
    start_router: Callable[..., RouterProcess], redis_url: str
) -> None:
    secret = "router-output-secret-5c1d"
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    def output_of(job_id: str, last: str) -> list[dict[str, str]]:
        record = json.loads(_wait_for(f"{job_id}'s outcome", lambda: client.hget(OUTCOMES, job_id)))
        assert record["status"] == "succeeded", record
        assert record["output_key"] == f"dockyard:output:{job_id}"

        def ended() -> list[dict[str, str]] | None:
            lines = [json.loads(item) for item in client.lrange(record["output_key"], 0, -1)]
            return lines if last in {entry["line"] for entry in lines} else None

        found: list[dict[str, str]] = _wait_for(f"{job_id}'s line {last!r}", ended)
        return found

    try:
        router = start_router("output", ROUTER_OUTPUT_LINES="100")
        # Lines of one stream keep their order; the engine may reorder across streams.
        script = (
            'i=1; while [ $i -le 300 ]; do echo "out $i"; i=$((i+1)); done; '
            f'echo "token {secret}"; echo last'
        )
        push_job(client, "chatty", ["sh", "-c", script], data={"token": secret})
        push_job(client, "both", ["sh", "-c", "echo to-out; echo to-err >&2; echo end"])

        chatty = output_of("chatty", "last")
        assert chatty == [
            *({"stream": "stdout", "line": f"out {i}"} for i in range(203, 301)),
            {"stream": "stdout", "line": "token ***"},
            {"stream": "stdout", "line": "last"},
        ]  # capped to the last 100, masked
        assert secret not in json.dumps(chatty)
        output_of("both", "end")
        both = output_of("both", "to-err")  # by now "end" is in too: the list only grows
        assert sorted(both, key=lambda e: e["line"]) == [
            {"stream": "stdout", "line": "end"},
            {"stream": "stderr", "line": "to-err"},
            {"stream": "stdout", "line": "to-out"},
        ]
        assert router.stop() == 0, router.output()
    finally:
        client.close()


def test_router_keeps_a_jobs_output_across_a_restart_in_order_none_twice(
    start_router: Callable[..., RouterProcess], redis_url: str, docker_client: Any
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    key = "dockyard:output:across"

    def stored() -> list[tuple[str, str]]:
        return [
            (entry["stream"], entry["line"]) for entry in map(json.loads, client.lrange(key, 0, -1))
        ]

    def holding(*lines: str) -> Callable[[], list[tuple[str, str]] | None]:
        def check() -> list[tuple[str, str]] | None:
            found = stored()
            return found if set(lines) <= {line for _, line in found} else None

        return check

    # Prints, waits for /go (created by the test through docker exec), prints again.
    script = (
        'i=1; while [ $i -le 50 ]; do echo "before $i"; i=$((i+1)); done; '
        "echo err-before >&2; "
        "while [ ! -e /go ]; do sleep 0.1; done; "
        'i=1; while [ $i -le 50 ]; do echo "after $i"; i=$((i+1)); done; '
        "echo err-after >&2"
    )
    try:
        first = start_router("first")
        push_job(client, "across", ["sh", "-c", script])
        before = _wait_for("the lines before the restart", holding("before 50", "err-before"))
        running = _wait_for("the job to run", lambda: client.hget(RUNNING, "across"))
        container = docker_client.containers.get(json.loads(running)["container_name"])
        assert first.stop() == 0, first.output()

        second = start_router("second")
        _wait_for("the adoption", lambda: "adopted 1 running" in second.output())
        assert stored() == before  # the adopting router's started hook kept them
        let_go(container)
        outcome = json.loads(_wait_for("the outcome", lambda: client.hget(OUTCOMES, "across")))
        assert outcome["status"] == "succeeded", outcome
        lines = _wait_for("the lines after the restart", holding("after 50", "err-after"))
        assert second.stop() == 0, second.output()
    finally:
        client.close()
    assert lines[: len(before)] == before
    assert [line for stream, line in lines if stream == "stdout"] == [
        *(f"before {i}" for i in range(1, 51)),
        *(f"after {i}" for i in range(1, 51)),
    ]
    assert [line for stream, line in lines if stream == "stderr"] == ["err-before", "err-after"]

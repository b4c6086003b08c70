"""Automatic job data offload to a real redis-server, as the original router does it.

Without a `job_data_store`, a payload over 96 KiB goes to Redis at `config.redis_url`
under `cascade:jobdata:<job id>` with a one-hour TTL; the worker gets the key as
`JOB_DATA_REDIS_KEY` and no `JOB_DATA`. `dockyard.worker.read_job_data()` reads it back.
"""

from __future__ import annotations

import json
import socket
import sys
import uuid
from collections.abc import Callable
from typing import Any

import docker
import pytest
import redis

from dockyard import InvalidJobError, JobDataOffloadError, WorkerJob
from dockyard.worker import read_job_data
from support.sentry import CapturedEvents

pytestmark = pytest.mark.redis

KIB = 1024


def _payload(size: int, marker: str) -> dict[str, Any]:
    return {"projectId": "proj-off", "marker": marker, "blob": "y" * size}


def _closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens there any more


def _containers(client: docker.DockerClient, instance: str) -> list[Any]:
    label = f"cascade.router.instance={instance}"
    return client.containers.list(all=True, filters={"label": label})


def test_a_200_kib_payload_is_offloaded_with_the_originals_key_and_ttl(
    make_manager: Callable[..., Any],
    redis_url: str,
    redis_client: redis.Redis,
    instance_id: str,
) -> None:
    job_id = f"{instance_id}-off"
    key = f"cascade:jobdata:{job_id}"
    data = _payload(200 * KIB, uuid.uuid4().hex)
    check = (
        'test -n "$JOB_DATA_REDIS_KEY" && test -z "${JOB_DATA+set}" '
        f'&& test "$JOB_DATA_REDIS_KEY" = "{key}"'
    )
    manager = make_manager(redis_url=redis_url)
    manager.spawn_worker(WorkerJob(job_id, "trello", data, command=["sh", "-c", check]))
    outcome = manager.wait_for_worker(job_id, timeout=60)
    assert outcome.status == "succeeded", outcome.describe()
    assert json.loads(redis_client.get(key) or b"null") == data
    assert 3590 < redis_client.ttl(key) <= 3600


def test_the_worker_helper_reads_the_key_once_and_deletes_it(
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    data = _payload(150 * KIB, "helper")
    redis_client.set("cascade:jobdata:j-helper", json.dumps(data), ex=3600)
    env = {"JOB_DATA_REDIS_KEY": "cascade:jobdata:j-helper", "REDIS_URL": redis_url}
    assert read_job_data(env) == data
    assert redis_client.exists("cascade:jobdata:j-helper") == 0
    with pytest.raises(LookupError, match="not found"):
        read_job_data(env)


def test_the_worker_helper_reads_inline_data_and_says_when_there_is_none() -> None:
    assert read_job_data({"JOB_DATA": '{"a": [1, "é"]}'}) == {"a": [1, "é"]}
    with pytest.raises(LookupError):
        read_job_data({})


def test_the_worker_helper_names_the_extra_without_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(RuntimeError, match=r"dockyard\[redis\]"):
        read_job_data({"JOB_DATA_REDIS_KEY": "k", "REDIS_URL": "redis://localhost:6379"})


def test_small_payloads_stay_inline(
    make_manager: Callable[..., Any],
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    manager = make_manager(redis_url=redis_url)
    check = 'test -n "$JOB_DATA" && test -z "${JOB_DATA_REDIS_KEY+set}"'
    manager.spawn_worker(WorkerJob("small", "trello", {"a": 1}, command=["sh", "-c", check]))
    assert manager.wait_for_worker("small", timeout=60).status == "succeeded"
    assert redis_client.keys("cascade:jobdata:*") == []


def test_a_failed_write_is_reported_and_no_container_is_made(
    make_manager: Callable[..., Any],
    docker_client: docker.DockerClient,
    instance_id: str,
    sentry_events: CapturedEvents,
) -> None:
    marker = uuid.uuid4().hex
    manager = make_manager(redis_url=_closed_port_url(), max_workers=1)
    with pytest.raises(JobDataOffloadError, match="could not offload"):
        manager.spawn_worker(WorkerJob("off-fail", "trello", _payload(200 * KIB, marker)))
    assert _containers(docker_client, instance_id) == []
    assert manager.get_active_worker_count() == 0
    (event,) = sentry_events.wait_for("job_data_offload_write")
    assert event["extra"]["jobId"] == "off-fail"
    assert marker not in json.dumps(list(sentry_events), default=str)
    # The slot and the id are free again.
    manager.spawn_worker(WorkerJob("off-fail", "trello", {}, command=["true"]), slot_timeout=1)
    assert manager.wait_for_worker("off-fail", timeout=30).status == "succeeded"


def test_without_the_redis_package_a_large_payload_names_the_extra(
    make_manager: Callable[..., Any],
    docker_client: docker.DockerClient,
    instance_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager = make_manager(redis_url="redis://127.0.0.1:6379/0")
    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` fail
    with pytest.raises(InvalidJobError, match=r"dockyard\[redis\]"):
        manager.spawn_worker(WorkerJob("no-redis", "trello", _payload(200 * KIB, "x")))
    assert _containers(docker_client, instance_id) == []
    assert manager.get_active_worker_count() == 0


def test_the_worker_reads_the_offloaded_payload_through_the_key(
    make_manager: Callable[..., Any],
    redis_url: str,
    redis_client: redis.Redis,
    instance_id: str,
) -> None:
    """The test image speaks RESP with busybox `nc`: GET the key, check the marker, DEL it."""
    job_id = f"{instance_id}-reader"
    marker = uuid.uuid4().hex
    script = (
        'hp="${REDIS_URL#redis://}"; hp="${hp%%/*}"; '
        'printf \'GET %s\\r\\nDEL %s\\r\\nQUIT\\r\\n\' "$JOB_DATA_REDIS_KEY" "$JOB_DATA_REDIS_KEY" '
        f'| nc -w 5 "${{hp%:*}}" "${{hp##*:}}" | grep -q {marker} '
        '&& test -z "${JOB_DATA+set}"'
    )
    # The host's network: the redis-server listens on the host's 127.0.0.1 only.
    manager = make_manager(redis_url=redis_url, docker_network="host")
    manager.spawn_worker(
        WorkerJob(job_id, "trello", _payload(200 * KIB, marker), command=["sh", "-c", script])
    )
    outcome = manager.wait_for_worker(job_id, timeout=60)
    assert outcome.status == "succeeded", outcome.describe()
    assert redis_client.exists(f"cascade:jobdata:{job_id}") == 0  # read once, then deleted

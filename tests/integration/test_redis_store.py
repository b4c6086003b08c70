"""`RedisJobDataStore` against a real `redis-server`, and a large payload end to end (spec §7).

The server is started by the ``redis_url`` fixture on a free port in a temporary directory,
without persistence, and stopped at teardown. Without the binary the tests are skipped,
unless ``CI=true`` (``.ci/run`` installs it), where that is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
import redis

import dockyard
from dockyard import ConfigError, ContainerManager, RedisJobDataStore, RouterConfig, WorkerJob
from dockyard._environment import EnvSources, build_worker_env
from dockyard._job_data import JOB_DATA_INLINE_LIMIT
from dockyard._jobs import resolve_job_fields
from dockyard._sentry import Reporter

pytestmark = pytest.mark.redis

# --------------------------------------------------------------------------- the store


def test_put_stores_the_payload_under_its_key_with_the_ttl(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store = RedisJobDataStore(redis_url, ttl_s=120)
    payload = b'{"x": "\xc3\xa9"}\x00\xff'
    try:
        key = store.put("coalesce:p:MNG-1", payload)
    finally:
        store.close()
    assert key == "cascade:jobdata:coalesce:p:MNG-1"
    assert redis_client.get(key) == payload
    assert 0 < redis_client.ttl(key) <= 120


def test_default_ttl_is_an_hour_and_a_second_put_replaces_and_rearms(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store = RedisJobDataStore(redis_url, key_prefix="jobs:")
    try:
        key = store.put("j1", b"first")
        redis_client.expire(key, 5)
        assert store.put("j1", b"second") == key == "jobs:j1"
    finally:
        store.close()
    assert store.ttl_s == 3600
    assert redis_client.get(key) == b"second"
    assert 3590 < redis_client.ttl(key) <= 3600


def test_a_ready_client_is_used_and_stays_the_callers(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store = RedisJobDataStore(redis_client, ttl_s=0.2)  # rounded up to Redis' whole seconds
    assert store.ttl_s == 1
    key = store.put("j2", b"payload")
    store.close()
    assert redis_client.get(key) == b"payload"  # the caller's client still works
    assert 0 < redis_client.pttl(key) <= 1000


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ((("redis://localhost:6379",), {"ttl_s": 0}), "ttl_s"),
        ((("redis://localhost:6379",), {"ttl_s": float("inf")}), "ttl_s"),
        ((("redis://localhost:6379",), {"ttl_s": "60"}), "ttl_s"),
        ((("",), {}), "url_or_client"),
        ((("localhost:6379",), {}), "url_or_client"),
        (((object(),), {}), "url_or_client"),
    ],
)
def test_bad_arguments_raise_config_error(arguments: tuple[Any, Any], name: str) -> None:
    args, kwargs = arguments
    with pytest.raises(ConfigError) as raised:
        RedisJobDataStore(*args, **kwargs)
    assert raised.value.name == name


def test_without_the_redis_package_the_store_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` fail
    with pytest.raises(ConfigError) as raised:
        RedisJobDataStore("redis://localhost:6379")
    assert raised.value.name == "redis"
    assert "dockyard[redis]" in str(raised.value)


def test_importing_dockyard_does_not_import_redis() -> None:
    lib = str(Path(dockyard.__file__).resolve().parents[1])
    code = "import sys, dockyard; assert 'redis' not in sys.modules, 'redis imported'"
    env = {**os.environ, "PYTHONPATH": lib + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_the_url_never_shows_in_the_repr() -> None:
    store = RedisJobDataStore("redis://:hunter2-pw@localhost:6379/0")
    try:
        assert "hunter2" not in repr(store)
    finally:
        store.close()


# --------------------------------------------------------------------------- the offload


def test_payloads_over_96_kib_go_to_the_store_and_smaller_ones_inline(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store = RedisJobDataStore(redis_url)
    sources = EnvSources(
        config=RouterConfig(router_instance_id="unit"),
        router_environ={},
        credentials=None,
        job_data_store=store,
        reporter=Reporter(),
    )
    overhead = len(json.dumps({"b": ""}))
    try:
        at_limit = resolve_job_fields(
            WorkerJob("inline", "t", {"b": "x" * (JOB_DATA_INLINE_LIMIT - overhead)}), None
        )
        env = build_worker_env(at_limit, sources, snapshot_enabled=False).reveal()
        assert len(env["JOB_DATA"].encode()) == JOB_DATA_INLINE_LIMIT
        assert "JOB_DATA_REDIS_KEY" not in env
        assert redis_client.dbsize() == 0

        over = resolve_job_fields(
            WorkerJob("offload", "t", {"b": "x" * (JOB_DATA_INLINE_LIMIT - overhead + 1)}), None
        )
        env = build_worker_env(over, sources, snapshot_enabled=False).reveal()
    finally:
        store.close()
    assert "JOB_DATA" not in env
    assert env["JOB_DATA_REDIS_KEY"] == "cascade:jobdata:offload"
    assert redis_client.get(env["JOB_DATA_REDIS_KEY"]) == over.job_data_json.encode()


def test_a_large_payload_reaches_the_worker_through_redis(
    redis_url: str,
    redis_client: redis.Redis,
    docker_client: docker.DockerClient,
    test_image: str,
    instance_id: str,
    snapshot_image_prefix: str,
) -> None:
    job_id = f"{instance_id}-big"
    key = f"cascade:jobdata:{job_id}"
    data = {
        "workItemId": "card-big",
        "projectId": "proj-big",
        "blob": "ünïcødé ✓ " * (100 * 1024 // 10),
        "marker": uuid.uuid4().hex,
    }
    expected = json.dumps(data, ensure_ascii=False).encode("utf-8")
    assert len(expected) > JOB_DATA_INLINE_LIMIT
    # The worker gets the key (exactly this one) and no inline payload.
    check = (
        f'test -n "$JOB_DATA_REDIS_KEY" -a -z "$JOB_DATA" && test "$JOB_DATA_REDIS_KEY" = "{key}"'
    )
    config = RouterConfig(
        worker_image=test_image,
        router_instance_id=instance_id,
        container_name_prefix=f"{instance_id}-",
        snapshot_image_prefix=snapshot_image_prefix,
        snapshot_enabled=True,
        stop_grace_s=1,
        worker_memory_mb=64,
        docker_network="none",  # the worker needs no network
    )
    store = RedisJobDataStore(redis_url, ttl_s=600)
    try:
        with ContainerManager(config, job_data_store=store) as manager:
            worker = manager.spawn_worker(
                WorkerJob(job_id, "trello", data, command=["sh", "-c", check])
            )
            outcome = manager.wait_for_worker(worker.job_id, timeout=60)
            snapshot = manager.snapshots.get("proj-big", "card-big")
    finally:
        store.close()
    assert outcome.status == "succeeded", outcome
    assert redis_client.get(key) == expected
    assert 0 < redis_client.ttl(key) <= 600

    # The snapshot of that run keeps neither the key nor the payload.
    assert snapshot is not None
    env = docker_client.api.inspect_image(snapshot.image_name)["Config"]["Env"]
    assert "JOB_DATA_REDIS_KEY=" in env
    assert not any(item.startswith("JOB_DATA=") for item in env)
    assert data["marker"] not in json.dumps(docker_client.api.inspect_image(snapshot.image_name))

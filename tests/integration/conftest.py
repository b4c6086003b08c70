"""Fixtures of the integration tests that need a helper server: a private redis-server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import redis

from support.servers import missing_tool, start_redis, stop_process


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh redis-server (no persistence) for the test module; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing_tool("redis-server is not installed", "it")
    process, port = start_redis(binary, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(process)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of `redis_url`, its database emptied first."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()

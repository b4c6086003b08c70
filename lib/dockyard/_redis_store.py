"""A Redis-backed `job_data_store`: payloads too large for the environment, one key per job.

Needs the optional extra `dockyard[redis]`; `redis` is imported only when a store is built,
so the rest of dockyard works without it.
"""

from __future__ import annotations

import math
from typing import Any

from ._errors import ConfigError

__all__ = ["RedisJobDataStore"]

DEFAULT_TTL_S = 3600.0
DEFAULT_KEY_PREFIX = "cascade:jobdata:"  # the original router's key


class RedisJobDataStore:
    """Writes each oversized job payload to Redis under `key_prefix + job_id`.

    The key expires after `ttl_s` seconds (rounded up to whole seconds, Redis' `EX`
    unit), long enough for the worker to read it at start. `url_or_client` is a Redis URL
    (`redis://host:6379/0`; the store then owns its connection pool, see `close()`) or a
    ready `redis.Redis` client, which stays the caller's.

    Pass it as `ContainerManager(..., job_data_store=RedisJobDataStore(url))`; the worker
    gets the key as `JOB_DATA_REDIS_KEY` instead of `JOB_DATA`.
    """

    def __init__(
        self,
        url_or_client: str | Any,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        key_prefix: str = DEFAULT_KEY_PREFIX,
    ) -> None:
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
            raise ConfigError("ttl_s", f"must be a number of seconds, got {ttl_s!r}")
        if not math.isfinite(ttl_s) or ttl_s <= 0:
            raise ConfigError("ttl_s", f"must be a positive number of seconds, got {ttl_s!r}")
        if not isinstance(key_prefix, str):
            raise ConfigError("key_prefix", f"must be a string, got {type(key_prefix).__name__}")
        try:
            import redis  # noqa: PLC0415  (optional extra: imported only when used)
        except ImportError:
            raise ConfigError(
                "redis",
                "RedisJobDataStore needs the redis package: pip install 'dockyard[redis]'",
            ) from None
        self._ttl_s = max(1, math.ceil(ttl_s))
        self._key_prefix = key_prefix
        self._owns_client = isinstance(url_or_client, str)
        if isinstance(url_or_client, str):
            if not url_or_client.strip():
                raise ConfigError("url_or_client", "the Redis URL is empty")
            try:
                self._client: Any = redis.Redis.from_url(url_or_client)
            except ValueError as err:
                raise ConfigError("url_or_client", f"not a Redis URL: {err}") from None
        elif callable(getattr(url_or_client, "set", None)):
            self._client = url_or_client
        else:
            raise ConfigError(
                "url_or_client",
                f"expected a Redis URL or client, got {type(url_or_client).__name__}",
            )

    @property
    def ttl_s(self) -> int:
        """The expiry given to every key, in whole seconds."""
        return self._ttl_s

    def key_for(self, job_id: str) -> str:
        """The Redis key `put` uses for `job_id`."""
        return f"{self._key_prefix}{job_id}"

    def put(self, job_id: str, payload: bytes) -> str:
        """Store `payload` for `job_id` with the TTL and return its key.

        A later put for the same job id replaces the payload and restarts the TTL.
        Redis errors propagate (the spawn that needed the store then fails).
        """
        key = self.key_for(job_id)
        self._client.set(key, bytes(payload), ex=self._ttl_s)
        return key

    def close(self) -> None:
        """Close the connection pool when the store created the client from a URL."""
        if self._owns_client:
            self._client.close()

    def __repr__(self) -> str:
        # The URL may carry a password: never show it.
        return f"RedisJobDataStore(key_prefix={self._key_prefix!r}, ttl_s={self._ttl_s})"

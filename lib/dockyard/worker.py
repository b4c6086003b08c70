"""Worker side: read this job's data, inline (`JOB_DATA`) or offloaded to Redis.

For Python workers started by dockyard (or by the original router). Only the standard
library, plus the `redis` package when the payload was offloaded (`dockyard[redis]`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["read_job_data"]

log = logging.getLogger("dockyard.worker")


def read_job_data(environ: Mapping[str, str] | None = None, *, redis_url: str | None = None) -> Any:
    """The job's payload, decoded from JSON.

    `JOB_DATA_REDIS_KEY` set: the payload is read from Redis at `redis_url` (default
    `REDIS_URL` of the environment) and the key deleted (best effort: its TTL reaps it
    otherwise). Else `JOB_DATA`. Raises `LookupError` when neither is set or the key is
    gone (expired, or read already), and `RuntimeError` when Redis cannot be reached or
    the redis package is missing. Read it early: workers commonly scrub `REDIS_URL`.
    """
    env = os.environ if environ is None else environ
    key = env.get("JOB_DATA_REDIS_KEY")
    if key:
        return json.loads(_take(key, redis_url or env.get("REDIS_URL") or ""))
    inline = env.get("JOB_DATA")
    if inline is None:
        raise LookupError("neither JOB_DATA nor JOB_DATA_REDIS_KEY is set")
    return json.loads(inline)


def _take(key: str, url: str) -> bytes:
    """GET then DEL one key."""
    try:
        import redis  # noqa: PLC0415  (optional: only offloaded payloads need it)
    except ImportError:
        raise RuntimeError(
            "the job data was offloaded to Redis, which needs the redis package: "
            "pip install 'dockyard[redis]'"
        ) from None
    if not url:
        raise RuntimeError(f"JOB_DATA_REDIS_KEY is {key!r} but no REDIS_URL is set")
    client: Any = redis.Redis.from_url(url)
    try:
        try:
            value = client.get(key)
        except redis.RedisError as err:
            raise RuntimeError(
                f"could not read the offloaded job data (key {key}): {err}"
            ) from None
        if value is None:
            raise LookupError(f"offloaded job data key {key} not found (expired or never written)")
        try:
            client.delete(key)
        except redis.RedisError as err:
            log.warning(
                "could not delete the offloaded job data key; its TTL reaps it",
                extra={"key": key, "error": str(err)},
            )
        return bytes(value)
    finally:
        client.close()

"""Job data: inline in the environment, or offloaded to a store when too large for it.

By default the store is Redis at `redis_url`, and the worker is given the key.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

from ._errors import InvalidJobError, JobDataOffloadError
from ._redis_store import DEFAULT_KEY_PREFIX, DEFAULT_TTL_S, RedisJobDataStore
from ._secrets import Secret

if TYPE_CHECKING:
    from ._jobs import JobFields
    from ._sentry import Reporter

__all__ = [
    "JOB_DATA_INLINE_LIMIT",
    "JobDataStore",
    "RedisOffloadStore",
    "check_job_data_size",
    "job_data_env",
]


job_data_log = logging.getLogger("dockyard.job_data")

JOB_DATA_INLINE_LIMIT = 96 * 1024  # headroom under the kernel's 128 KiB per string


class JobDataStore(Protocol):
    """Where payloads too large for the environment go (`job_data_store=`)."""

    def put(self, job_id: str, payload: bytes) -> str:
        """Store a job's payload; returns the key the worker reads it back with."""
        ...


class RedisOffloadStore:
    """The default store: a `RedisJobDataStore` at `redis_url`, connected on first use.

    A router whose payloads all fit the environment never needs the `redis` package.
    """

    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._lock = threading.Lock()
        self._store: RedisJobDataStore | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisOffloadStore(key_prefix={DEFAULT_KEY_PREFIX!r}, ttl_s={DEFAULT_TTL_S:g})"

    def check_available(self) -> None:
        """Raise `InvalidJobError` when an offload could not even be tried."""
        try:
            import redis  # noqa: F401, PLC0415  (optional extra: only large payloads need it)
        except ImportError:
            raise InvalidJobError(
                f"job data over the {JOB_DATA_INLINE_LIMIT}-byte inline limit goes to Redis, "
                "which needs the redis package: pip install 'dockyard[redis]' "
                "(or pass a job_data_store)"
            ) from None
        if not self._redis_url.strip():
            raise InvalidJobError(
                f"job data over the {JOB_DATA_INLINE_LIMIT}-byte inline limit goes to Redis, "
                "but redis_url (REDIS_URL) is empty"
            )

    def put(self, job_id: str, payload: bytes) -> str:
        with self._lock:
            if self._closed:
                raise RuntimeError("the job data store is closed")
            if self._store is None:
                self._store = RedisJobDataStore(self._redis_url)  # the original's key and TTL
            store = self._store
        return store.put(job_id, payload)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            store, self._store = self._store, None
        if store is not None:
            store.close()


def check_job_data_size(fields: JobFields, store: JobDataStore | None) -> None:
    """Refuse, before any Docker call or slot wait, a large payload that cannot be offloaded."""
    size = len(fields.job_data_json.encode("utf-8"))
    if size <= JOB_DATA_INLINE_LIMIT:
        return
    if store is None:
        raise InvalidJobError(
            f"job data is {size} bytes, over the {JOB_DATA_INLINE_LIMIT}-byte "
            "inline limit, and no job_data_store is configured"
        )
    if isinstance(store, RedisOffloadStore):
        store.check_available()


def job_data_env(
    fields: JobFields, store: JobDataStore | None, reporter: Reporter
) -> dict[str, str | Secret]:
    """`JOB_DATA`, or `JOB_DATA_REDIS_KEY` after writing a large payload to the store.

    A failed write is reported (`job_data_offload_write`) and raised as
    `JobDataOffloadError`: a container without its job data would only crash.
    """
    check_job_data_size(fields, store)
    payload = fields.job_data_json.encode("utf-8")
    if len(payload) <= JOB_DATA_INLINE_LIMIT or store is None:
        return {"JOB_DATA": Secret(fields.job_data_json)}
    try:
        return {"JOB_DATA_REDIS_KEY": store.put(fields.job_id, payload)}
    except Exception as err:  # a host hook (the store): any failure
        message = f"could not offload the job data of job {fields.job_id!r}: {_describe(err)}"
    # Reported and raised as fresh errors: the failed call's frames hold the payload, and
    # Sentry sends frame locals.
    job_data_log.warning("job data offload failed", extra={"job_id": fields.job_id})
    reporter.report(
        JobDataOffloadError(message),
        "job_data_offload_write",
        tags={"jobType": fields.job_type},
        extras={"jobId": fields.job_id},
    )
    raise JobDataOffloadError(message)


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split())[:300]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__

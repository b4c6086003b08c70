"""The worker's environment: what a container is given, and which of it is secret.

- the environment itself: job data, service URLs, credentials, pass-throughs
  (`build_worker_env`);
- job data too large for the environment: offloaded to a store, by default Redis at
  `redis_url`, and the worker given its key;
- secrets: `Secret` values never show in a repr, log or event, and one `Masker` hides every
  known secret value (and its quoted forms) wherever text leaves dockyard.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, quote_plus

from cachetools import LRUCache

from ._config import RouterConfig
from ._errors import InvalidJobError, JobDataOffloadError
from ._jobs import JobFields
from ._redis_store import DEFAULT_KEY_PREFIX, DEFAULT_TTL_S, RedisJobDataStore

if TYPE_CHECKING:
    from ._sentry import Reporter

__all__ = [
    "JOB_DATA_INLINE_LIMIT",
    "MASK",
    "SCRUBBED_ENV_KEYS",
    "CredentialProvider",
    "JobDataStore",
    "Masker",
    "RedisOffloadStore",
    "Secret",
    "SecretBook",
    "SecretEnv",
    "build_worker_env",
    "check_job_data",
    "check_job_data_size",
    "job_data_env",
    "job_data_secrets",
    "reveal",
    "router_secret_values",
    "with_snapshot_reuse",
    "worker_masker",
    "worker_secret_values",
]


log = logging.getLogger("dockyard.environment")

# Copied from the router's environment only when set there.
PASS_THROUGH_KEYS = (
    "DATABASE_SSL",
    "DATABASE_CA_CERT",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "SENTRY_DSN",
    "SENTRY_ENVIRONMENT",
    "SENTRY_RELEASE",
    "CASCADE_DASHBOARD_URL",
)
# Router variables with a default when the router does not set them.
DEFAULTED_KEYS = (
    ("CASCADE_POSTGRES_HOST", "postgres"),
    ("CASCADE_POSTGRES_PORT", "5432"),
    ("DATABASE_URL", ""),
    ("LOG_LEVEL", "info"),
)
# Blanked in every snapshot image (plus every name listed in CASCADE_CREDENTIAL_KEYS).
SCRUBBED_ENV_KEYS = (
    "JOB_DATA",
    "JOB_DATA_REDIS_KEY",
    "JOB_ID",
    "JOB_TYPE",
    "DATABASE_URL",
    "DATABASE_SSL",
    "DATABASE_CA_CERT",
    "REDIS_URL",
    "CREDENTIAL_MASTER_KEY",
    "CASCADE_CREDENTIAL_KEYS",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CASCADE_POSTGRES_HOST",
    "CASCADE_POSTGRES_PORT",
    "CASCADE_SNAPSHOT_REUSE",
    "CASCADE_SNAPSHOT_ENABLED",
)
NEVER_PASSED = frozenset({"CREDENTIAL_MASTER_KEY"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class CredentialProvider(Protocol):
    """The host's credential lookup (`credentials=` of `ContainerManager`)."""

    def get_project_credentials(self, project_id: str) -> Mapping[str, str]:
        """The project's credentials, passed to its workers as environment variables."""
        ...


@dataclass(frozen=True)
class EnvSources:
    """What an environment is built from besides the job itself."""

    config: RouterConfig
    router_environ: Mapping[str, str] = field(repr=False)  # the router's secrets among them
    credentials: CredentialProvider | None
    job_data_store: JobDataStore | None
    reporter: Reporter


def build_worker_env(
    fields: JobFields, sources: EnvSources, *, snapshot_enabled: bool
) -> SecretEnv:
    """The environment of a fresh (not reused) worker; raises `InvalidJobError` on bad input.

    Every value is a `Secret` from here to the create call. Large payloads are written to
    the job data store last, once every check has passed (a refused job leaves no key
    behind), so call it once per spawn.
    """
    env: dict[str, str | Secret] = {"JOB_ID": fields.job_id, "JOB_TYPE": fields.job_type}
    env["REDIS_URL"] = sources.config.redis_url
    for key, default in DEFAULTED_KEYS:
        env[key] = Secret(sources.router_environ.get(key, default))
    if snapshot_enabled:
        env["CASCADE_SNAPSHOT_ENABLED"] = "true"
    env.update(_credentials(fields, sources))
    for key in PASS_THROUGH_KEYS:
        passed = sources.router_environ.get(key)
        if passed is not None:
            env[key] = Secret(passed)
    for key in NEVER_PASSED:
        env.pop(key, None)
    for key, value in env.items():
        if "\x00" in reveal(value):
            raise InvalidJobError(f"environment value of {key} contains a NUL character")
    # json.dumps escapes NUL: the payload needs no such check. Written last: a refused job
    # leaves no key behind.
    env.update(job_data_env(fields, sources.job_data_store, sources.reporter))
    return SecretEnv(env)


def worker_masker(env: Mapping[str, str | Secret], fields: JobFields | None = None) -> Masker:
    """What a worker's output must not show: its secret env values and its job data."""
    job_data: list[str] = []
    if fields is not None:
        public = (fields.job_id, fields.project_id, fields.work_item_id, fields.agent_type)
        job_data = job_data_secrets(fields.job.data, fields.job_data_json, public)
    return Masker.of(worker_secret_values(env), job_data)


def check_job_data(fields: JobFields, sources: EnvSources) -> None:
    """Refuse a payload too large for the environment when there is no store to take it.

    Cheap and free of side effects, so a spawn calls it before waiting for a slot.
    """
    check_job_data_size(fields, sources.job_data_store)


def with_snapshot_reuse(env: Mapping[str, str | Secret]) -> SecretEnv:
    """The same environment, telling the worker it starts from a snapshot."""
    return SecretEnv({**env, "CASCADE_SNAPSHOT_REUSE": "true"})


def router_environ() -> dict[str, str]:
    """The router's own environment, read when a manager is created."""
    return dict(os.environ)


def _credentials(fields: JobFields, sources: EnvSources) -> dict[str, str | Secret]:
    if sources.credentials is None or fields.project_id is None:
        return {}
    try:
        raw = dict(sources.credentials.get_project_credentials(fields.project_id))
    except Exception as err:  # a host hook: any failure
        # Without credentials the worker can still run (and report its own failure).
        log.warning(
            "credential resolution failed; starting without credentials",
            extra={"job_id": fields.job_id, "project_id": fields.project_id},
        )
        sources.reporter.report(
            err,
            "credential_resolution",
            level="warning",
            tags={"jobType": fields.job_type},
            extras={"jobId": fields.job_id, "projectId": fields.project_id},
        )
        return {}
    accepted: dict[str, str | Secret] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            log.warning(
                "skipping a credential with an invalid name", extra={"job_id": fields.job_id}
            )
            continue
        if key in NEVER_PASSED or key in SCRUBBED_ENV_KEYS:
            log.warning(
                "skipping a credential that would shadow a reserved variable",
                extra={"job_id": fields.job_id, "credential_key": key},
            )
            continue
        if not isinstance(value, str):
            raise InvalidJobError(
                f"credential {key} of project {fields.project_id} is not a string"
            )
        accepted[key] = Secret(value)
    if not accepted:
        return {}
    return {**accepted, "CASCADE_CREDENTIAL_KEYS": ",".join(accepted)}


# -- job data: inline, or offloaded to a store when too large for the environment --

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


# -- secrets: values that never show, and the masker that hides them everywhere --

MASK = "***"

# Worker variables whose values are secret (besides every project credential and JOB_DATA).
SECRET_ENV_KEYS = frozenset(
    {
        "DATABASE_URL",
        "DATABASE_CA_CERT",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "CREDENTIAL_MASTER_KEY",
        "SENTRY_DSN",
        "REDIS_URL",
        "JOB_DATA",
        "WORKER_IMAGE_REGISTRY_PASSWORD",
    }
)
# A router variable whose name says it holds a secret, though dockyard never reads it.
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|KEY|DSN|CREDENTIAL|AUTH|_URL$", re.IGNORECASE)
# Values shorter than this are masked only where they stand as a whole token: replacing
# every "42" or "abc" inside ordinary words and numbers would garble the output while
# hiding nothing (a value that short is guessed faster than it is read).
MIN_SUBSTRING_LENGTH = 4
# A router variable picked by its name alone must be at least this long to be masked.
MIN_ROUTER_NAMED_SECRET = 8
# Job-data strings shorter than this are ids and labels (already in names and logs), not secrets.
MIN_JOB_DATA_LEAF = 8
_WORD_CHARS = r"A-Za-z0-9_"
_BOOK_JOBS = 256  # jobs whose secrets a manager's Sentry events are masked against


@dataclass(frozen=True, slots=True, repr=False)
class Secret:
    """A secret string: `repr`, `str` and formatting show `***`; `.reveal()` gives the value.

    Sentry's serializer renders unknown objects through `repr`, so a `Secret` held in a
    frame's locals, a dataclass or a list never shows its value in an event.
    """

    _value: str

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __len__(self) -> int:
        return len(self._value)


def reveal(value: str | Secret) -> str:
    """The plain value, whether given plain or as a `Secret`."""
    return value.reveal() if isinstance(value, Secret) else value


class SecretEnv(Mapping[str, Secret]):
    """A worker environment whose every value is a `Secret`; `reveal()` is the plain dict.

    Used from the moment the environment is built until the create call, which alone
    needs plain strings.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str | Secret] | None = None) -> None:
        self._items: dict[str, Secret] = {
            key: value if isinstance(value, Secret) else Secret(value)
            for key, value in (items or {}).items()
        }

    def __getitem__(self, key: str) -> Secret:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"SecretEnv(keys={list(self._items)!r})"

    def reveal(self) -> dict[str, str]:
        return {key: value.reveal() for key, value in self._items.items()}


def _forms(value: str) -> set[str]:
    """The ways a value shows up in text: as is, URL-encoded, and escaped inside JSON."""
    return {
        value,
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }


@dataclass(frozen=True)
class Masker:
    """Replaces known secret values (and their encoded forms) in text with `***`.

    The only place dockyard decides how a secret is hidden in output: log tails, Sentry
    events. Its pattern is compiled on first use (most workers' output is never read), and
    it is only read afterwards, so it is thread-safe.
    """

    values: frozenset[str] = field(repr=False)

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        long_forms: set[str] = set()
        short: set[str] = set()
        for value in self.values:
            if len(value) >= MIN_SUBSTRING_LENGTH:
                long_forms.update(_forms(value))
            elif value:
                short.add(value)
        parts = [re.escape(form) for form in sorted(long_forms, key=len, reverse=True)]
        parts += [
            rf"(?<![{_WORD_CHARS}]){re.escape(value)}(?![{_WORD_CHARS}])"
            for value in sorted(short, key=len, reverse=True)
        ]
        return re.compile("|".join(parts)) if parts else None

    @classmethod
    def of(cls, *groups: Iterable[str | Secret]) -> Masker:
        return cls(frozenset(reveal(value) for group in groups for value in group))

    def __repr__(self) -> str:
        return f"Masker({len(self.values)} values)"

    def __bool__(self) -> bool:
        return any(self.values)

    def merged(self, *others: Masker) -> Masker:
        return Masker(self.values.union(*(other.values for other in others)))

    def mask(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def mask_deep(self, node: Any) -> Any:
        """Mask every string in a JSON-like tree (dicts, lists, strings), keys included."""
        if isinstance(node, str):
            return self.mask(node)
        if isinstance(node, dict):
            return {self.mask_deep(k): self.mask_deep(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [self.mask_deep(item) for item in node]
        return node


def worker_secret_values(env: Mapping[str, str | Secret]) -> list[str]:
    """The values in a worker environment that must never be echoed: service secrets,
    job data and every project credential listed in `CASCADE_CREDENTIAL_KEYS`."""
    keys = set(SECRET_ENV_KEYS) - {"JOB_DATA"}
    listed = env.get("CASCADE_CREDENTIAL_KEYS")
    if listed is not None:
        keys.update(k.strip() for k in reveal(listed).split(",") if k.strip())
    found = [reveal(env[key]) for key in keys if key in env and reveal(env[key])]
    job_data = reveal(env.get("JOB_DATA", ""))
    if len(job_data) >= MIN_JOB_DATA_LEAF:  # `{}` is no secret, and masking it garbles output
        found.append(job_data)
    return found


def router_secret_values(environ: Mapping[str, str]) -> list[str]:
    """The router's own secrets: the worker secret keys plus every variable named like one.

    A variable picked by its name alone counts only when its value is long enough to be a
    secret: `SOME_TOKEN_TTL=1` would otherwise mask every `1` in every event.
    """
    return [
        value
        for key, value in environ.items()
        if value
        and (
            key in SECRET_ENV_KEYS
            or (_SECRET_NAME.search(key) and len(value) >= MIN_ROUTER_NAMED_SECRET)
        )
    ]


def job_data_secrets(data: object, job_data_json: str, public: Iterable[str | None]) -> list[str]:
    """Job data as a secret: the whole JSON and each string in it, but not the ids
    dockyard derives from it (they are in names and labels already) nor short strings."""
    skip = {value for value in public if value}
    found = [job_data_json]
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if len(node) >= MIN_JOB_DATA_LEAF and node not in skip:
                found.append(node)
        elif isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return found


class SecretBook:
    """Every secret value one manager knows of, to mask its Sentry events by value.

    The router's own secrets stay for the manager's life; each job's are kept for the
    last `history` jobs (a report about a job comes while or shortly after it runs).
    """

    def __init__(self, router: Masker, history: int = 1024) -> None:
        self._router = router
        self._lock = threading.Lock()
        # Bounded: a report compiles one pattern of all of them.
        self._jobs: LRUCache[str, Masker] = LRUCache(maxsize=max(1, min(history, _BOOK_JOBS)))

    def __repr__(self) -> str:
        return "SecretBook()"

    def hold(self, job_id: str, masker: Masker) -> None:
        with self._lock:
            self._jobs[job_id] = masker

    def masker(self) -> Masker:
        with self._lock:
            jobs = list(self._jobs.values())
        return self._router.merged(*jobs)

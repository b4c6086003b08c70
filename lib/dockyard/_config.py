"""Router and project configuration: defaults, validation and `RouterConfig.from_env`."""

from __future__ import annotations

import math
import os
import re
import socket
import threading
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

from dataclasses_json import DataClassJsonMixin

from ._container_checks import settings_from_json, validate_settings
from ._container_settings import (
    ROUTER,
    ContainerSettings,
    check_bind_roots,
    check_bind_sources,
    check_job_settings_allowed,
    project_layer,
)
from ._container_syntax import (
    bind_roots_from_env,
    env_var_of,
    job_settings_allowed_from_env,
    settings_from_env,
)
from ._drivers import DRIVERS, refuse_settings, refuse_snapshots
from ._errors import ConfigError
from ._naming import is_valid_image_reference
from ._pull_policy import IF_NOT_PRESENT, PULL_POLICIES

__all__ = ["ProjectConfig", "RouterConfig"]

GIB = 1024**3
DOCKER_MIN_MEMORY_MB = 6  # the engine refuses a memory limit below 6 MiB
# Durations become `threading.Timer`s and deadlines: beyond this they overflow.
MAX_DURATION_S = threading.TIMEOUT_MAX
# overlay2 refuses a commit past about 125 layers; the commit a flatten starts from has
# `snapshot_max_layers` + 1.
MAX_SNAPSHOT_LAYERS = 120
_CONTAINER_NAME_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _hostname() -> str:
    return socket.gethostname()


class _StrictJson(DataClassJsonMixin):
    """dataclasses-json's `from_dict`, but a value of the wrong JSON type is a `ConfigError`."""

    _error_prefix: ClassVar[str] = ""  # what the `ConfigError` names a field with

    @classmethod
    def from_dict(cls, kvs: Any, *, infer_missing: bool = False) -> Self:
        """Like dataclasses-json's, but a value of the wrong JSON type is a `ConfigError`.

        dataclasses-json coerces silently (`"false"` would become `True`, `2.5` become 2).
        """
        _check_json_types(cls, cls._error_prefix, kvs)
        return super().from_dict(kvs, infer_missing=infer_missing)


@dataclass(frozen=True)
class RouterConfig(_StrictJson):
    """Settings of one router; every duration is in seconds, every size in bytes unless `_mb`.

    Invalid values raise `ConfigError` naming the field at construction.
    """

    worker_image: str = "ghcr.io/mongrel-intelligence/cascade-worker:latest"
    max_workers: int = 3
    worker_memory_mb: int = 4096
    worker_timeout_s: float = 1800.0
    slot_wait_timeout_s: float = 300.0
    docker_network: str = "bridge"
    redis_url: str = "redis://localhost:6379"
    snapshot_enabled: bool = False
    snapshot_default_ttl_s: float = 86400.0
    snapshot_max_count: int = 5
    snapshot_max_size_bytes: int = 10 * GIB
    router_instance_id: str = field(default_factory=_hostname)
    kill_buffer_s: float = 120.0
    stop_grace_s: float = 15.0
    image_pull_timeout_s: float = 300.0
    log_tail_lines: int = 50
    # Read each worker's output live (attached before its start): lines to the listener's
    # `on_worker_output`, the last `log_tail_lines` in every outcome's `log_tail`.
    stream_output: bool = True
    launch_concurrency: int = 8
    label_prefix: str = "cascade"
    container_name_prefix: str = "cascade-worker-"
    snapshot_image_prefix: str = "cascade-snapshot-"
    # A snapshot image never holds more layers than this: each run of a work item commits
    # one more, and a commit that would pass it is written flattened (one layer) instead,
    # well before the storage driver's own limit (overlay2: about 125).
    snapshot_max_layers: int = 100
    # Credentials sent with every image pull (the engine has no login of its own).
    registry_username: str | None = None
    registry_password: str | None = field(default=None, repr=False)
    registry_server: str | None = None
    # When the worker image is pulled: "if-not-present", "always" or "never"; with "always",
    # spawns within `image_pull_reuse_s` of a pull share it. Transient pull failures are
    # tried again `image_pull_retries` times within `image_pull_timeout_s`.
    image_pull_policy: str = IF_NOT_PRESENT
    image_pull_reuse_s: float = 5.0
    image_pull_retries: int = 3
    # A Docker credential helper (`docker-credential-<name> get`) must answer within this.
    registry_helper_timeout_s: float = 15.0
    # Beyond the original: hardening and operational bounds.
    # False: dockyard removes finished containers itself, after reading their log tail
    # (the engine refuses logs of a container it is auto-removing).
    auto_remove_workers: bool = True
    pids_limit: int | None = 4096
    no_new_privileges: bool = False
    docker_timeout_s: float = 60.0
    wait_retry_window_s: float = 60.0
    outcome_history: int = 10_000
    # Commits and image rewrites copy whole filesystems: multi-GB images outlast the
    # short-call timeout by far.
    image_write_timeout_s: float = 1800.0
    # What runs a job: "docker" (a container on one engine) or "swarm" (a replicated-job
    # service on a swarm, through a manager node's engine).
    backend: str = "docker"
    # Swarm: a task not running after this long (no node can take it) ends the worker
    # `failed` with the scheduler's reason.
    swarm_pending_timeout_s: float = 300.0
    # The most workers one project runs at once (None: no cap but max_workers); a
    # project's own `ProjectConfig.max_workers` wins.
    max_workers_per_project: int | None = None
    # Container controls (the router layer; projects and jobs may override, see README).
    container: ContainerSettings | None = None
    # The `ContainerSettings` fields a job may set; any other one is an `InvalidJobError`.
    job_settings_allowed: frozenset[str] = frozenset()
    # Bind mount sources must resolve under one of these; none: every bind is refused.
    allowed_bind_roots: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # JSON gives lists: kept as the declared immutable collections.
        allowed = check_job_settings_allowed(self.job_settings_allowed)
        object.__setattr__(self, "job_settings_allowed", allowed)
        object.__setattr__(self, "allowed_bind_roots", check_bind_roots(self.allowed_bind_roots))
        _validate_router(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RouterConfig:
        """Build a config from the environment variables of the spec (§10).

        Millisecond variables (`*_MS`) are converted to seconds. A malformed or invalid
        value raises `ConfigError` naming the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var, (name, parse) in _ENV_VARS.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[name] = parse(raw.strip())
            except ValueError:
                raise ConfigError(var, f"malformed value {raw!r}") from None
        container = settings_from_env(env)
        if container is not None:
            values["container"] = container
        try:
            return cls(**values)
        except ConfigError as err:
            var = _VAR_OF_FIELD.get(err.name) or env_var_of(err.name) or err.name
            raise ConfigError(var, err.problem) from None


@dataclass(frozen=True)
class ProjectConfig(_StrictJson):
    """Per-project overrides; `None` means "use the router's global setting"."""

    _error_prefix: ClassVar[str] = "ProjectConfig."

    id: str
    repo_full_name: str | None = None
    snapshot_enabled: bool | None = None
    snapshot_ttl_s: float | None = None
    watchdog_timeout_s: float | None = None
    worker_image: str | None = None
    worker_image_status: str | None = None
    worker_image_digest: str | None = None
    image_pull_policy: str | None = None
    # The most workers this project runs at once (None: the router's
    # `max_workers_per_project`).
    max_workers: int | None = None
    # Container controls of this project's workers (`None` fields: the router's).
    container: ContainerSettings | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError("ProjectConfig.id", "must be a non-empty string")
        if self.max_workers is not None:
            _require_int("ProjectConfig.max_workers", self.max_workers, 1)
        for name in ("snapshot_ttl_s", "watchdog_timeout_s"):
            value = getattr(self, name)
            if value is not None:
                _require_positive(f"ProjectConfig.{name}", value)
        if self.snapshot_enabled is not None and not isinstance(self.snapshot_enabled, bool):
            raise ConfigError("ProjectConfig.snapshot_enabled", "must be a boolean or None")
        texts = ("repo_full_name", "worker_image", "worker_image_status", "worker_image_digest")
        _require_optional_texts(self, texts, prefix="ProjectConfig.")
        if self.image_pull_policy is not None:
            _require_pull_policy("ProjectConfig.image_pull_policy", self.image_pull_policy)
        if self.container is not None:
            validate_settings(self.container, project_layer(self.id))


def _check_json_types(cls: type, prefix: str, kvs: object) -> None:
    """Refuse unknown keys and values whose JSON type does not fit the field."""
    if not isinstance(kvs, Mapping):
        raise ConfigError(prefix.rstrip(".") or "config", "must be a JSON object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key, value in kvs.items():
        name = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(name, "unknown setting")
        hint = hints[key]
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        allowed = typing.get_args(hint) if union else (hint,)
        if ContainerSettings in allowed and isinstance(value, Mapping):
            layer = project_layer() if prefix else ROUTER
            settings_from_json(value, layer)  # its own JSON type checks
            continue
        if value is None:
            ok = type(None) in allowed
        elif isinstance(value, list):
            origins = {typing.get_origin(t) for t in allowed}
            ok = bool(origins & {tuple, frozenset}) and all(isinstance(v, str) for v in value)
        elif isinstance(value, bool):
            ok = bool in allowed
        elif isinstance(value, int):
            ok = int in allowed or float in allowed
        else:
            ok = type(value) in allowed
        if not ok:
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(name, f"must be {wanted}, got {type(value).__name__}")


def _int(raw: str) -> int:
    # Plain digits only: `int()` would also take "1_000" and other Python spellings.
    if not _INTEGER.fullmatch(raw):
        raise ValueError(raw)
    return int(raw, 10)


def _float(raw: str) -> float:
    if "_" in raw:  # `float()` takes "1_000"; no other parser of these variables does
        raise ValueError(raw)
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _ms(raw: str) -> float:
    return _float(raw) / 1000.0


def _true_only(raw: str) -> bool:
    # The original treats exactly "true" as on; anything else is off.
    return raw == "true"


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _str(raw: str) -> str:
    return raw


_ENV_VARS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "WORKER_IMAGE": ("worker_image", _str),
    "MAX_WORKERS": ("max_workers", _int),
    "MAX_WORKERS_PER_PROJECT": ("max_workers_per_project", _int),
    "WORKER_MEMORY_MB": ("worker_memory_mb", _int),
    "WORKER_TIMEOUT_MS": ("worker_timeout_s", _ms),
    "SLOT_WAIT_TIMEOUT_MS": ("slot_wait_timeout_s", _ms),
    "DOCKER_NETWORK": ("docker_network", _str),
    "REDIS_URL": ("redis_url", _str),
    "SNAPSHOT_ENABLED": ("snapshot_enabled", _true_only),
    "SNAPSHOT_DEFAULT_TTL_MS": ("snapshot_default_ttl_s", _ms),
    "SNAPSHOT_MAX_COUNT": ("snapshot_max_count", _int),
    "SNAPSHOT_MAX_SIZE_BYTES": ("snapshot_max_size_bytes", _int),
    "SNAPSHOT_MAX_LAYERS": ("snapshot_max_layers", _int),
    "CASCADE_ROUTER_INSTANCE": ("router_instance_id", _str),
    "WORKER_IMAGE_REGISTRY_USERNAME": ("registry_username", _str),
    "WORKER_IMAGE_REGISTRY_PASSWORD": ("registry_password", _str),
    "WORKER_IMAGE_REGISTRY_SERVER": ("registry_server", _str),
    "WORKER_IMAGE_PULL_POLICY": ("image_pull_policy", _str),
    "WORKER_IMAGE_PULL_REUSE_MS": ("image_pull_reuse_s", _ms),
    "WORKER_IMAGE_PULL_RETRIES": ("image_pull_retries", _int),
    "WORKER_IMAGE_CREDENTIAL_HELPER_TIMEOUT_MS": ("registry_helper_timeout_s", _ms),
    "DOCKYARD_BACKEND": ("backend", _str),
    "WORKER_STREAM_OUTPUT": ("stream_output", _flag),
    "DOCKYARD_SWARM_PENDING_TIMEOUT_MS": ("swarm_pending_timeout_s", _ms),
    # The container controls' `WORKER_*` variables are `_container_syntax.SETTING_ENV_VARS`.
    "JOB_SETTINGS_ALLOWED": ("job_settings_allowed", job_settings_allowed_from_env),
    "ALLOWED_BIND_ROOTS": ("allowed_bind_roots", bind_roots_from_env),
}
_VAR_OF_FIELD = {name: var for var, (name, _) in _ENV_VARS.items()}


def _require_positive(name: str, value: object, *, allow_zero: bool = False) -> None:
    """A duration in seconds: finite, positive (or zero when allowed), not absurdly long."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "zero or a positive number" if allow_zero else "a positive number"
        raise ConfigError(name, f"must be {kind}, got {value!r}")
    if value > MAX_DURATION_S:
        raise ConfigError(name, f"must be at most {MAX_DURATION_S:g}, got {value!r}")


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")


def _require_text(name: str, value: object, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise ConfigError(name, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ConfigError(name, "must not be empty")
    if "\x00" in value:
        raise ConfigError(name, "must not contain NUL")


def _require_optional_texts(obj: object, names: tuple[str, ...], *, prefix: str = "") -> None:
    """Each of `names` on `obj` is None or a string (empty allowed)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            _require_text(f"{prefix}{name}", value, allow_empty=True)


_MAY_BE_ZERO = ("kill_buffer_s", "image_pull_reuse_s")


def _require_pull_policy(name: str, value: object) -> None:
    if value not in PULL_POLICIES:
        raise ConfigError(name, f"must be one of {', '.join(PULL_POLICIES)}, got {value!r}")


def _validate_router(config: RouterConfig) -> None:
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name.endswith("_s"):
            _require_positive(f.name, value, allow_zero=f.name in _MAY_BE_ZERO)
    _require_int("max_workers", config.max_workers, 1)
    if config.max_workers_per_project is not None:
        _require_int("max_workers_per_project", config.max_workers_per_project, 1)
    _require_int("worker_memory_mb", config.worker_memory_mb, DOCKER_MIN_MEMORY_MB)
    _require_int("snapshot_max_count", config.snapshot_max_count, 0)
    _require_int("snapshot_max_size_bytes", config.snapshot_max_size_bytes, 0)
    _require_int("snapshot_max_layers", config.snapshot_max_layers, 1)
    if config.snapshot_max_layers > MAX_SNAPSHOT_LAYERS:
        raise ConfigError(
            "snapshot_max_layers",
            f"must be at most {MAX_SNAPSHOT_LAYERS} (the commit that is flattened must still "
            f"fit the storage driver's layer limit), got {config.snapshot_max_layers}",
        )
    _require_int("log_tail_lines", config.log_tail_lines, 0)
    _require_int("launch_concurrency", config.launch_concurrency, 1)
    _require_int("outcome_history", config.outcome_history, 1)
    _require_int("image_pull_retries", config.image_pull_retries, 0)
    _require_pull_policy("image_pull_policy", config.image_pull_policy)
    if config.pids_limit is not None:
        _require_int("pids_limit", config.pids_limit, 1)
    for name in ("worker_image", "docker_network", "router_instance_id", "label_prefix"):
        _require_text(name, getattr(config, name))
    _require_text("redis_url", config.redis_url, allow_empty=True)
    for name in ("container_name_prefix", "snapshot_image_prefix"):
        _require_text(name, getattr(config, name))
    if not is_valid_image_reference(config.worker_image):
        raise ConfigError("worker_image", f"{config.worker_image!r} is not a valid image reference")
    # Docker refuses names that start with anything but a letter or digit.
    if not _CONTAINER_NAME_PREFIX.fullmatch(config.container_name_prefix):
        raise ConfigError(
            "container_name_prefix",
            f"{config.container_name_prefix!r} must start with a letter or digit and hold "
            "only letters, digits, '_', '.' and '-'",
        )
    # Snapshot images are named prefix + lowercase parts: the prefix must keep that valid.
    if not is_valid_image_reference(config.snapshot_image_prefix + "x"):
        raise ConfigError(
            "snapshot_image_prefix",
            f"{config.snapshot_image_prefix!r} does not start a valid image name",
        )
    _require_optional_texts(config, ("registry_username", "registry_password", "registry_server"))
    if not isinstance(config.snapshot_enabled, bool):
        raise ConfigError("snapshot_enabled", "must be a boolean")
    if not isinstance(config.stream_output, bool):
        raise ConfigError("stream_output", "must be a boolean")
    if config.backend not in DRIVERS:
        raise ConfigError("backend", f"must be one of {', '.join(DRIVERS)}, got {config.backend!r}")
    if config.snapshot_enabled:
        refuse_snapshots(config.backend, "backend")
    if config.container is not None:
        validate_settings(config.container, ROUTER)
        check_bind_sources(config.container, config.allowed_bind_roots, ROUTER)
        refuse_settings(config.backend, config.container, ROUTER)

"""Router and project configuration: defaults, validation and `RouterConfig.from_env`."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from dataclasses_json import DataClassJsonMixin

from ._errors import ConfigError
from ._naming import is_valid_image_reference

__all__ = ["ProjectConfig", "RouterConfig"]

GIB = 1024**3
DOCKER_MIN_MEMORY_MB = 6  # the engine refuses a memory limit below 6 MiB


def _hostname() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class RouterConfig(DataClassJsonMixin):
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
    launch_concurrency: int = 8
    label_prefix: str = "cascade"
    container_name_prefix: str = "cascade-worker-"
    snapshot_image_prefix: str = "cascade-snapshot-"
    # Beyond the original: hardening and operational bounds.
    # False: dockyard removes finished containers itself, after reading their log tail
    # (the engine refuses logs of a container it is auto-removing).
    auto_remove_workers: bool = True
    pids_limit: int | None = 4096
    no_new_privileges: bool = False
    docker_timeout_s: float = 60.0
    wait_retry_window_s: float = 60.0
    outcome_history: int = 10_000

    def __post_init__(self) -> None:
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
        try:
            return cls(**values)
        except ConfigError as err:
            var = _VAR_OF_FIELD.get(err.name, err.name)
            raise ConfigError(var, err.problem) from None


@dataclass(frozen=True)
class ProjectConfig(DataClassJsonMixin):
    """Per-project overrides; `None` means "use the router's global setting"."""

    id: str
    repo_full_name: str | None = None
    snapshot_enabled: bool | None = None
    snapshot_ttl_s: float | None = None
    watchdog_timeout_s: float | None = None
    worker_image: str | None = None
    worker_image_status: str | None = None
    worker_image_digest: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError("ProjectConfig.id", "must be a non-empty string")
        for name in ("snapshot_ttl_s", "watchdog_timeout_s"):
            value = getattr(self, name)
            if value is not None:
                _require_positive(f"ProjectConfig.{name}", value)


def _int(raw: str) -> int:
    return int(raw, 10)


def _float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _ms(raw: str) -> float:
    return _float(raw) / 1000.0


def _true_only(raw: str) -> bool:
    # The original treats exactly "true" as on; anything else is off.
    return raw == "true"


def _str(raw: str) -> str:
    return raw


_ENV_VARS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "WORKER_IMAGE": ("worker_image", _str),
    "MAX_WORKERS": ("max_workers", _int),
    "WORKER_MEMORY_MB": ("worker_memory_mb", _int),
    "WORKER_TIMEOUT_MS": ("worker_timeout_s", _ms),
    "SLOT_WAIT_TIMEOUT_MS": ("slot_wait_timeout_s", _ms),
    "DOCKER_NETWORK": ("docker_network", _str),
    "REDIS_URL": ("redis_url", _str),
    "SNAPSHOT_ENABLED": ("snapshot_enabled", _true_only),
    "SNAPSHOT_DEFAULT_TTL_MS": ("snapshot_default_ttl_s", _ms),
    "SNAPSHOT_MAX_COUNT": ("snapshot_max_count", _int),
    "SNAPSHOT_MAX_SIZE_BYTES": ("snapshot_max_size_bytes", _int),
    "CASCADE_ROUTER_INSTANCE": ("router_instance_id", _str),
}
_VAR_OF_FIELD = {name: var for var, (name, _) in _ENV_VARS.items()}


def _require_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(name, f"must be a positive number, got {value!r}")


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


def _validate_router(config: RouterConfig) -> None:
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name.endswith("_s") and f.name != "kill_buffer_s":
            _require_positive(f.name, value)
    if isinstance(config.kill_buffer_s, bool) or not isinstance(config.kill_buffer_s, int | float):
        raise ConfigError("kill_buffer_s", "must be a number")
    if not math.isfinite(config.kill_buffer_s) or config.kill_buffer_s < 0:
        raise ConfigError("kill_buffer_s", f"must be zero or more, got {config.kill_buffer_s!r}")
    _require_int("max_workers", config.max_workers, 1)
    _require_int("worker_memory_mb", config.worker_memory_mb, DOCKER_MIN_MEMORY_MB)
    _require_int("snapshot_max_count", config.snapshot_max_count, 0)
    _require_int("snapshot_max_size_bytes", config.snapshot_max_size_bytes, 0)
    _require_int("log_tail_lines", config.log_tail_lines, 0)
    _require_int("launch_concurrency", config.launch_concurrency, 1)
    _require_int("outcome_history", config.outcome_history, 1)
    if config.pids_limit is not None:
        _require_int("pids_limit", config.pids_limit, 1)
    for name in ("worker_image", "docker_network", "router_instance_id", "label_prefix"):
        _require_text(name, getattr(config, name))
    for name in ("redis_url", "container_name_prefix", "snapshot_image_prefix"):
        _require_text(name, getattr(config, name), allow_empty=True)
    if not is_valid_image_reference(config.worker_image):
        raise ConfigError("worker_image", f"{config.worker_image!r} is not a valid image reference")
    if not isinstance(config.snapshot_enabled, bool):
        raise ConfigError("snapshot_enabled", "must be a boolean")

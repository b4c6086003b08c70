"""`docker run` syntax for container settings: sizes (`64m`), `--gpus`, `--mount`,
`--tmpfs`, `--ulimit`, `--add-host`, and the router's environment variables built on them.

Each parser raises `ValueError` with a message fit for a usage error; `settings_from_env`
turns that into a `ConfigError` naming the variable. The checks of the values themselves
(ranges, paths, names) stay with `ContainerSettings` validation.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from ._container_settings import ContainerSettings, Mount, Ulimit
from ._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "ENV_VAR_OF_SETTING",
    "SETTING_ENV_VARS",
    "env_var_of",
    "parse_add_host",
    "parse_bool",
    "parse_bool_text",
    "parse_gpus",
    "parse_mount",
    "parse_size",
    "parse_tmpfs",
    "parse_ulimit",
    "settings_from_env",
]

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?([kmgtp]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_INTEGER = re.compile(r"-?[0-9]+")


def parse_size(text: str) -> int:
    """Bytes from `docker run` size syntax: `67108864`, `64m`, `1.5g`, `512k`, `64MiB`
    (binary units)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size like 64m, 1g or 1048576")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def _int(text: str, what: str) -> int:
    if not _INTEGER.fullmatch(text.strip()):
        raise ValueError(f"{what}: {text!r} is not an integer")
    return int(text.strip(), 10)


def parse_bool_text(text: str, what: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(f"{what}: {text!r} is not true or false")


def parse_bool(text: str) -> bool:
    return parse_bool_text(text, "value")


def parse_gpus(text: str) -> int | str:
    """`--gpus`: `all`, a count (`2`) or `device=0,1` (also quoted, as the CLI allows)."""
    value = text.strip().strip('"')
    if _INTEGER.fullmatch(value):
        return int(value, 10)
    return value


def parse_mount(text: str) -> Mount:
    """`--mount type=bind,source=/a,target=/b[,readonly][,tmpfs-size=64m]`."""
    values: dict[str, Any] = {"type": "volume"}  # docker's default mount type
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro"):
            values["read_only"] = parse_bool_text(value, key) if sep else True
        elif not sep:
            raise ValueError(f"--mount: {part!r} is not KEY=VALUE")
        elif key == "type":
            values["type"] = value
        elif key in ("source", "src"):
            values["source"] = value
        elif key in ("target", "destination", "dst"):
            values["target"] = value
        elif key == "tmpfs-size":
            values["size_bytes"] = parse_size(value)
        else:
            raise ValueError(
                f"--mount: unknown key {key!r} (type, source, target, readonly, tmpfs-size)"
            )
    if "target" not in values:
        raise ValueError("--mount: target= is missing")
    return Mount(**values)


def parse_tmpfs(text: str) -> Mount:
    """`--tmpfs PATH[:size=64m][,ro|rw]`."""
    path, _, options = text.partition(":")
    size: int | None = None
    read_only = False
    for option in filter(None, (o.strip() for o in options.split(","))):
        key, sep, value = option.partition("=")
        if key == "size" and sep:
            size = parse_size(value)
        elif option in ("ro", "rw"):
            read_only = option == "ro"
        else:
            raise ValueError(f"--tmpfs: unsupported option {option!r} (size=SIZE, ro, rw)")
    return Mount(type="tmpfs", target=path, read_only=read_only, size_bytes=size)


def parse_ulimit(text: str) -> Ulimit:
    """`--ulimit NAME=SOFT[:HARD]` (HARD defaults to SOFT; -1 is unlimited)."""
    name, sep, limits = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--ulimit: {text!r} is not NAME=SOFT[:HARD]")
    soft_text, _, hard_text = limits.partition(":")
    soft = _int(soft_text, f"--ulimit {name}")
    hard = _int(hard_text, f"--ulimit {name}") if hard_text else soft
    return Ulimit(name=name.strip(), soft=soft, hard=hard)


def parse_add_host(text: str) -> tuple[str, str]:
    """`--add-host NAME:IP` (or `NAME=IP`); the IP may be IPv6 (split at the first mark)."""
    for mark in ("=", ":"):
        name, sep, address = text.partition(mark)
        if sep:
            return name.strip(), address.strip().strip("[]")
    raise ValueError(f"--add-host: {text!r} is not NAME:IP")


def _split(text: str, sep: str) -> list[str]:
    return [item.strip() for item in text.split(sep) if item.strip()]


def _hosts(text: str) -> dict[str, str]:
    return dict(parse_add_host(item) for item in _split(text, ","))


# Variable → (setting, parser of the whole value). Lists of items that hold commas
# themselves (mounts, security options) are `;`-separated; every other list `,`-separated.
SETTING_ENV_VARS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "WORKER_CPUS": ("cpus", float),
    "WORKER_CPU_SHARES": ("cpu_shares", lambda t: _int(t, "WORKER_CPU_SHARES")),
    "WORKER_CPUSET_CPUS": ("cpuset_cpus", str.strip),
    "WORKER_SHM_SIZE": ("shm_size_bytes", parse_size),
    "WORKER_GPUS": ("gpus", parse_gpus),
    "WORKER_MOUNTS": ("mounts", lambda t: tuple(parse_mount(m) for m in _split(t, ";"))),
    "WORKER_WORKDIR": ("working_dir", str.strip),
    "WORKER_USER": ("user", str.strip),
    "WORKER_ULIMITS": ("ulimits", lambda t: tuple(parse_ulimit(u) for u in _split(t, ","))),
    "WORKER_CAP_ADD": ("cap_add", lambda t: tuple(_split(t, ","))),
    "WORKER_CAP_DROP": ("cap_drop", lambda t: tuple(_split(t, ","))),
    "WORKER_READ_ONLY": ("read_only_rootfs", parse_bool),
    "WORKER_SECURITY_OPT": ("security_opt", lambda t: tuple(_split(t, ";"))),
    "WORKER_ADD_HOSTS": ("extra_hosts", _hosts),
    "WORKER_DNS": ("dns", lambda t: tuple(_split(t, ","))),
    "WORKER_INIT": ("init", parse_bool),
}
ENV_VAR_OF_SETTING = {name: var for var, (name, _) in SETTING_ENV_VARS.items()}
_FIELD_OF_ERROR = re.compile(r"container\.([a-z_]+)")


def env_var_of(error_name: str) -> str | None:
    """The variable behind a router-layer error name (`container.mounts[0].source` →
    `WORKER_MOUNTS`), or None."""
    match = _FIELD_OF_ERROR.match(error_name)
    return ENV_VAR_OF_SETTING.get(match.group(1)) if match else None


def settings_from_env(env: Mapping[str, str]) -> ContainerSettings | None:
    """The router layer's settings from `WORKER_*` variables; None when none is set.
    A malformed value is a `ConfigError` naming the variable."""
    values: dict[str, Any] = {}
    for var, (name, parse) in SETTING_ENV_VARS.items():
        raw = env.get(var)
        if raw is None or not raw.strip():
            continue
        try:
            values[name] = parse(raw.strip())
        except ValueError as err:
            raise ConfigError(var, f"malformed value {raw!r}: {err}") from None
    return ContainerSettings(**values) if values else None


def job_settings_allowed_from_env(raw: str) -> frozenset[str]:
    """`JOB_SETTINGS_ALLOWED=cpus,memory_mb`."""
    return frozenset(_split(raw, ","))


def bind_roots_from_env(raw: str) -> tuple[str, ...]:
    """`ALLOWED_BIND_ROOTS=/srv/cache:/data` (`os.pathsep`-separated, as `PATH`)."""
    return tuple(_split(raw, os.pathsep))

"""Container settings checked: every field's value, and JSON objects before they become
`ContainerSettings`; errors name the field and the layer (`Layer.error`).

`resolve_container_settings` is the whole rule set one worker goes through: the job's fields
against what the router lets a job set, every layer's values and bind sources, then the
merge.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

from ._container_settings import (
    FIELD_NAMES,
    JOB,
    MOUNT_TYPES,
    ROUTER,
    ContainerSettings,
    Layer,
    Mount,
    Ulimit,
    check_bind_sources,
    check_job_allowed,
    merge_settings,
    project_layer,
)

__all__ = [
    "ULIMIT_NAMES",
    "resolve_container_settings",
    "settings_from_json",
    "validate_settings",
]

DOCKER_MIN_MEMORY_MB = 6  # the engine refuses a memory limit below 6 MiB
MIN_CPUS = 0.01  # the engine's smallest CPU limit
CPU_SHARES_RANGE = (2, 262144)  # the kernel's cpu.shares bounds, as the engine enforces them
# The resource names the engine accepts for `--ulimit` (its `ulimit` package's table).
ULIMIT_NAMES = frozenset(
    {
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    }
)
UNLIMITED = -1  # a ulimit of -1 is "unlimited"

_R = TypeVar("_R", Mount, Ulimit)

_CPUSET = re.compile(r"[0-9]+(?:-[0-9]+)?(?:,[0-9]+(?:-[0-9]+)?)*")
_CAPABILITY = re.compile(r"(?:CAP_)?[A-Z_]+")
_GPU_DEVICES = re.compile(r"device=([A-Za-z0-9_.:-]+(?:,[A-Za-z0-9_.:-]+)*)")
# Docker's volume name rule.
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]+")
# `name`, `uid`, `name:group`, `uid:gid` (what `docker run --user` takes).
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?")
_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
HOST_GATEWAY = "host-gateway"  # the engine's name for the host's address on the bridge
# `no-new-privileges[:true|false]`, `seccomp=…`, `apparmor=…`, `label=…` (also with `:`),
# `systempaths=unconfined`: the keys the engine understands.
_SECURITY_OPT = re.compile(
    r"no-new-privileges(?::(?:true|false))?"
    r"|(?:seccomp|apparmor|label)[=:].+"
    r"|systempaths=unconfined",
    re.DOTALL,  # a seccomp profile given inline is multi-line JSON
)


# -- validation -----------------------------------------------------------------------


def validate_settings(settings: object, layer: Layer) -> None:
    """Check every set field; raises `layer.error(...)` naming the first bad one."""
    if not isinstance(settings, ContainerSettings):
        raise layer.error("", f"must be a ContainerSettings, got {type(settings).__name__}")
    for name in settings.set_fields():
        _CHECKS[name](getattr(settings, name), name, layer)
    if settings.cap_add and settings.cap_drop:
        both = {_cap_name(c) for c in settings.cap_add} & {_cap_name(c) for c in settings.cap_drop}
        both.discard("ALL")
        if both:
            raise layer.error("cap_add", f"{sorted(both)[0]} is both added and dropped")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: object, name: str, layer: Layer) -> str:
    if not isinstance(value, str):
        raise layer.error(name, f"must be a string, got {type(value).__name__}")
    if not value or "\x00" in value:
        raise layer.error(name, "must be a non-empty string without NUL")
    return value


def _texts(value: object, name: str, layer: Layer) -> tuple[str, ...]:
    if not isinstance(value, tuple):
        raise layer.error(name, f"must be a tuple of strings, got {type(value).__name__}")
    return tuple(_text(item, f"{name}[{i}]", layer) for i, item in enumerate(value))


def _check_cpus(value: object, name: str, layer: Layer) -> None:
    if not _number(value):
        raise layer.error(name, f"must be a number of CPUs, got {type(value).__name__}")
    assert isinstance(value, int | float)
    if not math.isfinite(value) or value < MIN_CPUS:
        raise layer.error(name, f"must be at least {MIN_CPUS} CPUs, got {value!r}")


def _check_cpu_shares(value: object, name: str, layer: Layer) -> None:
    low, high = CPU_SHARES_RANGE
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise layer.error(name, f"must be an integer from {low} to {high}, got {value!r}")


def _check_cpuset(value: object, name: str, layer: Layer) -> None:
    text = _text(value, name, layer)
    if not _CPUSET.fullmatch(text):
        raise layer.error(name, f"{text!r} is not a CPU list like '0-3' or '0,2'")
    for part in text.split(","):
        low, _, high = part.partition("-")
        if high and int(high) < int(low):
            raise layer.error(name, f"range {part!r} runs backwards")


def _check_memory(value: object, name: str, layer: Layer) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < DOCKER_MIN_MEMORY_MB:
        raise layer.error(
            name, f"must be an integer of at least {DOCKER_MIN_MEMORY_MB} MiB, got {value!r}"
        )


def _check_positive_bytes(value: object, name: str, layer: Layer) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise layer.error(name, f"must be a positive number of bytes, got {value!r}")


def _check_gpus(value: object, name: str, layer: Layer) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise layer.error(name, f"a GPU count must be at least 1, got {value}")
        return
    if isinstance(value, str) and (value == "all" or _GPU_DEVICES.fullmatch(value)):
        return
    raise layer.error(name, f"must be a count, 'all' or 'device=ID[,ID…]', got {value!r}")


def _check_absolute(value: object, name: str, layer: Layer) -> str:
    path = _text(value, name, layer)
    if not path.startswith("/"):
        raise layer.error(name, f"must be an absolute path, got {path!r}")
    return path


def _records(value: object, kind: type[_R], name: str, layer: Layer) -> Iterator[tuple[str, _R]]:
    """A tuple of `kind` (`Mount`, `Ulimit`), item by item with its place (`name[i]`)."""
    if not isinstance(value, tuple):
        raise layer.error(name, f"must be a tuple of {kind.__name__}, got {type(value).__name__}")
    for i, item in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(item, kind):
            raise layer.error(where, f"must be a {kind.__name__}, got {type(item).__name__}")
        yield where, item


def _check_mounts(value: object, name: str, layer: Layer) -> None:
    targets: set[str] = set()
    for where, mount in _records(value, Mount, name, layer):
        _check_mount(mount, where, layer)
        target = os.path.normpath(mount.target)
        if target in targets:
            raise layer.error(f"{where}.target", f"{mount.target!r} is mounted twice")
        targets.add(target)


def _check_mount(mount: Mount, where: str, layer: Layer) -> None:
    if mount.type not in MOUNT_TYPES:
        raise layer.error(
            f"{where}.type", f"must be one of {', '.join(MOUNT_TYPES)}, got {mount.type!r}"
        )
    target = _check_absolute(mount.target, f"{where}.target", layer)
    if os.path.normpath(target) == "/":
        raise layer.error(f"{where}.target", "cannot be '/'")
    if not isinstance(mount.read_only, bool):
        raise layer.error(f"{where}.read_only", "must be a boolean")
    if mount.size_bytes is not None:
        if mount.type != "tmpfs":
            raise layer.error(f"{where}.size_bytes", "applies to tmpfs mounts only")
        _check_positive_bytes(mount.size_bytes, f"{where}.size_bytes", layer)
    if mount.type == "tmpfs" and mount.source is not None:
        raise layer.error(f"{where}.source", "a tmpfs mount has no source")
    if mount.type == "bind":
        if mount.source is None:
            raise layer.error(f"{where}.source", "a bind mount needs a source (a host path)")
        _check_absolute(mount.source, f"{where}.source", layer)
    if mount.type == "volume" and mount.source is not None:
        source = _text(mount.source, f"{where}.source", layer)
        if not _VOLUME_NAME.fullmatch(source):
            raise layer.error(
                f"{where}.source",
                f"{source!r} is not a volume name ([A-Za-z0-9][A-Za-z0-9_.-]+)",
            )


def _check_working_dir(value: object, name: str, layer: Layer) -> None:
    _check_absolute(value, name, layer)


def _check_user(value: object, name: str, layer: Layer) -> None:
    text = _text(value, name, layer)
    if not _USER.fullmatch(text):
        raise layer.error(name, f"{text!r} is not USER, UID, USER:GROUP or UID:GID")


def _check_ulimits(value: object, name: str, layer: Layer) -> None:
    seen: set[str] = set()
    for where, limit in _records(value, Ulimit, name, layer):
        if limit.name not in ULIMIT_NAMES:
            raise layer.error(f"{where}.name", f"unknown ulimit {limit.name!r}")
        if limit.name in seen:
            raise layer.error(f"{where}.name", f"ulimit {limit.name!r} is set twice")
        seen.add(limit.name)
        for part in ("soft", "hard"):
            number = getattr(limit, part)
            if not _integer(number) or number < UNLIMITED:
                raise layer.error(f"{where}.{part}", f"must be an integer ≥ -1, got {number!r}")
        if limit.hard != UNLIMITED and (limit.soft == UNLIMITED or limit.soft > limit.hard):
            raise layer.error(
                where, f"{limit.name}: soft limit {limit.soft} is above the hard {limit.hard}"
            )


def _cap_name(capability: str) -> str:
    return capability.removeprefix("CAP_")


def _check_capabilities(value: object, name: str, layer: Layer) -> None:
    for i, capability in enumerate(_texts(value, name, layer)):
        if not _CAPABILITY.fullmatch(capability):
            raise layer.error(
                f"{name}[{i}]", f"{capability!r} is not a capability like CHOWN, CAP_NET_ADMIN, ALL"
            )


def _check_bool(value: object, name: str, layer: Layer) -> None:
    if not isinstance(value, bool):
        raise layer.error(name, f"must be a boolean, got {type(value).__name__}")


def _check_security_opt(value: object, name: str, layer: Layer) -> None:
    for i, option in enumerate(_texts(value, name, layer)):
        if not _SECURITY_OPT.fullmatch(option):
            raise layer.error(
                f"{name}[{i}]",
                f"{option!r} is not no-new-privileges[:true|false], seccomp=…, apparmor=…, "
                "label=… or systempaths=unconfined",
            )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_extra_hosts(value: object, name: str, layer: Layer) -> None:
    if not isinstance(value, Mapping):
        raise layer.error(name, f"must be a mapping of host name to IP, got {type(value).__name__}")
    for host, address in value.items():
        if not isinstance(host, str) or not _HOSTNAME.fullmatch(host):
            raise layer.error(f"{name}[{host!r}]", "is not a host name")
        if not isinstance(address, str) or not (address == HOST_GATEWAY or _is_ip(address)):
            raise layer.error(
                f"{name}[{host!r}]", f"{address!r} is not an IP address (or {HOST_GATEWAY})"
            )


def _check_dns(value: object, name: str, layer: Layer) -> None:
    for i, server in enumerate(_texts(value, name, layer)):
        if not _is_ip(server):
            raise layer.error(f"{name}[{i}]", f"{server!r} is not an IP address")


_CHECKS = {
    "cpus": _check_cpus,
    "cpu_shares": _check_cpu_shares,
    "cpuset_cpus": _check_cpuset,
    "memory_mb": _check_memory,
    "shm_size_bytes": _check_positive_bytes,
    "gpus": _check_gpus,
    "mounts": _check_mounts,
    "working_dir": _check_working_dir,
    "user": _check_user,
    "ulimits": _check_ulimits,
    "cap_add": _check_capabilities,
    "cap_drop": _check_capabilities,
    "read_only_rootfs": _check_bool,
    "security_opt": _check_security_opt,
    "extra_hosts": _check_extra_hosts,
    "dns": _check_dns,
    "init": _check_bool,
}
assert set(_CHECKS) == FIELD_NAMES


# -- JSON objects (job lines, config files) -------------------------------------------

_JSON_KINDS: dict[str, tuple[type, ...]] = {
    "cpus": (int, float),
    "cpu_shares": (int,),
    "cpuset_cpus": (str,),
    "memory_mb": (int,),
    "shm_size_bytes": (int,),
    "gpus": (int, str),
    "mounts": (list,),
    "working_dir": (str,),
    "user": (str,),
    "ulimits": (list,),
    "cap_add": (list,),
    "cap_drop": (list,),
    "read_only_rootfs": (bool,),
    "security_opt": (list,),
    "extra_hosts": (dict,),
    "dns": (list,),
    "init": (bool,),
}
_ITEM_KEYS = {
    "mounts": (
        {"type", "target"},
        {"type": (str,), "target": (str,), "source": (str,), "read_only": (bool,)}
        | {"size_bytes": (int,)},
    ),
    "ulimits": ({"name", "soft", "hard"}, {"name": (str,), "soft": (int,), "hard": (int,)}),
}


def _json_ok(value: object, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _check_json_object(obj: object, layer: Layer) -> None:
    """Refuse unknown keys and JSON values of the wrong type, naming them."""
    if not isinstance(obj, Mapping):
        raise layer.error("", "must be a JSON object")
    for key, value in obj.items():
        if key not in FIELD_NAMES:
            raise layer.error(str(key), "unknown container setting")
        if value is None:
            continue
        if not _json_ok(value, _JSON_KINDS[key]):
            raise layer.error(key, f"has the wrong JSON type ({type(value).__name__})")
        if key in _ITEM_KEYS:
            required, kinds = _ITEM_KEYS[key]
            for i, item in enumerate(value):
                _check_json_item(item, f"{key}[{i}]", required, kinds, layer)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise layer.error(f"{key}[{i}]", "must be a string")
        elif isinstance(value, dict):
            for host, address in value.items():
                if not isinstance(address, str):
                    raise layer.error(f"{key}[{host!r}]", "must be a string")


def _check_json_item(
    item: object,
    where: str,
    required: set[str],
    kinds: Mapping[str, tuple[type, ...]],
    layer: Layer,
) -> None:
    if not isinstance(item, Mapping):
        raise layer.error(where, "must be a JSON object")
    missing = sorted(required - set(item))
    if missing:
        raise layer.error(f"{where}.{missing[0]}", "is missing")
    for key, value in item.items():
        if key not in kinds:
            raise layer.error(f"{where}.{key}", "unknown key")
        if value is not None and not _json_ok(value, kinds[key]):
            raise layer.error(f"{where}.{key}", f"has the wrong JSON type ({type(value).__name__})")


def settings_from_json(obj: object, layer: Layer) -> ContainerSettings:
    """Settings from a JSON object (a job line's `container`, a config file), with the
    JSON types checked first (dataclasses-json coerces silently), validated for `layer`."""
    _check_json_object(obj, layer)
    assert isinstance(obj, Mapping)
    settings = ContainerSettings.from_dict(dict(obj))
    validate_settings(settings, layer)
    return settings


def resolve_container_settings(
    router: ContainerSettings | None,
    project: ContainerSettings | None,
    job: ContainerSettings | None,
    *,
    project_id: str | None,
    job_settings_allowed: Iterable[str],
    allowed_bind_roots: Iterable[str],
    backend_check: Callable[[ContainerSettings, Layer], None] | None = None,
) -> ContainerSettings:
    """The settings one worker gets: the job's fields checked against what it may set,
    every layer's values and bind sources (and, given, what the backend can express,
    `backend_check`), then the three merged."""
    roots = tuple(allowed_bind_roots)
    check_job_allowed(job, job_settings_allowed)
    layers = ((router, ROUTER), (project, project_layer(project_id)), (job, JOB))
    for settings, layer in layers:
        if settings is not None:
            validate_settings(settings, layer)
            check_bind_sources(settings, roots, layer)
            if backend_check is not None:
                backend_check(settings, layer)
    return merge_settings(router, project, job)

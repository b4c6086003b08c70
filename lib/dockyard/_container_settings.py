"""Container settings: what a worker container may be given, in three layers.

`ContainerSettings` holds the controls a router sets on a worker container (CPU, memory,
GPUs, mounts, user, working directory, ulimits, capabilities, read-only root, security
options, hosts, DNS, init). Every field is optional: `None` inherits from the layer below.
The layers are the router's (`RouterConfig.container`), a project's
(`ProjectConfig.container`) and one job's (`WorkerJob.container`), merged field by field
(`merge_settings`); a set field replaces the one below it whole, tuples and mappings too
(a project's `mounts` replace the router's, they are not appended).

Checks name the field and the layer: a bad router or project value is a `ConfigError`, a
bad job value an `InvalidJobError`. A job may set only the fields the router allows
(`check_job_allowed`), and a bind mount's source must resolve under one of the router's
allowed bind roots whichever layer asks (`check_bind_sources`). The value checks live in
`_container_checks`, the engine mappings in `_docker_settings` and `_swarm_settings`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from dataclasses_json import DataClassJsonMixin

from ._errors import ConfigError, DockyardError, InvalidJobError

__all__ = [
    "FIELD_NAMES",
    "FIELD_NAMES_ORDERED",
    "JOB",
    "MOUNT_TYPES",
    "NO_SETTINGS",
    "ROUTER",
    "ContainerSettings",
    "Layer",
    "Mount",
    "Ulimit",
    "check_bind_roots",
    "check_bind_sources",
    "check_job_allowed",
    "check_job_settings_allowed",
    "merge_settings",
    "project_layer",
]

MIB = 1024 * 1024
MOUNT_TYPES = ("bind", "volume", "tmpfs")


@dataclass(frozen=True)
class Mount(DataClassJsonMixin):
    """One mount: `type` is `"bind"` (a host path, `source` required), `"volume"` (a named
    volume, or an anonymous one without `source`) or `"tmpfs"` (memory; no `source`,
    `size_bytes` caps it). `target` is the absolute path inside the container."""

    type: str
    target: str
    source: str | None = None
    read_only: bool = False
    size_bytes: int | None = None


@dataclass(frozen=True)
class Ulimit(DataClassJsonMixin):
    """One resource limit as `docker run --ulimit NAME=SOFT:HARD` (-1: unlimited)."""

    name: str
    soft: int
    hard: int


@dataclass(frozen=True)
class ContainerSettings(DataClassJsonMixin):
    """What a worker container is given; every field optional, `None` inherits.

    Sizes are bytes unless named `_mb`. `cpus` is a number of CPUs as `docker run --cpus`
    (0.5 = half a core); `gpus` a count, `"all"` or `"device=0,1"`. Lists given for the
    tuple fields are kept as tuples. Values are checked where a layer uses them (router,
    project or job), so the error can name the layer.
    """

    cpus: float | None = None
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None
    memory_mb: int | None = None
    shm_size_bytes: int | None = None
    gpus: int | str | None = None
    mounts: tuple[Mount, ...] | None = None
    working_dir: str | None = None
    user: str | None = None
    ulimits: tuple[Ulimit, ...] | None = None
    cap_add: tuple[str, ...] | None = None
    cap_drop: tuple[str, ...] | None = None
    read_only_rootfs: bool | None = None
    security_opt: tuple[str, ...] | None = None
    extra_hosts: Mapping[str, str] | None = field(default=None, hash=False)
    dns: tuple[str, ...] | None = None
    init: bool | None = None

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.extra_hosts, Mapping):  # a copy: the caller's dict stays theirs
            object.__setattr__(self, "extra_hosts", dict(self.extra_hosts))
        if isinstance(self.cpus, int) and not isinstance(self.cpus, bool):
            object.__setattr__(self, "cpus", float(self.cpus))

    def set_fields(self) -> tuple[str, ...]:
        """The names of the fields this layer sets (not `None`), in declaration order."""
        return tuple(name for name in FIELD_NAMES_ORDERED if getattr(self, name) is not None)


FIELD_NAMES_ORDERED: tuple[str, ...] = tuple(f.name for f in fields(ContainerSettings))
FIELD_NAMES = frozenset(FIELD_NAMES_ORDERED)
_TUPLE_FIELDS = ("mounts", "ulimits", "cap_add", "cap_drop", "security_opt", "dns")
NO_SETTINGS = ContainerSettings()  # what a worker gets when no layer sets anything


# -- layers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """Where a `ContainerSettings` came from, for errors naming the field and the layer."""

    kind: Literal["router", "project", "job"]
    prefix: str  # how an error names the settings: "container", "job.container", …
    label: str  # "router", "project 'p1'", "job"

    def error(self, name: str, problem: str) -> DockyardError:
        """`ConfigError` for the router and project layers, `InvalidJobError` for a job."""
        full = f"{self.prefix}.{name}"
        if self.kind == "job":
            return InvalidJobError(f"{full}: {problem} ({self.label} layer)")
        return ConfigError(full, f"{problem} ({self.label} layer)")


ROUTER = Layer("router", "container", "router")
JOB = Layer("job", "job.container", "job")


def project_layer(project_id: str | None = None) -> Layer:
    label = f"project {project_id!r}" if project_id else "project"
    return Layer("project", "ProjectConfig.container", label)


# -- merging and the layer rules ------------------------------------------------------


def merge_settings(*layers: ContainerSettings | None) -> ContainerSettings:
    """Layers from the bottom (router) to the top (job): a set field replaces the one
    below it whole (tuples and mappings are replaced, never appended); `None` inherits."""
    values: dict[str, Any] = {}
    for settings in layers:
        if settings is None:
            continue
        for name in settings.set_fields():
            values[name] = getattr(settings, name)
    return ContainerSettings(**values)


def check_job_allowed(job: ContainerSettings | None, allowed: Iterable[str]) -> None:
    """A job may set only the fields the router allows: `InvalidJobError` naming the first
    other one."""
    if job is None:
        return
    permitted = frozenset(allowed)
    for name in job.set_fields():
        if name not in permitted:
            shown = ", ".join(sorted(permitted)) or "none"
            raise JOB.error(
                name,
                f"a job may not set this (the router allows jobs to set: {shown}; "
                "see RouterConfig.job_settings_allowed)",
            )


def _under(path: str, root: str) -> bool:
    real_root = os.path.realpath(root)
    return os.path.commonpath([path, real_root]) == real_root


def check_bind_sources(settings: ContainerSettings, roots: Iterable[str], layer: Layer) -> None:
    """Every bind mount's source, resolved (`..` and symlinks followed), lies under one of
    `roots`; without roots every bind is refused. Resolved on the router's host."""
    allowed = tuple(roots)
    for i, mount in enumerate(settings.mounts or ()):
        if mount.type != "bind" or mount.source is None:
            continue
        real = os.path.realpath(mount.source)
        if not any(_under(real, root) for root in allowed):
            where = ", ".join(allowed) if allowed else "none are allowed"
            raise layer.error(
                f"mounts[{i}].source",
                f"bind source {mount.source!r} (resolved {real!r}) is outside the allowed "
                f"bind roots ({where}; see RouterConfig.allowed_bind_roots)",
            )


def check_job_settings_allowed(names: object) -> frozenset[str]:
    """`RouterConfig.job_settings_allowed`: a set of field names; returns it as a frozenset."""
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise ConfigError("job_settings_allowed", "must be a set of container setting names")
    result = frozenset(names)
    for name in sorted(str(n) for n in result):
        if name not in FIELD_NAMES:
            raise ConfigError(
                "job_settings_allowed",
                f"{name!r} is not a container setting (one of {', '.join(FIELD_NAMES_ORDERED)})",
            )
    return result


def check_bind_roots(roots: object) -> tuple[str, ...]:
    """`RouterConfig.allowed_bind_roots`: absolute paths; returns them as a tuple."""
    if isinstance(roots, str) or not isinstance(roots, Iterable):
        raise ConfigError("allowed_bind_roots", "must be a sequence of absolute paths")
    result = tuple(roots)
    for i, root in enumerate(result):
        if not isinstance(root, str) or not root.startswith("/") or "\x00" in root:
            raise ConfigError(
                "allowed_bind_roots", f"entry {i} must be an absolute path, got {root!r}"
            )
    return result

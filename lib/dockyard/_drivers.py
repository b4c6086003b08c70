"""The driver table: each engine driver by name, with the capabilities it declares.

Choosing a driver is one lookup here (`RouterConfig.backend`); adding one is a module with
an `open_driver(config, client, short_pool=, wait_pool=)` factory and an entry below. The
factory is named by its module path and imported on first use, as plugin tables are: a
driver's module builds on the core's, which validates its configuration against this table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from ._container_settings import ContainerSettings, Layer, project_layer
from ._errors import ConfigError

__all__ = [
    "DRIVERS",
    "Capabilities",
    "DriverEntry",
    "check_projects",
    "driver_factory",
    "refuse_settings",
    "refuse_snapshots",
    "settings_check",
]


@dataclass(frozen=True)
class Capabilities:
    """What a driver can do beyond the verbs every driver has."""

    snapshots: bool  # commit a finished worker to an image that the next run starts from
    auto_remove: bool  # the engine removes a finished worker by itself (after its exit)
    local_exit_facts: bool  # OOM kill and run times are known for every exit
    images: bool  # an `ImageStore` of the engine the workers run on
    # `attach_output`: a worker's output from its first byte, attached before its start
    live_output: bool = False
    # `follow_output` and `output_mark`: a running worker's output from the engine's log,
    # after a given line (an adopted worker's, continued where the last manager stopped)
    follow_output: bool = False


@dataclass(frozen=True)
class DriverEntry:
    """One driver: its capabilities, its factory, the engine calls it makes (the
    `operation` label of the engine-call series), and why it cannot snapshot (if so)."""

    capabilities: Capabilities
    factory: str  # `module:function`, imported on first use
    operations: tuple[str, ...]
    no_snapshots_because: str = ""
    # `module:function(settings, layer)` refusing the container settings this driver cannot
    # express (raising the layer's error); "" when it takes every one.
    settings_check: str = ""


_DOCKER_OPERATIONS = (
    "create", "start", "attach", "follow_output", "output_mark", "open_wait", "events",
    "inspect", "logs_tail", "stop", "kill", "ping",
    "remove", "wait_removed", "list_containers",
    "pull", "commit", "tag", "image_inspect", "list_images", "image_history",
    "load_image_archive", "remove_image", "import_container_filesystem", "info",
)  # fmt: skip
# The Swarm driver's: its service and task calls, and the node engine's own.
_SWARM_OPERATIONS = (
    *_DOCKER_OPERATIONS,
    "service_create", "service_inspect", "service_list", "service_logs",
    "service_update", "service_remove", "task_list", "node_list",
)  # fmt: skip


DRIVERS: Mapping[str, DriverEntry] = MappingProxyType(
    {
        "docker": DriverEntry(
            Capabilities(
                snapshots=True,
                auto_remove=True,
                local_exit_facts=True,
                images=True,
                live_output=True,
                follow_output=True,
            ),
            "dockyard._docker_driver:open_driver",
            _DOCKER_OPERATIONS,
        ),
        # Each job a `replicated-job` service: it may run on any node of the swarm.
        "swarm": DriverEntry(
            Capabilities(
                snapshots=False,
                auto_remove=False,
                local_exit_facts=False,
                images=False,
                live_output=True,  # the service's log, followed until its task ended
            ),
            "dockyard._swarm:open_driver",
            _SWARM_OPERATIONS,
            no_snapshots_because="a snapshot image is committed on the node that ran the job "
            "and the next run may land on another node",
            settings_check="dockyard._swarm_settings:check_swarm_expressible",
        ),
    }
)


def driver_factory(name: str) -> Callable[..., Any]:
    """The factory of the driver called `name` (a validated `RouterConfig.backend`)."""
    module, _, function = DRIVERS[name].factory.partition(":")
    factory: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return factory


def refuse_snapshots(name: str, field: str) -> None:
    """Raise `ConfigError` for `field` when the driver called `name` cannot keep snapshots."""
    entry = DRIVERS[name]
    if entry.capabilities.snapshots:
        return
    able = " or ".join(repr(n) for n, e in DRIVERS.items() if e.capabilities.snapshots)
    raise ConfigError(
        field,
        f"snapshots are not available with backend {name!r}: {entry.no_snapshots_because}; "
        f"turn snapshot_enabled off (globally and per project) or use backend {able}",
    )


class _Project(Protocol):
    """What the check reads of a `ProjectConfig`."""

    @property
    def id(self) -> str: ...
    @property
    def snapshot_enabled(self) -> bool | None: ...
    @property
    def container(self) -> ContainerSettings | None: ...


def check_projects(name: str, projects: Iterable[_Project]) -> None:
    """Refuse per-project snapshots, and container settings, that the driver called `name`
    cannot honour (before any launch)."""
    for project in projects:
        if project.snapshot_enabled:
            refuse_snapshots(name, f"ProjectConfig.snapshot_enabled ({project.id})")
        if project.container is not None:
            refuse_settings(name, project.container, project_layer(project.id))


SettingsCheck = Callable[["ContainerSettings", "Layer"], None]


def settings_check(name: str) -> SettingsCheck | None:
    """What refuses container settings the driver called `name` cannot express (None: it
    takes them all); imported on first use, as the factories."""
    target = DRIVERS[name].settings_check
    if not target:
        return None
    module, _, function = target.partition(":")
    check: SettingsCheck = getattr(importlib.import_module(module), function)
    return check


def refuse_settings(name: str, settings: ContainerSettings | None, layer: Layer) -> None:
    """Raise the layer's error naming the first field of `settings` that the driver called
    `name` cannot express; never silently dropped."""
    check = settings_check(name)
    if check is not None and settings is not None:
        check(settings, layer)

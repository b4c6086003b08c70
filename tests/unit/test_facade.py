"""The strict facade (spec §1): frozen `__all__` lists, re-export identity, docstrings,
private modules, and no module-level state shared between managers."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import inspect
import logging
import pkgutil
import threading
from dataclasses import is_dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cachetools
import docker
import pytest
import requests

import dockyard
import dockyard.container_manager
import dockyard.worker_container_launcher
from dockyard import ContainerManager, RouterConfig, WorkerJob
from dockyard._docker import DockerGateway
from dockyard._images import ImagePuller
from dockyard._registry import WorkerRegistry
from dockyard._slots import SlotGate
from dockyard.testing import DEFAULT_IMAGE as BASE_IMAGE
from dockyard.testing import FakeDockerAPI

DOCKYARD_ALL = [
    "ActiveWorker",
    "ConfigError",
    "ContainerManager",
    "CredentialProvider",
    "DockerUnavailableError",
    "DockyardError",
    "DuplicateJobError",
    "ForkedManagerError",
    "InvalidJobError",
    "JobDataOffloadError",
    "JobDataStore",
    "NoWorkerSlotError",
    "ProjectConfig",
    "ProjectDirectory",
    "RedisJobDataStore",
    "RegistryCredentialProvider",
    "Reporter",
    "RouterConfig",
    "SnapshotMetadata",
    "SnapshotRegistry",
    "WorkerCancelledError",
    "WorkerContainerLaunchConfig",
    "WorkerContainerLaunchContext",
    "WorkerContainerLauncherDependencies",
    "WorkerImageResolutionError",
    "WorkerJob",
    "WorkerLifecycleListener",
    "WorkerOutcome",
    "WorkerSpawnError",
    "launch_worker_container",
]

CONTAINER_MANAGER_ALL = [
    "ContainerManager",
    "WorkerContainerLaunchConfig",
    "WorkerContainerLaunchContext",
    "WorkerContainerLauncherDependencies",
    "launch_worker_container",
]

LAUNCHER_NAMES = [
    "WorkerContainerLaunchConfig",
    "WorkerContainerLaunchContext",
    "WorkerContainerLauncherDependencies",
    "launch_worker_container",
]

# Where each public name is defined; the facade must hand out that very object.
DEFINED_IN = {
    "ActiveWorker": "dockyard._models",
    "WorkerLifecycleListener": "dockyard._models",
    "WorkerOutcome": "dockyard._models",
    "ConfigError": "dockyard._errors",
    "DockerUnavailableError": "dockyard._errors",
    "DockyardError": "dockyard._errors",
    "DuplicateJobError": "dockyard._errors",
    "ForkedManagerError": "dockyard._errors",
    "InvalidJobError": "dockyard._errors",
    "JobDataOffloadError": "dockyard._errors",
    "NoWorkerSlotError": "dockyard._errors",
    "WorkerCancelledError": "dockyard._errors",
    "WorkerImageResolutionError": "dockyard._errors",
    "WorkerSpawnError": "dockyard._errors",
    "CredentialProvider": "dockyard._environment",
    "JobDataStore": "dockyard._job_data",
    "ProjectDirectory": "dockyard._jobs",
    "Reporter": "dockyard._sentry",
    "ContainerManager": "dockyard.container_manager",
    "ProjectConfig": "dockyard._config",
    "RouterConfig": "dockyard._config",
    "RedisJobDataStore": "dockyard._redis_store",
    "RegistryCredentialProvider": "dockyard._registry_auth",
    "SnapshotMetadata": "dockyard._snapshot_registry",
    "SnapshotRegistry": "dockyard._snapshot_registry",
    "WorkerJob": "dockyard._jobs",
    **{name: "dockyard.worker_container_launcher" for name in LAUNCHER_NAMES},
}

PUBLIC_MODULES = {"aio", "container_manager", "testing", "worker", "worker_container_launcher"}


def all_modules() -> list[ModuleType]:
    return [
        importlib.import_module(f"dockyard.{info.name}")
        for info in pkgutil.iter_modules(dockyard.__path__)
    ]


# --------------------------------------------------------------------------- __all__


def test_dockyard_all_is_frozen() -> None:
    assert dockyard.__all__ == DOCKYARD_ALL
    assert sorted(DOCKYARD_ALL) == DOCKYARD_ALL


def test_container_manager_all_is_frozen() -> None:
    assert dockyard.container_manager.__all__ == CONTAINER_MANAGER_ALL
    assert sorted(CONTAINER_MANAGER_ALL) == CONTAINER_MANAGER_ALL


def test_launcher_module_exports_its_names() -> None:
    assert sorted(dockyard.worker_container_launcher.__all__) == LAUNCHER_NAMES


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, Any] = {}
    exec("from dockyard import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == DOCKYARD_ALL


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize("name", DOCKYARD_ALL)
def test_each_public_name_is_its_definition(name: str) -> None:
    module = importlib.import_module(DEFINED_IN[name])
    obj = getattr(dockyard, name)
    assert obj is getattr(module, name)
    assert obj.__module__ == DEFINED_IN[name]


@pytest.mark.parametrize("name", LAUNCHER_NAMES)
def test_compatibility_reexports_are_the_launcher_objects(name: str) -> None:
    launcher = dockyard.worker_container_launcher
    assert getattr(dockyard.container_manager, name) is getattr(launcher, name)
    assert getattr(dockyard, name) is getattr(launcher, name)


def test_container_manager_is_the_same_class_everywhere() -> None:
    assert dockyard.ContainerManager is dockyard.container_manager.ContainerManager


# --------------------------------------------------------------------------- docs


def _own_members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties defined by dockyard itself in `cls` or its bases."""
    members = []
    for klass in cls.__mro__:
        if not klass.__module__.startswith("dockyard"):
            continue
        data_fields = {f.name for f in dataclasses.fields(klass)} if is_dataclass(klass) else set()
        for name, member in vars(klass).items():
            if name.startswith("_") or name in data_fields:  # a field's default is no method
                continue
            if isinstance(member, property | staticmethod | classmethod) or inspect.isfunction(
                member
            ):
                members.append((f"{klass.__name__}.{name}", member))
    return members


@pytest.mark.parametrize("name", DOCKYARD_ALL)
def test_every_public_name_has_a_docstring(name: str) -> None:
    obj = getattr(dockyard, name)
    assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
    if inspect.isclass(obj):
        missing = []
        for qualified, member in _own_members(obj):
            target = member.fget if isinstance(member, property) else member
            target = getattr(target, "__func__", target)
            if not (getattr(target, "__doc__", None) or "").strip():
                missing.append(qualified)
        assert missing == [], f"public members without a docstring: {missing}"


def test_modules_have_docstrings_and_only_the_facade_is_public() -> None:
    for module in [dockyard, *all_modules()]:
        assert (module.__doc__ or "").strip(), f"{module.__name__} has no docstring"
        short = module.__name__.rsplit(".", 1)[-1]
        if module is not dockyard:
            assert short.startswith("_") or short in PUBLIC_MODULES, module.__name__
        assert isinstance(getattr(module, "__all__", None), list), module.__name__


# --------------------------------------------------------------------------- state


FORBIDDEN_GLOBALS: tuple[type, ...] = (
    docker.APIClient,
    docker.DockerClient,
    requests.Session,
    concurrent.futures.Executor,
    threading.Thread,
    cachetools.Cache,
)
DOCKYARD_STATE: tuple[type, ...] = (
    ContainerManager,
    DockerGateway,
    ImagePuller,
    SlotGate,
    WorkerRegistry,
    dockyard.SnapshotRegistry,
)


@pytest.mark.parametrize("module", all_modules(), ids=lambda m: m.__name__)
def test_no_module_level_client_executor_or_registry(module: ModuleType) -> None:
    forbidden = FORBIDDEN_GLOBALS + DOCKYARD_STATE
    offenders = [
        f"{module.__name__}.{name}: {type(value).__name__}"
        for name, value in vars(module).items()
        if isinstance(value, forbidden)
    ]
    assert offenders == []


def _mutable_globals() -> dict[str, str]:
    """A fingerprint of every module-level dict, list and set in the package."""
    state = {}
    for module in [dockyard, *all_modules()]:
        for name, value in vars(module).items():
            if isinstance(value, dict | list | set | bytearray) and not name.startswith("__"):
                state[f"{module.__name__}.{name}"] = repr(value)
    return state


def test_running_managers_leaves_module_globals_untouched() -> None:
    before = _mutable_globals()
    for n in range(2):
        api = FakeDockerAPI()
        api.exit_on_start = 0
        config = RouterConfig(worker_image=BASE_IMAGE, router_instance_id=f"facade-{n}")
        with ContainerManager(config, docker_client=api) as manager:  # type: ignore[arg-type]
            manager.spawn_worker(WorkerJob("job", "trello", {"projectId": "p", "cardId": "c"}))
            assert manager.wait_for_worker("job", timeout=10).status == "succeeded"
            manager.snapshots.register("p", "c", "cascade-snapshot-x:latest")
    assert _mutable_globals() == before


def test_package_logger_has_a_null_handler_and_no_other() -> None:
    handlers = logging.getLogger("dockyard").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
    assert all(isinstance(h, logging.NullHandler) for h in handlers)


def test_library_never_configures_sentry_or_logging() -> None:
    source_dir = Path(dockyard.__file__).parent
    banned = (
        "sentry_sdk.init",
        "sentry_sdk.set_tag",
        "sentry_sdk.set_extra",
        "configure_scope",
        "push_scope",
        "logging.basicConfig",
    )
    for path in sorted(source_dir.glob("*.py")):
        text = path.read_text()
        for needle in banned:
            assert needle not in text, f"{path.name} uses {needle}"

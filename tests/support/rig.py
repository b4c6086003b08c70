"""A manager on `dockyard.testing`'s fake engine, and what the tests of it share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from dockyard import (
    ContainerManager,
    ProjectConfig,
    RouterConfig,
    WorkerJob,
    WorkerLifecycleListener,
)
from dockyard._driver import ContainerSpec
from dockyard.testing import DEFAULT_IMAGE, FakeDockerAPI, RecordingReporter
from support.hosts import StaticProjects
from support.listeners import ListenerRecorder

BASE_IMAGE = DEFAULT_IMAGE
PROJECT_DIGEST = "registry.example/team/worker@sha256:" + "ab" * 32
INSTANCE = "unit-router"


@dataclass
class Rig:
    api: FakeDockerAPI
    reporter: RecordingReporter
    listener: ListenerRecorder
    manager: ContainerManager


def fake_manager(
    api: FakeDockerAPI,
    reporter: RecordingReporter,
    listener: WorkerLifecycleListener | None,
    projects: StaticProjects | None = None,
    **overrides: Any,
) -> ContainerManager:
    """A manager on the fake engine: quick grace, slot wait and retry window unless overridden."""
    settings: dict[str, Any] = {
        "worker_image": BASE_IMAGE,
        "router_instance_id": INSTANCE,
        "stop_grace_s": 1,
        "slot_wait_timeout_s": 5,
        "wait_retry_window_s": 0.5,
    }
    settings.update(overrides)
    return ContainerManager(
        RouterConfig(**settings),
        docker_client=api,  # type: ignore[arg-type]
        reporter=reporter,
        listener=listener,
        projects=projects,
    )


def job(job_id: str | None = "job-1", **data: Any) -> WorkerJob:
    return WorkerJob(job_id, "trello", data)


def verified_project(**overrides: Any) -> ProjectConfig:
    settings: dict[str, Any] = {
        "worker_image": "registry.example/team/worker:2",
        "worker_image_status": "verified",
        "worker_image_digest": PROJECT_DIGEST,
    }
    settings.update(overrides)
    return ProjectConfig("proj", **settings)


class Creates(Protocol):
    """The Docker gateway or driver: what `running` needs of it."""

    def create(self, spec: ContainerSpec) -> str: ...
    def start(self, container_id: str) -> None: ...


def running(engine: Creates, name: str = "c", *, auto_remove: bool = False) -> str:
    """A container created and started through `engine` (a plain spec: no network)."""
    spec = ContainerSpec(
        image=DEFAULT_IMAGE, name=name, env={}, labels={}, memory_bytes=1 << 26,
        network="none", auto_remove=auto_remove,
    )  # fmt: skip
    container_id = engine.create(spec)
    engine.start(container_id)
    return container_id

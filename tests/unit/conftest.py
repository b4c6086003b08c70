"""Fixtures of the unit tests: managers on `dockyard.testing`'s fake engine (`support.rig`),
and the fake engine's Docker API with a gateway on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dockyard import ContainerManager
from dockyard._docker import DockerGateway
from dockyard.testing import FakeDockerAPI, RecordingReporter
from support.hosts import StaticProjects
from support.listeners import ListenerRecorder
from support.rig import Rig, fake_manager


@pytest.fixture
def rig_factory() -> Iterator[Callable[..., Rig]]:
    """`rig_factory(**config_overrides) -> Rig`: a manager on a fresh fake engine; closed after."""
    made: list[ContainerManager] = []

    def make(
        *,
        images: set[str] | None = None,
        projects: StaticProjects | None = None,
        listener: ListenerRecorder | None = None,
        **overrides: Any,
    ) -> Rig:
        api = FakeDockerAPI(images)
        reporter = RecordingReporter()
        listener = listener or ListenerRecorder()
        manager = fake_manager(api, reporter, listener, projects=projects, **overrides)
        made.append(manager)
        return Rig(api, reporter, listener, manager)

    yield make
    for manager in made:
        manager.close()


@pytest.fixture
def rig(rig_factory: Callable[..., Rig]) -> Rig:
    """A `Rig` with the default settings."""
    return rig_factory()


@pytest.fixture
def api() -> FakeDockerAPI:
    """The fake engine's Docker API, with no image."""
    return FakeDockerAPI()


@pytest.fixture
def gateway(api: FakeDockerAPI) -> Iterator[DockerGateway]:
    """A Docker gateway on `api`, its events stream idle-renewed every 0.2 s."""
    made = DockerGateway.from_client(api, heartbeat_s=0.2)  # type: ignore[arg-type]
    yield made
    made.close()

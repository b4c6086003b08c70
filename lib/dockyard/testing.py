"""A fake Docker engine for tests that need no Docker: pass a `FakeDockerAPI` as `docker_client`.

The fake stands in for docker-py's low-level `APIClient`, so the real gateway, launcher,
exit handling and timers run against an engine whose behaviour and failures the test
chooses::

    from dockyard import ContainerManager, RouterConfig, WorkerJob
    from dockyard.testing import FakeDockerAPI, api_error

    api = FakeDockerAPI(images={"worker:1"})
    config = RouterConfig(worker_image="worker:1", router_instance_id="test")
    with ContainerManager(config, docker_client=api) as manager:
        worker = manager.spawn_worker(WorkerJob("job-1", "build", {}))
        api.exit(worker.container_id, 0)  # the container exits
        assert manager.wait_for_worker("job-1", timeout=5).status == "succeeded"

        api.failures["create_container"] = [api_error(500, "disk full")]  # scripted
        manager.spawn_worker(WorkerJob("job-2", "build", {}))  # raises WorkerSpawnError

Exits reach dockyard as the real engine sends them: as `die` events on the events stream
(`GET /events`); `break_event_streams()` breaks that stream the way an engine restart does.
`failures[method]` holds exceptions raised, in order, by the next calls of `method` (the
APIClient method name, or `"events"` for connecting the events stream); `calls` records
every call as `(method, detail)`. Images live in `image_names`; a pull adds the image unless
`pull_error` is set. A commit records one more layer than its container's image and that
image as its `Parent`; removing an image that is another's `Parent` is refused with the
engine's 409 "image has dependent child images"; an export piped into an import
(`POST /images/create?fromSrc=-`) makes a one-layer image with no parent whose config is
what its `changes` say. `RecordingReporter` collects what dockyard reports instead of Sentry.

A level up, `FakeDriver` fakes the engine at the driver interface, passed as `driver=`:
typed answers and errors, and the capabilities the test picks (`DOCKER_LIKE`, the default,
or `SWARM_LIKE`: no auto-removal, images or snapshots)::

    driver = FakeDriver(capabilities=SWARM_LIKE)
    with ContainerManager(config, driver=driver) as manager:
        worker = manager.spawn_worker(WorkerJob("job-1", "build", {}))
        driver.exit(worker.container_id, 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._fake_answers import FakeEventStream, api_error, not_found
from ._fake_docker_api import FakeDockerAPI
from ._fake_driver import DOCKER_LIKE, SWARM_LIKE, FakeDriver, FakeImageStore
from ._fake_engine import DEFAULT_IMAGE, FakeContainer
from ._sentry import Report, Reporter

__all__ = [
    "DEFAULT_IMAGE",
    "DOCKER_LIKE",
    "SWARM_LIKE",
    "FakeContainer",
    "FakeDockerAPI",
    "FakeDriver",
    "FakeEventStream",
    "FakeImageStore",
    "RecordingReporter",
    "Report",
    "api_error",
    "not_found",
]


@dataclass
class RecordingReporter(Reporter):
    """A `Reporter` that keeps every report (pass it as `ContainerManager(reporter=...)`)."""

    reports: list[Report] = field(default_factory=list)

    def _deliver(self, report: Report) -> None:
        self.reports.append(report)

    def sources(self) -> list[str]:
        """The `source` tag of every report, in order."""
        return [r.source for r in self.reports]

    def of(self, source: str) -> list[Report]:
        """The reports with this `source` tag."""
        return [r for r in self.reports if r.source == source]

"""Unit tests (no engine) of the cascade-compatibility pieces: registry credentials,
settings from the environment, snapshot mode without a project, the project image that
is still missing after its pull, Sentry extras, the long image-write timeout."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import docker.errors
import pytest
import requests

from dockyard import RouterConfig, WorkerImageResolutionError
from dockyard._docker import DockerGateway
from dockyard._errors import ImageNotFoundError, translate
from dockyard._naming import LabelSchema
from dockyard._registry_auth import DOCKER_HUB_SERVER, RegistryAuth, RegistryAuthResolver
from dockyard._sentry import Reporter
from dockyard._snapshot_registry import SnapshotRegistry
from dockyard._snapshots import SnapshotManager
from support.hosts import StaticProjects, snapshot_worker
from support.rig import PROJECT_DIGEST, Rig, job, verified_project

# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("image", "server"),
    [
        ("redis:7", DOCKER_HUB_SERVER),
        ("library/redis", DOCKER_HUB_SERVER),
        ("mongrel/cascade-worker:latest", DOCKER_HUB_SERVER),
        ("ghcr.io/mongrel-intelligence/cascade-worker:latest", "ghcr.io"),
        ("localhost/worker", "localhost"),
        ("localhost:5000/worker:1", "localhost:5000"),
        ("registry:5000/team/worker", "registry:5000"),
        ("127.0.0.1:41234/t/w@sha256:" + "a" * 64, "127.0.0.1:41234"),
    ],
)
def test_the_server_comes_from_the_reference_or_is_docker_hub(image: str, server: str) -> None:
    resolver = RegistryAuthResolver(RouterConfig(registry_username="u", registry_password="p"))
    assert resolver.for_image(image) == RegistryAuth("u", "p", server)


def test_an_explicit_server_wins() -> None:
    config = RouterConfig(
        registry_username="u", registry_password="p", registry_server="https://r.example/v1/"
    )
    auth = RegistryAuthResolver(config).for_image("ghcr.io/a/b")
    assert auth is not None and auth.server == "https://r.example/v1/"


def test_no_credentials_pull_anonymously() -> None:
    assert RegistryAuthResolver(RouterConfig()).for_image("ghcr.io/a/b") is None


@pytest.mark.parametrize("given", [{"registry_username": "u"}, {"registry_password": "pw-only"}])
def test_partial_credentials_warn_once_without_values(
    given: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dockyard")
    resolver = RegistryAuthResolver(RouterConfig(**given))
    assert resolver.for_image("ghcr.io/a/b") is None
    assert resolver.for_image("ghcr.io/a/c") is None
    warnings = [r for r in caplog.records if "partial" in r.getMessage()]
    assert len(warnings) == 1
    assert "pw-only" not in caplog.text


def test_the_password_is_in_no_repr() -> None:
    config = RouterConfig(registry_username="u", registry_password="hunter2-secret")
    auth = RegistryAuthResolver(config).for_image("ghcr.io/a/b")
    for text in (repr(config), str(config), repr(auth), repr(RegistryAuthResolver(config))):
        assert "hunter2" not in text


def test_registry_settings_come_from_the_originals_variables() -> None:
    config = RouterConfig.from_env(
        {
            "WORKER_IMAGE_REGISTRY_USERNAME": "bot",
            "WORKER_IMAGE_REGISTRY_PASSWORD": "ghp_token",
            "WORKER_IMAGE_REGISTRY_SERVER": "ghcr.io",
            "CASCADE_ROUTER_INSTANCE": "r1",
        }
    )
    assert (config.registry_username, config.registry_password, config.registry_server) == (
        "bot",
        "ghp_token",
        "ghcr.io",
    )


def test_the_header_is_what_the_engine_expects() -> None:
    import base64  # noqa: PLC0415
    import json  # noqa: PLC0415

    header = RegistryAuth("u", "p", "ghcr.io").header()
    decoded = json.loads(base64.urlsafe_b64decode(header))
    assert decoded == {"username": "u", "password": "p", "serveraddress": "ghcr.io"}


class PullAPI:
    """Just the public requests surface `DockerGateway.pull` uses; records the headers sent."""

    base_url = "http+docker://fake"
    api_version = "1.41"
    timeout = 60

    def __init__(self, failure: BaseException | None = None) -> None:
        self.headers: list[Any] = []
        self.failure = failure

    def post(self, url: str, **kwargs: Any) -> Any:
        self.headers.append(kwargs.get("headers"))
        if self.failure is not None:
            raise self.failure
        return self

    def raise_for_status(self) -> None:
        return None

    def iter_lines(self) -> Any:
        return iter([b'{"status": "Downloaded"}'])

    def close(self) -> None:
        return None


def test_a_pull_sends_the_auth_header_only_with_credentials() -> None:
    api = PullAPI()
    gateway = DockerGateway(api)  # type: ignore[arg-type]
    gateway.pull("ghcr.io/a/b:1", 5)
    auth = RegistryAuth("u", "pw", "ghcr.io")
    gateway.pull("ghcr.io/a/b:1", 5, auth_config=auth)
    assert api.headers == [None, {"X-Registry-Auth": auth.header()}]


def test_a_failed_authenticated_pull_carries_no_request_or_frames() -> None:
    failure = requests.exceptions.ConnectionError("engine gone")
    api = PullAPI(failure)
    gateway = DockerGateway(api)  # type: ignore[arg-type]
    with pytest.raises(Exception) as raised:
        gateway.pull("ghcr.io/a/b:1", 5, auth_config=RegistryAuth("u", "pw", "ghcr.io"))
    err = raised.value
    assert "pull of ghcr.io/a/b:1 failed" in str(err)
    assert err.__cause__ is None and err.__suppress_context__
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "_drain" not in frames  # the frame that held the header


# --------------------------------------------------------------------------- long timeout


class CommitAPI:
    base_url = "http+docker://fake"
    api_version = "1.41"
    timeout = 60

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []

    def post(self, url: str, **kwargs: Any) -> Any:
        self.posts.append({"url": url, **kwargs})
        return self

    def raise_for_status(self) -> None:
        return None

    def json(self) -> Any:
        return {"Id": "sha256:new"}


def test_commits_use_the_long_image_write_timeout() -> None:
    api = CommitAPI()
    gateway = DockerGateway(api)  # type: ignore[arg-type]
    gateway.image_write_timeout_s = 2400
    assert gateway.commit("c1", "", "", ["ENV A="]) == "sha256:new"
    (post,) = api.posts
    assert post["url"].endswith("/commit") and post["timeout"] == 2400
    assert post["params"]["changes"] == ["ENV A="] and post["params"]["container"] == "c1"


def test_the_manager_gives_the_gateway_the_configured_write_timeout(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(image_write_timeout_s=3600)
    assert rig.manager._parts.driver.images.image_write_timeout_s == 3600
    assert RouterConfig().image_write_timeout_s > RouterConfig().docker_timeout_s


# --------------------------------------------------------------------------- spawn rules


def test_snapshot_mode_stays_off_for_a_job_without_a_project(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(snapshot_enabled=True)
    worker = rig.manager.spawn_worker(job(workItemId="w-1"))  # no projectId
    assert worker.snapshot_enabled is False
    container = rig.api.only_container()
    assert container.host_config["auto_remove"] is True
    assert container.labels["cascade.snapshot.enabled"] == "false"
    assert "CASCADE_SNAPSHOT_ENABLED" not in container.env_map()


def test_snapshot_mode_uses_the_global_setting_for_an_unconfigured_project(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(snapshot_enabled=True)
    worker = rig.manager.spawn_worker(job(projectId="not-configured", workItemId="w-1"))
    assert worker.snapshot_enabled is True


def test_a_project_image_still_missing_after_its_pull_is_a_resolution_error(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(images=set(), projects=StaticProjects(verified_project()))
    missing = docker.errors.ImageNotFound("No such image: " + PROJECT_DIGEST)
    rig.api.failures["create_container"] = [missing, missing]
    with pytest.raises(WorkerImageResolutionError, match="still missing") as raised:
        rig.manager.spawn_worker(job(projectId="proj"))
    assert isinstance(translate("create", raised.value.__cause__), ImageNotFoundError)
    assert isinstance(raised.value.__cause__.__cause__, docker.errors.ImageNotFound)
    assert rig.api.calls_of("pull") == [PROJECT_DIGEST]
    assert rig.manager.get_active_worker_count() == 0


def test_pull_fallback_extras_keep_the_originals_names(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(images={"other:1"}, projects=StaticProjects(verified_project()))
    rig.api.pull_error = "manifest unknown"
    with pytest.raises(WorkerImageResolutionError):
        rig.manager.spawn_worker(job(projectId="proj"))
    (report,) = rig.reporter.reports
    assert report.source == "worker_image_pull_fallback"
    assert report.extras == {"jobId": "job-1", "imageName": PROJECT_DIGEST, "isCustomBase": True}


# --------------------------------------------------------------------------- sentry extras


class ExtrasReporter(Reporter):
    def __init__(self) -> None:
        self.reports: list[tuple[str, str, dict[str, Any]]] = []

    def report(self, err: BaseException, source: str, **kwargs: Any) -> None:
        self.reports.append(
            (source, kwargs.get("level", "error"), dict(kwargs.get("extras") or {}))
        )


class RefusingCommitGateway:
    """The calls a snapshot commit makes before the engine refuses the commit itself."""

    def image_inspect(self, image: str) -> dict[str, Any]:
        raise docker.errors.ImageNotFound(f"No such image: {image}")

    def inspect(self, container_id: str) -> dict[str, Any]:
        return {"Config": {"Env": ["JOB_ID=j", "LOG_LEVEL=info"]}}

    def commit(self, *args: Any) -> str:
        raise docker.errors.APIError("commit refused")


def test_a_failed_snapshot_commit_reports_the_originals_extras() -> None:
    registry = SnapshotRegistry(
        default_ttl_s=3600, max_count=5, max_size_bytes=10**12, project_ttl=lambda _p: None
    )
    config = RouterConfig(router_instance_id="unit", snapshot_image_prefix="unit-snap-")
    reporter = ExtrasReporter()
    gateway = RefusingCommitGateway()
    manager = SnapshotManager(
        gateway,  # type: ignore[arg-type]
        registry,
        reporter,
        config,
        LabelSchema("cascade"),
        worker_env=lambda worker_id: gateway.inspect(worker_id)["Config"]["Env"],
    )
    worker = snapshot_worker()
    assert manager.commit(worker, ["JOB_ID"]) is None
    ((source, level, extras),) = reporter.reports
    assert (source, level) == ("snapshot_commit", "warning")
    assert extras["imageName"].startswith("unit-snap-")
    assert {k: extras[k] for k in ("jobId", "containerId", "projectId", "workItemId")} == {
        "jobId": "j",
        "containerId": worker.container_id,
        "projectId": "p",
        "workItemId": "w",
    }

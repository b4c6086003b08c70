"""Registry credentials on a real registry: Debian's `docker-registry` with htpasswd auth.

The registry is started by the ``registry`` fixture on a free 127.0.0.1 port (the engine
allows plain HTTP to 127.0.0.0/8) and stopped by its pid at teardown. A locally built
image is pushed there with credentials and removed from the engine, so a spawn has to
pull it again, which the registry only serves to the configured account.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from dockyard import WorkerJob
from dockyard._registry_auth import RegistryAuth
from support.engine import is_podman
from support.registry import Registry, push, running_registry
from support.sentry import CapturedEvents

USER = "dockyard-ci"
PASSWORD = "s3cret-registry-pw-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A docker-registry with htpasswd auth on a free 127.0.0.1 port; stopped by pid."""
    with running_registry(tmp_path_factory.mktemp("registry"), USER, PASSWORD) as running:
        yield running


@pytest.fixture
def pushed_image(
    registry: Registry, docker_client: docker.DockerClient, test_image: str
) -> Iterator[str]:
    """The test image pushed to the registry under a fresh name, then removed locally."""
    repository = f"{registry.host}/dockyard-test/worker-{uuid.uuid4().hex[:8]}"
    reference = f"{repository}:v1"
    try:
        push(docker_client, registry, test_image, repository, "v1")
    finally:
        docker_client.images.remove(reference)  # only the tag; the test image stays
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(reference)
    yield reference
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.images.remove(reference)


def _present(client: docker.DockerClient, reference: str) -> bool:
    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        return False
    return True


def _event_text(events: CapturedEvents) -> str:
    return json.dumps(list(events), default=str)


def test_a_spawn_pulls_the_missing_image_with_the_configured_credentials(
    make_manager: Callable[..., Any],
    registry: Registry,
    pushed_image: str,
    docker_client: docker.DockerClient,
) -> None:
    manager = make_manager(
        worker_image=pushed_image,
        registry_username=registry.username,
        registry_password=registry.password,
    )
    worker = manager.spawn_worker(WorkerJob(id="reg-ok", type="manual", command=["true"]))
    assert worker.image == pushed_image
    assert manager.wait_for_worker("reg-ok", timeout=30).status == "succeeded"
    assert _present(docker_client, pushed_image)


def test_an_explicit_server_is_used_for_the_credentials(
    make_manager: Callable[..., Any],
    registry: Registry,
    pushed_image: str,
) -> None:
    manager = make_manager(
        worker_image=pushed_image,
        registry_username=registry.username,
        registry_password=registry.password,
        registry_server=registry.host,
    )
    manager.spawn_worker(WorkerJob(id="reg-server", type="manual", command=["true"]))
    assert manager.wait_for_worker("reg-server", timeout=30).status == "succeeded"


def test_wrong_credentials_fail_clearly_and_the_report_holds_no_password(
    make_manager: Callable[..., Any],
    registry: Registry,
    pushed_image: str,
    docker_client: docker.DockerClient,
    sentry_events: CapturedEvents,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "wrong-" + registry.password
    manager = make_manager(
        worker_image=pushed_image,
        registry_username=registry.username,
        registry_password=wrong,
    )
    caplog.set_level(logging.DEBUG, logger="dockyard")
    with pytest.raises(Exception) as raised:
        manager.spawn_worker(WorkerJob(id="reg-wrong", type="manual", command=["true"]))
    message = str(raised.value)
    assert pushed_image.rsplit(":", 1)[0] in message
    assert "unauthorized" in message.lower() or "authentication" in message.lower()
    assert not _present(docker_client, pushed_image)
    assert manager.get_active_worker_count() == 0

    events = sentry_events.wait_for("worker_image_pull_fallback")
    assert events[0]["extra"]["imageName"] == pushed_image
    header = RegistryAuth(registry.username, wrong, registry.host).header()
    text = _event_text(sentry_events)
    for secret in (wrong, registry.password, header, header.rstrip("=")):
        assert secret not in text
        assert secret not in caplog.text
    assert wrong not in repr(manager.config)


def test_partial_credentials_warn_once_and_pull_anonymously(
    make_manager: Callable[..., Any],
    registry: Registry,
    pushed_image: str,
    docker_client: docker.DockerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = make_manager(worker_image=pushed_image, registry_username=registry.username)
    caplog.set_level(logging.WARNING, logger="dockyard")
    with pytest.raises(Exception) as raised:
        manager.spawn_worker(WorkerJob(id="reg-partial", type="manual", command=["true"]))
    # Anonymous: the authenticated registry refuses the pull, in the engine's words (Docker:
    # "no basic auth credentials"; Podman: "401: unauthorized: authentication required").
    refusal = "unauthorized" if is_podman(docker_client) else "no basic auth credentials"
    assert refusal in str(raised.value)
    assert not _present(docker_client, pushed_image)
    partial = [r for r in caplog.records if "partial worker-image registry" in r.getMessage()]
    assert len(partial) == 1
    assert registry.username not in partial[0].getMessage()

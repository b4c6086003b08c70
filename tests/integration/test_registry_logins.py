"""Registry logins as a Docker host has them, and pull policies, on a real registry.

The registry (Debian's `docker-registry` with htpasswd, `support.registry`) is this module's
own: one test rewrites its htpasswd file, which the registry reads again when it changes
(checked below before relying on it). The Docker config is a temporary `DOCKER_CONFIG`
directory and the credential helper `docker-credential-dytest` a shell script in a
temporary directory put on `PATH`: the manager runs in this process and looks both up at
every pull, so `monkeypatch.setenv` reaches it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from dockyard import WorkerImageResolutionError, WorkerJob, WorkerSpawnError
from dockyard._registry_auth import RegistryAuth
from support.registry import Registry, answers, push, running_registry
from support.sentry import CapturedEvents
from support.threads import eventually

USER = "dockyard-logins"
FIRST_PASSWORD = "first-pw-" + uuid.uuid4().hex[:8]
SECOND_PASSWORD = "second-pw-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def login_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("logins"), USER, FIRST_PASSWORD) as running:
        yield running


@pytest.fixture
def registry(login_registry: Registry) -> Iterator[Registry]:
    """The module's registry, its password back to the first one after each test."""
    yield login_registry
    login_registry.set_password(FIRST_PASSWORD)
    eventually(lambda: answers(login_registry.host, (USER, FIRST_PASSWORD)) == 200)


@pytest.fixture
def references(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Image references a test created on the engine; removed (the tags only) at teardown."""
    made: list[str] = []
    yield made
    for reference in made:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.images.remove(reference)


@pytest.fixture
def remote_image(
    registry: Registry,
    docker_client: docker.DockerClient,
    test_image: str,
    references: list[str],
) -> str:
    """The test image pushed under a fresh name, absent from the engine: a spawn must pull."""
    repository = f"{registry.host}/dockyard-test/login-{uuid.uuid4().hex[:8]}"
    reference = f"{repository}:v1"
    references.append(reference)
    push(docker_client, registry, test_image, repository, "v1")
    docker_client.images.remove(reference)
    return reference


@pytest.fixture
def docker_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`DOCKER_CONFIG` and a helper directory on `PATH`, for this test only."""
    (tmp_path / "docker").mkdir()
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    return tmp_path


def write_config(home: Path, config: dict[str, Any]) -> None:
    (home / "docker" / "config.json").write_text(json.dumps(config))


def write_helper(home: Path, body: str) -> None:
    """`docker-credential-dytest`: its `get` appends the server to `asked`, then runs `body`."""
    path = home / "bin" / "docker-credential-dytest"
    path.write_text(
        f'#!/bin/sh\n[ "$1" = get ] || exit 3\nread server\necho "$server" >> {home / "asked"}\n'
        f"{body}\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def helper_asked(home: Path) -> list[str]:
    asked = home / "asked"
    return asked.read_text().split() if asked.exists() else []


def _present(client: docker.DockerClient, reference: str) -> bool:
    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        return False
    return True


def run(manager: Any, job_id: str, command: list[str] | None = None) -> str:
    manager.spawn_worker(WorkerJob(id=job_id, type="manual", command=command or ["true"]))
    return str(manager.wait_for_worker(job_id, timeout=30).status)


# --------------------------------------------------------------------------- logins


def test_a_pull_authenticates_through_a_config_json_auths_entry(
    make_manager: Callable[..., Any],
    registry: Registry,
    remote_image: str,
    docker_home: Path,
    docker_client: docker.DockerClient,
) -> None:
    login = base64.b64encode(f"{USER}:{FIRST_PASSWORD}".encode()).decode()
    write_config(docker_home, {"auths": {registry.host: {"auth": login}}})
    manager = make_manager(worker_image=remote_image)
    assert run(manager, "auths-ok") == "succeeded"
    assert _present(docker_client, remote_image)


def test_a_refused_config_json_login_fails_clearly_and_shows_nowhere(
    make_manager: Callable[..., Any],
    registry: Registry,
    remote_image: str,
    docker_home: Path,
    sentry_events: CapturedEvents,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "wrong-" + FIRST_PASSWORD
    write_config(docker_home, {"auths": {registry.host: {"username": USER, "password": wrong}}})
    manager = make_manager(worker_image=remote_image)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(WorkerSpawnError, match=r"unauthorized|authentication") as raised:
        manager.spawn_worker(WorkerJob(id="auths-wrong", type="manual", command=["true"]))
    sentry_events.wait_for("worker_image_pull_fallback")
    header = RegistryAuth(USER, wrong, registry.host).header()
    text = json.dumps(list(sentry_events), default=str) + caplog.text + str(raised.value)
    for secret in (wrong, header, header.rstrip("=")):
        assert secret not in text


def test_a_credential_helper_logs_in_and_is_asked_again_after_the_password_rotates(
    make_manager: Callable[..., Any],
    registry: Registry,
    remote_image: str,
    docker_home: Path,
    docker_client: docker.DockerClient,
) -> None:
    current = docker_home / "current-password"
    current.write_text(FIRST_PASSWORD)
    write_helper(
        docker_home, f'printf \'{{"Username":"{USER}","Secret":"%s"}}\' "$(cat {current})"'
    )
    write_config(docker_home, {"credHelpers": {registry.host: "dytest"}})
    manager = make_manager(worker_image=remote_image)
    assert run(manager, "helper-first") == "succeeded"
    assert helper_asked(docker_home) == [registry.host]

    # The registry's password rotates: htpasswd rewritten (read again on change, as
    # checked here), the helper hands out the new one. The old one is refused now.
    registry.set_password(SECOND_PASSWORD)
    eventually(lambda: answers(registry.host, (USER, SECOND_PASSWORD)) == 200)
    assert answers(registry.host, (USER, FIRST_PASSWORD)) == 401
    current.write_text(SECOND_PASSWORD)
    docker_client.images.remove(remote_image)

    assert run(manager, "helper-second") == "succeeded"  # the same manager pulls again
    assert helper_asked(docker_home) == [registry.host] * 2
    assert _present(docker_client, remote_image)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("sleep 30", "did not answer within 1s"),
        ('echo "keychain locked"; exit 1', "failed (exit status 1): keychain locked"),
    ],
    ids=["hangs", "fails"],
)
def test_a_helper_that_hangs_or_fails_is_a_clear_error(
    make_manager: Callable[..., Any],
    registry: Registry,
    remote_image: str,
    docker_home: Path,
    docker_client: docker.DockerClient,
    sentry_events: CapturedEvents,
    body: str,
    expected: str,
) -> None:
    write_helper(docker_home, body)
    write_config(docker_home, {"credHelpers": {registry.host: "dytest"}})
    manager = make_manager(worker_image=remote_image, registry_helper_timeout_s=1)
    began = time.monotonic()
    with pytest.raises(WorkerImageResolutionError) as raised:
        manager.spawn_worker(WorkerJob(id="helper-bad", type="manual", command=["true"]))
    assert time.monotonic() - began < 10  # the timeout, not the helper's 30 s sleep
    message = str(raised.value)
    assert expected in message
    assert registry.host in message and "docker-credential-dytest" in message
    assert not _present(docker_client, remote_image)
    assert manager.get_active_worker_count() == 0
    sentry_events.wait_for("worker_image_pull_fallback")


# --------------------------------------------------------------------------- policies


def _build(client: docker.DockerClient, base: str, marker: str, tag: str) -> str:
    dockerfile = f"FROM {base}\nRUN echo {marker} > /marker\n"
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    return str(image.id)


def test_always_pulls_an_image_that_changed_in_the_registry(
    make_manager: Callable[..., Any],
    registry: Registry,
    docker_client: docker.DockerClient,
    test_image: str,
    references: list[str],
) -> None:
    repository = f"{registry.host}/dockyard-test/moving-{uuid.uuid4().hex[:8]}"
    reference = f"{repository}:v1"
    old_local, new_local = f"{repository}-old:local", f"{repository}-new:local"
    references.extend([reference, old_local, new_local])
    old_id = _build(docker_client, test_image, "old", old_local)
    push(docker_client, registry, old_local, repository, "v1")
    _build(docker_client, test_image, "new", new_local)
    push(docker_client, registry, new_local, repository, "v1")  # the tag moved in the registry
    docker_client.images.get(old_id).tag(repository, "v1")  # the engine still has the old one
    sees_new = ["sh", "-c", 'test "$(cat /marker)" = new']
    login = {"registry_username": USER, "registry_password": FIRST_PASSWORD}

    stays = make_manager(worker_image=reference, **login)
    assert run(stays, "if-not-present-old", sees_new) == "failed"  # runs what it has

    always = make_manager(worker_image=reference, image_pull_policy="always", **login)
    assert run(always, "always-new", sees_new) == "succeeded"
    assert docker_client.images.get(reference).id != old_id


def test_never_refuses_a_missing_image_before_any_container_exists(
    make_manager: Callable[..., Any],
    registry: Registry,
    remote_image: str,
    docker_client: docker.DockerClient,
    instance_id: str,
) -> None:
    manager = make_manager(
        worker_image=remote_image,
        image_pull_policy="never",
        registry_username=USER,
        registry_password=FIRST_PASSWORD,
    )
    with pytest.raises(WorkerImageResolutionError, match="pull policy is 'never'"):
        manager.spawn_worker(WorkerJob(id="never", type="manual", command=["true"]))
    assert not _present(docker_client, remote_image)  # no pull
    label = f"cascade.router.instance={instance_id}"
    assert docker_client.containers.list(all=True, filters={"label": label}) == []


# --------------------------------------------------------------------------- the CLI

LIB = str(Path(__file__).resolve().parents[2] / "lib")


def _cli_run(
    jobs: Path, image: str, instance: str, pull: str, docker_home: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [LIB, os.environ.get("PYTHONPATH")])),
        "DOCKER_CONFIG": str(docker_home / "docker"),
        "DOCKER_NETWORK": "none",
    }
    code = "import sys\nfrom dockyard._cli import main\nsys.exit(main())"
    args = ["run", str(jobs), "--image", image, "--instance", instance, "--pull", pull]
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_cli_pulls_a_missing_image_with_pull_if_not_present_and_refuses_with_never(
    registry: Registry,
    remote_image: str,
    docker_home: Path,
    docker_client: docker.DockerClient,
    instance_id: str,
) -> None:
    login = base64.b64encode(f"{USER}:{FIRST_PASSWORD}".encode()).decode()
    write_config(docker_home, {"auths": {registry.host: {"auth": login}}})
    jobs = docker_home / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "cli-pull", "type": "t", "command": ["true"]}) + "\n")

    refused = _cli_run(jobs, remote_image, instance_id, "never", docker_home)
    assert refused.returncode == 2, refused.stderr
    assert "not on the Docker engine" in refused.stderr
    assert not _present(docker_client, remote_image)

    pulled = _cli_run(jobs, remote_image, instance_id, "if-not-present", docker_home)
    assert pulled.returncode == 0, pulled.stderr
    assert _present(docker_client, remote_image)
    assert FIRST_PASSWORD not in pulled.stdout + pulled.stderr

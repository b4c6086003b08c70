"""Unit tests (no engine) of registry logins and pull policies.

Logins: the precedence of the router's variables, the host hook and the Docker config
(credential helpers, `credsStore`, `auths`), helpers that fail or hang, and secrets kept
out of reprs, messages and logs. Helpers are small shell scripts on a temporary `PATH`.
Policies: `if-not-present`, `always` (one pull per burst), `never`, per project, and the
retry of transient pull failures against the fake engine.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry

from dockyard import (
    ConfigError,
    ContainerManager,
    DockerUnavailableError,
    ProjectConfig,
    RouterConfig,
    WorkerImageResolutionError,
    WorkerJob,
    WorkerSpawnError,
)
from dockyard._cli._parser import build_parser
from dockyard._docker_config import DockerConfigLogins, docker_config_file
from dockyard._images import ImagePuller
from dockyard._pull_policy import is_retryable_pull_failure, pull_result
from dockyard._registry_auth import (
    DOCKER_HUB_SERVER,
    RegistryAuth,
    RegistryAuthResolver,
    registry_index,
)
from dockyard.testing import FakeDockerAPI, RecordingReporter, api_error
from promscrape import Scrape
from support.hosts import StaticProjects

REGISTRY = "registry.example:5000"
IMAGE = f"{REGISTRY}/team/worker:1"
SECRET = "pw-" + "x9" * 10


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def docker_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty `DOCKER_CONFIG` directory and a `PATH` dir for helpers, both set."""
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return tmp_path


def write_config(home: Path, config: dict[str, Any]) -> None:
    (home / "docker" / "config.json").write_text(json.dumps(config))


def write_helper(home: Path, name: str, body: str) -> Path:
    """`docker-credential-<name>`, a shell script whose `get` runs `body` (server on stdin)."""
    path = home / "bin" / f"docker-credential-{name}"
    path.write_text(f'#!/bin/sh\n[ "$1" = get ] || exit 3\nread server\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def answering(user: str, secret: str) -> str:
    return f'printf \'{{"ServerURL":"%s","Username":"{user}","Secret":"{secret}"}}\' "$server"'


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Hook:
    """A host hook answering from a dict, recording the registries asked about."""

    def __init__(self, logins: dict[str, tuple[str, str]] | None = None) -> None:
        self.logins = logins or {}
        self.asked: list[str] = []

    def get_registry_credentials(self, registry: str) -> tuple[str, str] | None:
        self.asked.append(registry)
        return self.logins.get(registry)


def resolver(
    hook: Hook | None = None, timeout_s: float = 5.0, **config: Any
) -> RegistryAuthResolver:
    return RegistryAuthResolver(RouterConfig(**config), hook, DockerConfigLogins(timeout_s))


def decoded(auth: RegistryAuth | None) -> dict[str, str]:
    assert auth is not None
    result: dict[str, str] = json.loads(base64.urlsafe_b64decode(auth.header()))
    return result


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("policy", ["if-not-present", "always", "never"])
def test_the_pull_policy_comes_from_its_variable(policy: str) -> None:
    config = RouterConfig.from_env({"WORKER_IMAGE_PULL_POLICY": policy})
    assert config.image_pull_policy == policy


def test_the_defaults_keep_the_old_behaviour() -> None:
    config = RouterConfig()
    assert config.image_pull_policy == "if-not-present"
    assert (config.image_pull_reuse_s, config.image_pull_retries) == (5.0, 3)
    assert config.registry_helper_timeout_s == 15.0
    assert ProjectConfig("p").image_pull_policy is None


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("WORKER_IMAGE_PULL_POLICY", "Always"),
        ("WORKER_IMAGE_PULL_POLICY", "sometimes"),
        ("WORKER_IMAGE_PULL_REUSE_MS", "-1"),
        ("WORKER_IMAGE_PULL_RETRIES", "-1"),
        ("WORKER_IMAGE_PULL_RETRIES", "two"),
        ("WORKER_IMAGE_CREDENTIAL_HELPER_TIMEOUT_MS", "0"),
    ],
)
def test_a_bad_value_names_its_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        RouterConfig.from_env({var: value})
    assert raised.value.name == var


def test_the_other_pull_variables_are_read() -> None:
    config = RouterConfig.from_env(
        {
            "WORKER_IMAGE_PULL_REUSE_MS": "0",
            "WORKER_IMAGE_PULL_RETRIES": "0",
            "WORKER_IMAGE_CREDENTIAL_HELPER_TIMEOUT_MS": "2500",
        }
    )
    assert config.image_pull_reuse_s == 0.0  # zero: every spawn pulls
    assert config.image_pull_retries == 0
    assert config.registry_helper_timeout_s == 2.5


def test_a_project_pull_policy_is_checked() -> None:
    assert ProjectConfig.from_dict({"id": "p", "image_pull_policy": "never"}).image_pull_policy == (
        "never"
    )
    with pytest.raises(ConfigError, match=r"ProjectConfig\.image_pull_policy"):
        ProjectConfig("p", image_pull_policy="latest")


# --------------------------------------------------------------------------- registry host


@pytest.mark.parametrize(
    ("image", "index"),
    [
        ("redis:7", "docker.io"),
        ("docker.io/library/redis", "docker.io"),
        ("index.docker.io/team/w", "docker.io"),
        ("ghcr.io/team/w:1", "ghcr.io"),
        ("127.0.0.1:5000/w@sha256:" + "a" * 64, "127.0.0.1:5000"),
        ("localhost/w", "localhost"),
    ],
)
def test_the_registry_is_derived_as_docker_derives_it(image: str, index: str) -> None:
    assert registry_index(image) == index


# --------------------------------------------------------------------------- precedence


def test_the_routers_login_comes_first_for_its_server(docker_home: Path) -> None:
    write_config(docker_home, {"auths": {REGISTRY: {"auth": b64("file-user:file-pw")}}})
    hook = Hook({REGISTRY: ("hook-user", "hook-pw")})
    auth = resolver(
        hook, registry_username="env-user", registry_password="env-pw", registry_server=REGISTRY
    ).for_image(IMAGE)
    assert decoded(auth)["username"] == "env-user"
    assert hook.asked == []


def test_without_a_server_the_routers_login_is_for_every_registry(docker_home: Path) -> None:
    write_config(docker_home, {"auths": {REGISTRY: {"auth": b64("file-user:file-pw")}}})
    auth = resolver(registry_username="env-user", registry_password="env-pw").for_image(IMAGE)
    assert decoded(auth) == {
        "username": "env-user",
        "password": "env-pw",
        "serveraddress": REGISTRY,
    }


def test_for_another_registry_the_hook_and_the_config_come_before_the_routers_login(
    docker_home: Path,
) -> None:
    write_config(docker_home, {"auths": {REGISTRY: {"auth": b64("file-user:file-pw")}}})
    router_login = {
        "registry_username": "env-user",
        "registry_password": "env-pw",
        "registry_server": "ghcr.io",
    }
    hook = Hook({REGISTRY: ("hook-user", "hook-pw")})
    assert decoded(resolver(hook, **router_login).for_image(IMAGE))["username"] == "hook-user"
    assert decoded(resolver(None, **router_login).for_image(IMAGE))["username"] == "file-user"
    # Nothing else knows the registry: the router's login is sent, as it always was.
    other = resolver(None, **router_login).for_image("quay.io/team/w")
    assert decoded(other)["username"] == "env-user"


def test_the_hook_comes_before_the_docker_config(docker_home: Path) -> None:
    write_config(docker_home, {"auths": {REGISTRY: {"auth": b64("file-user:file-pw")}}})
    hook = Hook({REGISTRY: ("hook-user", "hook-pw")})
    auth = resolver(hook).for_image(IMAGE)
    assert decoded(auth) == {
        "username": "hook-user",
        "password": "hook-pw",
        "serveraddress": REGISTRY,
    }
    assert auth is not None and auth.source == "registry_credentials hook"
    assert hook.asked == [REGISTRY]
    # A hook without a login for the registry hands over to the config.
    assert decoded(resolver(Hook()).for_image(IMAGE))["username"] == "file-user"


def test_a_credential_helper_comes_before_the_auths_entry(docker_home: Path) -> None:
    write_helper(docker_home, "dytest", answering("helper-user", "helper-pw"))
    write_config(
        docker_home,
        {
            "auths": {REGISTRY: {"auth": b64("file-user:file-pw")}},
            "credHelpers": {REGISTRY: "dytest"},
        },
    )
    auth = resolver().for_image(IMAGE)
    assert decoded(auth)["password"] == "helper-pw"
    assert auth is not None and auth.source == "credential helper docker-credential-dytest"


def test_the_creds_store_serves_registries_without_a_helper(docker_home: Path) -> None:
    write_helper(docker_home, "store", answering("store-user", "store-pw"))
    write_helper(docker_home, "dytest", answering("helper-user", "helper-pw"))
    write_config(docker_home, {"credsStore": "store", "credHelpers": {"ghcr.io": "dytest"}})
    assert decoded(resolver().for_image(IMAGE))["username"] == "store-user"
    assert decoded(resolver().for_image("ghcr.io/t/w"))["username"] == "helper-user"


def test_docker_hub_is_asked_under_the_index_url(docker_home: Path) -> None:
    asked = docker_home / "asked"
    write_helper(docker_home, "store", f'echo "$server" > {asked}\n' + answering("u", "p"))
    write_config(docker_home, {"credsStore": "store"})
    auth = resolver().for_image("team/worker:1")
    assert asked.read_text().strip() == DOCKER_HUB_SERVER
    assert decoded(auth)["serveraddress"] == DOCKER_HUB_SERVER


def test_a_helper_without_an_entry_hands_over_to_auths(docker_home: Path) -> None:
    write_helper(docker_home, "store", 'echo "credentials not found in native keychain"; exit 1')
    write_config(
        docker_home,
        {"credsStore": "store", "auths": {f"https://{REGISTRY}/v1/": {"auth": b64("a:b:c")}}},
    )
    # A URL key names the same host; a password may hold a colon.
    assert decoded(resolver().for_image(IMAGE)) == {
        "username": "a",
        "password": "b:c",
        "serveraddress": REGISTRY,
    }


def test_auths_entries_in_each_form(docker_home: Path) -> None:
    write_config(
        docker_home,
        {
            "auths": {
                REGISTRY: {"username": "named", "password": "given"},
                "ghcr.io": {"identitytoken": "tok-123"},
                "quay.io": {},
            }
        },
    )
    assert decoded(resolver().for_image(IMAGE))["password"] == "given"
    assert decoded(resolver().for_image("ghcr.io/t/w")) == {
        "identitytoken": "tok-123",
        "serveraddress": "ghcr.io",
    }
    assert resolver().for_image("quay.io/t/w") is None  # `{}`: nothing stored there


def test_a_helper_token_is_sent_as_an_identity_token(docker_home: Path) -> None:
    write_helper(docker_home, "dytest", answering("<token>", "refresh-tok"))
    write_config(docker_home, {"credHelpers": {REGISTRY: "dytest"}})
    assert decoded(resolver().for_image(IMAGE)) == {
        "identitytoken": "refresh-tok",
        "serveraddress": REGISTRY,
    }


def test_no_config_and_no_login_pull_anonymously(docker_home: Path) -> None:
    assert resolver().for_image(IMAGE) is None
    assert docker_config_file({"HOME": "/h"}) == Path("/h/.docker/config.json")
    assert docker_config_file({"DOCKER_CONFIG": "/c", "HOME": "/h"}) == Path("/c/config.json")


def test_the_run_reads_no_docker_login_of_the_machine() -> None:
    # conftest's autouse fixture: a login in ~/.docker must not change what tests see.
    assert docker_config_file(os.environ).parent == Path(os.environ["DOCKER_CONFIG"])
    assert not list(Path(os.environ["DOCKER_CONFIG"]).iterdir())
    assert resolver().for_image(IMAGE) is None


def test_the_helper_is_asked_on_every_pull(docker_home: Path) -> None:
    current = docker_home / "current"
    current.write_text("first-pw")
    write_helper(
        docker_home,
        "dytest",
        f'printf \'{{"Username":"u","Secret":"%s"}}\' "$(cat {current})"',
    )
    write_config(docker_home, {"credHelpers": {REGISTRY: "dytest"}})
    logins = resolver()
    assert decoded(logins.for_image(IMAGE))["password"] == "first-pw"
    current.write_text("second-pw")  # the token rotated
    assert decoded(logins.for_image(IMAGE))["password"] == "second-pw"


# --------------------------------------------------------------------------- failures


def test_a_failing_helper_is_a_clear_error(docker_home: Path) -> None:
    write_helper(docker_home, "dytest", 'echo "no AWS credentials" >&2; exit 1')
    write_config(docker_home, {"credHelpers": {REGISTRY: "dytest"}})
    with pytest.raises(WorkerImageResolutionError) as raised:
        resolver().for_image(IMAGE)
    message = str(raised.value)
    assert "docker-credential-dytest" in message and REGISTRY in message
    assert "exit status 1" in message and "no AWS credentials" in message


def test_a_hanging_helper_is_killed_after_the_timeout(docker_home: Path) -> None:
    marker = docker_home / "still-running"
    write_helper(docker_home, "dytest", f"sleep 30; touch {marker}")
    write_config(docker_home, {"credHelpers": {REGISTRY: "dytest"}})
    began = time.monotonic()
    with pytest.raises(WorkerImageResolutionError, match=r"did not answer within 0\.5s") as raised:
        resolver(timeout_s=0.5).for_image(IMAGE)
    assert time.monotonic() - began < 3
    assert REGISTRY in str(raised.value)
    time.sleep(0.3)
    assert not marker.exists()  # its `sleep` child went with it (the process group)


def test_a_missing_helper_or_a_malformed_answer_is_a_clear_error(docker_home: Path) -> None:
    write_config(docker_home, {"credHelpers": {REGISTRY: "absent"}})
    with pytest.raises(WorkerImageResolutionError, match="docker-credential-absent is not on PATH"):
        resolver().for_image(IMAGE)
    write_helper(docker_home, "dytest", f"echo 'not json {SECRET}'")
    write_config(docker_home, {"credHelpers": {REGISTRY: "dytest"}})
    with pytest.raises(WorkerImageResolutionError) as raised:
        resolver().for_image(IMAGE)
    assert "other than a login" in str(raised.value)
    assert SECRET not in str(raised.value)  # what it printed is never quoted


def test_a_malformed_config_is_a_clear_error(docker_home: Path) -> None:
    (docker_home / "docker" / "config.json").write_text("{not json")
    with pytest.raises(WorkerImageResolutionError, match=f"{REGISTRY}.*not a JSON object"):
        resolver().for_image(IMAGE)
    write_config(docker_home, {"auths": {REGISTRY: {"auth": "%%%"}}})
    with pytest.raises(WorkerImageResolutionError, match="not base64 user:password"):
        resolver().for_image(IMAGE)


def test_a_failing_hook_is_a_clear_error_without_its_text(docker_home: Path) -> None:
    class Broken:
        def get_registry_credentials(self, registry: str) -> tuple[str, str] | None:
            raise RuntimeError(f"vault said {SECRET}")

    logins = RegistryAuthResolver(RouterConfig(), Broken(), DockerConfigLogins())
    with pytest.raises(WorkerImageResolutionError) as raised:
        logins.for_image(IMAGE)
    assert REGISTRY in str(raised.value) and "RuntimeError" in str(raised.value)
    assert SECRET not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_no_secret_in_reprs_messages_or_logs(
    docker_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    write_helper(docker_home, "dytest", answering("u", SECRET))
    write_config(docker_home, {"credHelpers": {REGISTRY: "dytest"}})
    logins = resolver()
    auth = logins.for_image(IMAGE)
    assert auth is not None
    login = DockerConfigLogins().lookup(REGISTRY)
    hooked = resolver(Hook({"ghcr.io": ("u", SECRET)})).for_image("ghcr.io/t/w")
    for text in (repr(auth), str(auth), repr(login), repr(logins), repr(hooked)):
        assert SECRET not in text
    assert SECRET not in caplog.text
    assert decoded(auth)["password"] == SECRET  # only the header the engine gets holds it


# --------------------------------------------------------------------------- policies

PULLED_IMAGE = "registry.example/team/worker:3"


@pytest.fixture
def manager_on() -> Iterator[Callable[..., tuple[FakeDockerAPI, ContainerManager]]]:
    made: list[ContainerManager] = []

    def make(
        images: set[str], projects: StaticProjects | None = None, **overrides: Any
    ) -> tuple[FakeDockerAPI, ContainerManager]:
        api = FakeDockerAPI(images)
        settings: dict[str, Any] = {
            "worker_image": PULLED_IMAGE,
            "router_instance_id": "pull-unit",
            "stop_grace_s": 1,
            "slot_wait_timeout_s": 5,
        }
        settings.update(overrides)
        registry = settings.pop("metrics_registry", None)
        manager = ContainerManager(
            RouterConfig(**settings),
            docker_client=api,  # type: ignore[arg-type]
            reporter=RecordingReporter(),
            projects=projects,
            metrics_registry=registry,
        )
        made.append(manager)
        return api, manager

    yield make
    for manager in made:
        manager.close()


def spawn(manager: ContainerManager, job_id: str, **data: Any) -> Any:
    return manager.spawn_worker(WorkerJob(job_id, "manual", data, command=["true"]))


def test_if_not_present_pulls_only_a_missing_image(manager_on: Callable[..., Any]) -> None:
    api, manager = manager_on({PULLED_IMAGE})
    spawn(manager, "a")
    assert api.calls_of("pull") == []


def test_never_refuses_a_missing_image_without_a_pull(manager_on: Callable[..., Any]) -> None:
    api, manager = manager_on(set(), image_pull_policy="never")
    with pytest.raises(WorkerImageResolutionError, match="pull policy is 'never'"):
        spawn(manager, "a")
    assert api.calls_of("pull") == []
    assert api.calls_of("start") == []
    assert manager.get_active_worker_count() == 0


def test_always_pulls_once_per_burst_then_again(manager_on: Callable[..., Any]) -> None:
    api, manager = manager_on({PULLED_IMAGE}, image_pull_policy="always", image_pull_reuse_s=0.3)
    spawn(manager, "a")
    spawn(manager, "b")
    assert api.calls_of("pull") == [PULLED_IMAGE]
    time.sleep(0.35)
    spawn(manager, "c")
    assert api.calls_of("pull") == [PULLED_IMAGE] * 2
    # The pull comes before the create of the container that runs.
    calls = [method for method, _ in api.calls if method in ("pull", "create_container")]
    assert calls[:2] == ["pull", "create_container"]


def test_always_with_a_failing_pull_starts_nothing(manager_on: Callable[..., Any]) -> None:
    api, manager = manager_on({PULLED_IMAGE}, image_pull_policy="always")
    api.pull_error = "unauthorized: authentication required"
    with pytest.raises(WorkerSpawnError, match="unauthorized"):
        spawn(manager, "a")
    assert api.calls_of("create_container") == []
    assert api.calls_of("pull") == [PULLED_IMAGE]  # an auth failure is never tried again


def test_a_projects_policy_overrides_the_routers(manager_on: Callable[..., Any]) -> None:
    projects = StaticProjects(
        ProjectConfig("eager", image_pull_policy="always"),
        ProjectConfig("strict", image_pull_policy="never"),
    )
    api, manager = manager_on({PULLED_IMAGE}, projects=projects)
    spawn(manager, "a", projectId="eager")
    assert api.calls_of("pull") == [PULLED_IMAGE]
    api.image_names.discard(PULLED_IMAGE)
    with pytest.raises(WorkerImageResolutionError):
        spawn(manager, "b", projectId="strict")
    assert api.calls_of("pull") == [PULLED_IMAGE]


def test_transient_pull_failures_are_tried_again(manager_on: Callable[..., Any]) -> None:
    registry = CollectorRegistry()
    api, manager = manager_on(set(), metrics_registry=registry)
    api.failures["pull"] = [
        requests.exceptions.ConnectionError("connection reset by peer"),
        api_error(500, "received unexpected HTTP status: 503 Service Unavailable"),
    ]
    spawn(manager, "a")
    assert api.calls_of("pull") == [PULLED_IMAGE] * 3
    got = Scrape.of(registry)
    assert got.value("dockyard_image_pulls_total", {"result": "ok"}) == 1
    assert got.value("dockyard_image_pull_failures_total") == 0


def test_retries_are_bounded(manager_on: Callable[..., Any]) -> None:
    registry = CollectorRegistry()
    api, manager = manager_on(set(), image_pull_retries=1, metrics_registry=registry)
    api.failures["pull"] = [requests.exceptions.ConnectionError("reset")] * 3
    with pytest.raises(DockerUnavailableError):
        spawn(manager, "a")
    assert api.calls_of("pull") == [PULLED_IMAGE] * 2
    got = Scrape.of(registry)
    assert got.value("dockyard_image_pulls_total", {"result": "transient"}) == 1


@pytest.mark.parametrize(
    ("err", "result", "retried"),
    [
        (api_error(500, "Get https://r/v2/: no basic auth credentials"), "auth_failed", False),
        (api_error(500, "pull access denied for x, repository does not exist"), "auth_failed", 0),
        (api_error(404, "manifest unknown"), "not_found", False),
        (api_error(500, "received unexpected HTTP status: 502 Bad Gateway"), "transient", True),
        (requests.exceptions.ReadTimeout("read timed out"), "transient", True),
        (WorkerImageResolutionError("helper timed out"), "credentials_error", False),
        (api_error(400, "invalid reference format"), "error", False),
        (api_error(500, 'Get "https://r/v2/": dial tcp: lookup r: no such host'), "error", 0),
        (api_error(500, 'Get "https://r/v2/": dial tcp 10.0.0.1:443: i/o timeout'), "transient", 1),
    ],
)
def test_pull_failures_are_classified(err: Exception, result: str, retried: bool) -> None:
    assert pull_result(err) == result
    assert is_retryable_pull_failure(err) is bool(retried)


class _Unreachable:
    """An engine whose pulls never get through."""

    def __init__(self) -> None:
        self.pulls = 0

    def pull(self, image: str, timeout_s: float, auth_config: object = None) -> None:
        self.pulls += 1
        raise DockerUnavailableError("engine unreachable (connection reset)")


def test_closing_ends_a_pull_back_off_at_once() -> None:
    engine = _Unreachable()
    puller = ImagePuller(engine, 60.0, retries=10)  # type: ignore[arg-type]
    threading.Timer(0.3, puller.close).start()
    began = time.monotonic()
    with pytest.raises(DockerUnavailableError):
        puller.pull(PULLED_IMAGE)
    assert time.monotonic() - began < 2.5  # not the ten growing pauses
    assert 1 <= engine.pulls < 10


def test_the_cli_takes_a_pull_policy() -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "jobs.jsonl", "--image", "w:1", "--pull", "always"])
    assert args.pull == "always"
    assert parser.parse_args(["run", "jobs.jsonl", "--image", "w:1"]).pull is None
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["run", "jobs.jsonl", "--image", "w:1", "--pull", "sometimes"])
    assert exited.value.code == 2

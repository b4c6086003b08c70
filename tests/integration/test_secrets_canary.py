"""No secret leaves: canaries under a host's default sentry-sdk, on the real engine.

The host initialises sentry-sdk with its defaults -- local variables of every frame, the
logging integration turning `log.error` into events and INFO records into breadcrumbs --
and nothing switched off. Canary values sit in the router's environment (`DATABASE_URL`
with a password, `CREDENTIAL_MASTER_KEY`, `CLAUDE_CODE_OAUTH_TOKEN`), in project
credentials and in job data. Each test drives Sentry sources into firing and checks that
no canary, in any form, is in any event or in any record a `dockyard` logger emitted.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import docker
import pytest
import sentry_sdk
import sentry_sdk.transport

from dockyard import (
    ContainerManager,
    DockyardError,
    InvalidJobError,
    ProjectConfig,
    WorkerJob,
    WorkerLifecycleListener,
)
from faultproxy import FaultProxy, FaultRule
from support.engine import tag_image
from support.hosts import LogCapture, RecordingStore

OUTCOME_TIMEOUT_S = 60.0
UNPULLABLE = "127.0.0.1:9/dockyard-canary-missing:latest"  # refused at once: no registry there


# -- the host's Sentry, with its defaults ------------------------------------------------


class HostTransport(sentry_sdk.transport.Transport):
    """Keeps every event; no network."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def capture_envelope(self, envelope: Any) -> None:
        event = envelope.get_event()
        if event is not None:
            with self._lock:
                self.events.append(event)

    def flush(self, timeout: float, callback: Any | None = None) -> None:
        return None

    def kill(self) -> None:
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def sources(self) -> list[str]:
        return [str((e.get("tags") or {}).get("source")) for e in self.snapshot()]

    def wait_for(self, source: str, timeout: float = 30.0) -> dict[str, Any]:
        done = threading.Event()
        deadline = timeout
        while deadline > 0:
            for event in self.snapshot():
                if (event.get("tags") or {}).get("source") == source:
                    return event
            done.wait(0.05)
            deadline -= 0.05
        raise AssertionError(f"no {source} event; got {self.sources()}")


@pytest.fixture
def host_sentry() -> Iterator[HostTransport]:
    """sentry-sdk as a host runs it: `init(dsn, transport)` and nothing else.

    The session's own test client (default integrations off) is put back afterwards, so
    other tests see no difference.
    """
    previous = sentry_sdk.get_client()
    transport = HostTransport()
    sentry_sdk.init(dsn="https://public@example.invalid/1", transport=transport)
    client = sentry_sdk.get_client()
    assert client.options["include_local_variables"] is True
    assert client.get_integration("logging") is not None
    sentry_sdk.get_isolation_scope().clear_breadcrumbs()
    try:
        yield transport
    finally:
        sentry_sdk.get_global_scope().set_client(previous)
        sentry_sdk.get_isolation_scope().clear_breadcrumbs()
        client.close()


# -- the canaries --------------------------------------------------------------------------


@dataclass(frozen=True)
class Canaries:
    """Secret values, each holding a unique token that survives URL and JSON encoding."""

    tokens: dict[str, str]
    values: dict[str, str]

    def credentials(self) -> dict[str, str]:
        return {"API_TOKEN": self.values["credential"], "SHORTISH": self.values["credential2"]}

    def job_data(self, **extra: Any) -> dict[str, Any]:
        return {
            "projectId": "p-1",
            "workItemId": "card-1",
            "note": self.values["job_data"],
            **extra,
        }

    def forms(self) -> dict[str, str]:
        out = {}
        for name, value in self.values.items():
            out[f"{name}:token"] = self.tokens[name]
            out[f"{name}:plain"] = value
            out[f"{name}:quote"] = quote(value, safe="")
            out[f"{name}:quote_plus"] = quote_plus(value)
            out[f"{name}:json"] = json.dumps(value)[1:-1]
        return out

    def leaks(self, text: str) -> list[str]:
        return [name for name, form in self.forms().items() if form in text]


@pytest.fixture
def canaries(monkeypatch: pytest.MonkeyPatch) -> Canaries:
    tokens = {
        name: f"cnry{name[:3]}{uuid.uuid4().hex[:12]}"
        for name in ("db", "master", "oauth", "credential", "credential2", "job_data")
    }
    values = {
        # Characters that URL encoding and JSON escaping change, around each token.
        "db": f'postgres://app:p@ss/w+rd {tokens["db"]}"q@db.internal:5432/app',
        "master": f"mk-{tokens['master']}-/+=",
        "oauth": f"oauth {tokens['oauth']}&x=1",
        "credential": f"tok-{tokens['credential']}",
        "credential2": f"c2\\{tokens['credential2']}",
        "job_data": f'payload "{tokens["job_data"]}" ü',
    }
    monkeypatch.setenv("DATABASE_URL", values["db"])
    monkeypatch.setenv("CREDENTIAL_MASTER_KEY", values["master"])
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", values["oauth"])
    return Canaries(tokens=tokens, values=values)


def assert_nothing_leaked(canaries: Canaries, host: HostTransport, records: LogCapture) -> None:
    events = host.snapshot()
    assert events, "no event was captured at all"
    for index, event in enumerate(events):
        for text in (json.dumps(event, default=str), json.dumps(event, ensure_ascii=False)):
            leaked = canaries.leaks(text)
            source = (event.get("tags") or {}).get("source")
            where = [path for path, leaf in _leaves(event) if canaries.leaks(leaf)]
            assert not leaked, f"event {index} (source={source}) holds {leaked} at {where}"
    for text in records.texts():
        leaked = canaries.leaks(text)
        assert not leaked, f"a dockyard log record holds {leaked}: {text[:300]}"


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, f"{path}[{index}]")
    else:
        yield path, json.dumps(node, default=str)


def has_frame_vars(event: Mapping[str, Any]) -> bool:
    for value in (event.get("exception") or {}).get("values") or []:
        for frame in (value.get("stacktrace") or {}).get("frames") or []:
            if frame.get("vars"):
                return True
    return False


# -- collaborators that carry canaries in their own frames -----------------------------------


class Credentials:
    def __init__(self, values: Mapping[str, object], *, fail: bool = False) -> None:
        self.values = dict(values)
        self.fail = fail

    def get_project_credentials(self, project_id: str) -> Mapping[str, str]:
        vault = dict(self.values)  # a local holding every credential, as a real store's would
        if self.fail:
            raise RuntimeError(f"vault sealed for {project_id} ({len(vault)} keys)")
        return vault  # type: ignore[return-value]


class Projects:
    def __init__(self, *projects: ProjectConfig) -> None:
        self.projects = list(projects)
        self.fail_with: dict[str, str] | None = None

    def list_projects(self) -> list[ProjectConfig]:
        if self.fail_with is not None:
            secrets_in_frame = dict(self.fail_with)
            raise RuntimeError(f"project directory down ({len(secrets_in_frame)})")
        return list(self.projects)

    def find_project_by_repo(self, repo_full_name: str) -> ProjectConfig | None:
        return None


def eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        done.wait(0.05)
    raise AssertionError("condition not met in time")


def shell(script: str) -> list[str]:
    return ["sh", "-c", script]


def host_captures(call: Callable[[], object]) -> BaseException:
    """What a host does with an error dockyard raises: capture it with its own defaults.

    This frame and the caller's lambda hold no canary (the job's repr hides its data).
    """
    try:
        call()
    except Exception as err:
        sentry_sdk.capture_exception(err)
        return err
    raise AssertionError("the call did not raise")


MakeManager = Callable[..., ContainerManager]


# -- the tests -----------------------------------------------------------------------------


def test_spawn_failures_and_what_the_host_captures_hold_no_secret(
    canaries: Canaries,
    host_sentry: HostTransport,
    dockyard_logs: LogCapture,
    make_manager: MakeManager,
    proxy: FaultProxy,
    proxied: docker.APIClient,
) -> None:
    manager = make_manager(docker_client=proxied, credentials=Credentials(canaries.credentials()))
    job = WorkerJob("spawn-1", "trello", canaries.job_data(), command=["true"])
    # The engine stops answering creates: worker_spawn, and DockerUnavailableError raised.
    proxy.add_rule(FaultRule(op="create", action="cut", times=2))
    raised = host_captures(lambda: manager.spawn_worker(job))
    assert isinstance(raised, DockyardError)
    host_sentry.wait_for("worker_spawn")
    # The engine refuses the create (500): worker_spawn again, the engine error raised.
    proxy.add_rule(FaultRule(op="create", action="fail", status=500, message="no space left"))
    second = WorkerJob("spawn-2", "trello", canaries.job_data())
    host_captures(lambda: manager.spawn_worker(second))

    host_events = [e for e in host_sentry.snapshot() if "source" not in (e.get("tags") or {})]
    assert host_events, "the host's own capture of the raised error made no event"
    assert_nothing_leaked(canaries, host_sentry, dockyard_logs)
    assert not any(has_frame_vars(e) for e in host_sentry.snapshot() if e not in host_events)


def test_missing_images_hold_no_secret(
    canaries: Canaries,
    host_sentry: HostTransport,
    dockyard_logs: LogCapture,
    make_manager: MakeManager,
) -> None:
    manager = make_manager(
        worker_image=UNPULLABLE,
        snapshot_enabled=True,
        credentials=Credentials(canaries.credentials()),
        image_pull_timeout_s=20,
    )
    # A registered snapshot whose image is gone, and a base image nobody can pull.
    manager.snapshots.register("p-1", "card-1", "dockyard-test-snap-gone-canary:latest")
    job = WorkerJob("images-1", "trello", canaries.job_data(), command=["true"])
    host_captures(lambda: manager.spawn_worker(job))
    host_sentry.wait_for("worker_image_pull_fallback")
    host_sentry.wait_for("worker_spawn_fallback")
    assert_nothing_leaked(canaries, host_sentry, dockyard_logs)


def test_refused_job_raises_clean_and_writes_no_payload(
    canaries: Canaries,
    host_sentry: HostTransport,
    dockyard_logs: LogCapture,
    make_manager: MakeManager,
) -> None:
    # A credential that is not a string: refused while the credentials are frame locals.
    credentials = Credentials({**canaries.credentials(), "BROKEN": 12345})
    store = RecordingStore()
    manager = make_manager(credentials=credentials, job_data_store=store)
    big = canaries.job_data(blob="x" * (100 * 1024))  # over the inline limit: goes to the store
    job = WorkerJob("refused-1", "trello", big, command=["true"])
    raised = host_captures(lambda: manager.spawn_worker(job))
    assert isinstance(raised, InvalidJobError)
    assert store.puts == []  # refused before the payload was written
    (event,) = host_sentry.snapshot()
    frames = event["exception"]["values"][-1]["stacktrace"]["frames"]
    assert frames[-1]["function"] == "spawn_worker"  # nothing below the facade's frame
    assert_nothing_leaked(canaries, host_sentry, dockyard_logs)


def test_worker_failures_hold_no_secret(
    canaries: Canaries,
    host_sentry: HostTransport,
    dockyard_logs: LogCapture,
    make_manager: MakeManager,
) -> None:
    manager = make_manager(
        credentials=Credentials(canaries.credentials()),
        auto_remove_workers=False,  # the log tail is read before removal
        worker_timeout_s=2,
    )
    # Non-zero exit printing every secret it has: worker_exit, and a masked log tail.
    echo = (
        'echo "db=$DATABASE_URL tok=$API_TOKEN c2=$SHORTISH oauth=$CLAUDE_CODE_OAUTH_TOKEN"; '
        'echo "data=$JOB_DATA" >&2; exit 3'
    )
    manager.spawn_worker(WorkerJob("exit-1", "trello", canaries.job_data(), command=shell(echo)))
    assert manager.wait_for_worker("exit-1", OUTCOME_TIMEOUT_S).status == "failed"
    host_sentry.wait_for("worker_exit")
    tails = [t for t in dockyard_logs.texts() if "worker output" in t]
    assert tails and "tok=***" in tails[0]
    # An overrun: worker_timeout.
    manager.spawn_worker(
        WorkerJob("slow-1", "trello", canaries.job_data(), command=["sleep", "60"])
    )
    assert manager.wait_for_worker("slow-1", OUTCOME_TIMEOUT_S).status == "timed_out"
    host_sentry.wait_for("worker_timeout")
    assert_nothing_leaked(canaries, host_sentry, dockyard_logs)


def test_credential_store_and_listener_failures_hold_no_secret(
    canaries: Canaries,
    host_sentry: HostTransport,
    dockyard_logs: LogCapture,
    make_manager: MakeManager,
) -> None:
    values = canaries.credentials()

    class Broken(WorkerLifecycleListener):
        def on_worker_started(self, worker: Any) -> None:
            held = dict(values)  # the host's frame holds secrets too
            raise RuntimeError(f"listener bug ({len(held)})")

    manager = make_manager(credentials=Credentials(values, fail=True), listener=Broken())
    manager.spawn_worker(WorkerJob("cred-1", "trello", canaries.job_data(), command=["true"]))
    assert manager.wait_for_worker("cred-1", OUTCOME_TIMEOUT_S).status == "succeeded"
    host_sentry.wait_for("credential_resolution")
    host_sentry.wait_for("lifecycle_listener")
    assert_nothing_leaked(canaries, host_sentry, dockyard_logs)


def test_snapshot_and_wait_failures_hold_no_secret(
    canaries: Canaries,
    host_sentry: HostTransport,
    dockyard_logs: LogCapture,
    make_manager: MakeManager,
    proxy: FaultProxy,
    proxied: docker.APIClient,
) -> None:
    manager = make_manager(
        docker_client=proxied,
        snapshot_enabled=True,
        credentials=Credentials(canaries.credentials()),
    )
    # Inspect fails for the exited worker: snapshot_env_scrub_inspect_failed (then commits).
    worker = manager.spawn_worker(
        WorkerJob("snap-1", "trello", canaries.job_data(), command=shell("sleep 1"))
    )
    proxy.add_rule(
        FaultRule(
            op="inspect",
            action="fail",
            times=None,
            match=lambda _method, path: worker.container_id in path,
        )
    )
    assert manager.wait_for_worker("snap-1", OUTCOME_TIMEOUT_S).status == "succeeded"
    host_sentry.wait_for("snapshot_env_scrub_inspect_failed")
    proxy.clear_rules()
    # The commit fails: snapshot_commit.
    proxy.add_rule(FaultRule(op="commit", action="fail", status=500))
    manager.spawn_worker(
        WorkerJob("snap-2", "trello", canaries.job_data(workItemId="card-2"), command=["true"])
    )
    assert manager.wait_for_worker("snap-2", OUTCOME_TIMEOUT_S).status == "succeeded"
    host_sentry.wait_for("snapshot_commit")
    # The exit stream breaks and the container is gone: worker_wait, and the host's logging
    # integration turns dockyard's error record into an event of its own.
    manager.spawn_worker(
        WorkerJob(
            "lost-1", "trello", canaries.job_data(workItemId="card-3"), command=["sleep", "30"]
        )
    )
    eventually(lambda: proxy.active("events") == 1)
    proxy.add_rule(FaultRule(op="inspect", action="fail", status=404, message="No such container"))
    assert proxy.cut_active("events") == 1
    assert manager.wait_for_worker("lost-1", OUTCOME_TIMEOUT_S).status == "lost"
    host_sentry.wait_for("worker_wait")
    assert any(
        "lost track" in str(e.get("logentry") or e.get("message")) for e in host_sentry.snapshot()
    )
    assert_nothing_leaked(canaries, host_sentry, dockyard_logs)


def test_cleanup_failures_hold_no_secret(
    canaries: Canaries,
    host_sentry: HostTransport,
    dockyard_logs: LogCapture,
    make_manager: MakeManager,
    proxy: FaultProxy,
    proxied: docker.APIClient,
    docker_client: docker.DockerClient,
    snapshot_image_prefix: str,
    test_image: str,
) -> None:
    projects = Projects(ProjectConfig("p-1"))
    manager = make_manager(
        docker_client=proxied,
        snapshot_enabled=True,
        projects=projects,
        credentials=Credentials(canaries.credentials()),
        snapshot_max_count=0,
    )
    # The orphan scan cannot list containers: orphan_cleanup_scan.
    proxy.add_rule(FaultRule(op="list", action="fail", status=500))
    assert manager.scan_and_cleanup_orphans() == []
    host_sentry.wait_for("orphan_cleanup_scan")
    # The start-up sync cannot list images: snapshot_startup_sync.
    proxy.add_rule(
        FaultRule(
            op="any", action="fail", match=lambda m, p: p.split("?")[0].endswith("/images/json")
        )
    )
    manager.sync_snapshots_from_docker()
    host_sentry.wait_for("snapshot_startup_sync")
    # The cleanup's TTL lookup fails (the project directory is down): snapshot_cleanup_scan.
    manager.snapshots.register("p-1", "card-9", f"{snapshot_image_prefix}never:latest")
    projects.fail_with = canaries.credentials()
    manager.run_snapshot_cleanup()
    host_sentry.wait_for("snapshot_cleanup_scan")
    projects.fail_with = None
    # Removing an evicted image fails: snapshot_image_remove.
    image = f"{snapshot_image_prefix}evicted:latest"
    tag_image(docker_client, test_image, image)
    manager.snapshots.register("p-1", "card-8", image)
    proxy.add_rule(FaultRule(op="image_remove", action="fail", status=500, times=None))
    manager.run_snapshot_cleanup()
    host_sentry.wait_for("snapshot_image_remove")
    proxy.clear_rules()
    assert_nothing_leaked(canaries, host_sentry, dockyard_logs)

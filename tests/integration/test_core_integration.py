"""The core against a real Docker engine: launch, exit, timeouts, slots, refusals, secrets.

Every test runs real containers of the busybox test image under its own router instance
id; the ``instance_id`` fixture fails a test that leaves a container behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError
from datetime import datetime, timedelta
from typing import Any

import docker
import docker.errors
import pytest

from dockyard import (
    ActiveWorker,
    ContainerManager,
    DuplicateJobError,
    InvalidJobError,
    NoWorkerSlotError,
    ProjectConfig,
    WorkerImageResolutionError,
    WorkerJob,
    WorkerLifecycleListener,
    WorkerOutcome,
)
from dockyard._naming import same_image
from support.engine import is_podman
from support.hosts import LogCapture, StaticProjects
from support.listeners import ListenerRecorder
from support.sentry import CapturedEvents
from support.threads import ThreadBaseline, eventually

MIB = 1024 * 1024
SECRET = "s3cr3t-value-123"
MASTER_KEY = "master-key-value-9f8e7d"

MakeManager = Callable[..., ContainerManager]


# --------------------------------------------------------------------------- helpers


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def job(
    job_id: str | None,
    command: Sequence[str],
    *,
    job_type: str = "trello",
    data: Mapping[str, Any] | None = None,
    **fields: Any,
) -> WorkerJob:
    return WorkerJob(job_id, job_type, dict(data or {}), command=list(command), **fields)


class Credentials:
    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.calls: list[str] = []

    def get_project_credentials(self, project_id: str) -> Mapping[str, str]:
        self.calls.append(project_id)
        return dict(self.values)


def containers_of(
    client: docker.DockerClient, instance_id: str, **filters: Any
) -> list[dict[str, Any]]:
    """This instance's containers as the engine lists them (one call: no inspect races)."""
    labels = [f"cascade.router.instance={instance_id}", *filters.pop("labels", [])]
    return list(client.api.containers(all=True, filters={"label": labels, **filters}))


# --------------------------------------------------------------------------- exits


def test_success_delivers_one_outcome(make_manager: MakeManager) -> None:
    listener = ListenerRecorder()
    # dockyard removes the container itself here: with AutoRemove the engine may delete it
    # before the inspect that reads OOMKilled (a documented engine race).
    manager = make_manager(listener=listener, auto_remove_workers=False)

    worker = manager.spawn_worker(job("ok-1", ["true"]))
    outcome = manager.wait_for_worker("ok-1", timeout=30)

    assert worker.job_id == "ok-1"
    assert len(worker.container_id) == 64
    assert worker.started_at.tzinfo is not None
    assert outcome.status == "succeeded"
    assert outcome.succeeded
    assert outcome.exit_code == 0
    assert outcome.oom_killed is False
    assert outcome.exit_reason is None
    assert listener.wait_finished("ok-1") == outcome
    time.sleep(0.3)  # a second, late outcome would show up here
    assert listener.of("ok-1") == ["started", "finished"]
    # Also answerable after it finished, with the very same outcome.
    assert manager.wait_for_worker("ok-1", timeout=1) == outcome
    assert manager.get_active_worker_count() == 0
    assert manager.get_active_workers() == []


def test_nonzero_exit_is_failed_and_reported(
    make_manager: MakeManager, sentry_events: CapturedEvents
) -> None:
    listener = ListenerRecorder()
    # Inspect facts are only certain when dockyard removes the container itself (with
    # AutoRemove the engine may delete it first; that case is covered with fakes).
    manager = make_manager(listener=listener, auto_remove_workers=False)

    # The short sleep gives Docker distinct start and finish times (an instant exit can be
    # recorded as finishing before it started, and such a duration is dropped).
    manager.spawn_worker(job("fail-3", sh("sleep 0.3; exit 3"), job_type="jira"))
    outcome = manager.wait_for_worker("fail-3", timeout=30)

    assert outcome.status == "failed"
    assert outcome.exit_code == 3
    assert outcome.oom_killed is False
    assert outcome.duration_s is not None and outcome.duration_s > 0
    assert outcome.describe() == "Worker crashed with exit code 3 · OOMKilled=false"
    assert listener.wait_finished("fail-3") == outcome

    (event,) = sentry_events.wait_for("worker_exit")
    assert event["level"] == "error"
    assert event["tags"] == {"source": "worker_exit", "jobType": "jira"}
    (exc,) = event["exception"]["values"]
    assert exc["value"] == "Worker exited with status 3"
    extra = event["extra"]
    assert extra["jobId"] == "fail-3"
    assert extra["statusCode"] == 3
    assert extra["oomKilled"] is False
    assert "exitReason" in extra and extra["exitReason"] is None
    assert extra["durationMs"] == int(outcome.duration_s * 1000)


def test_exit_code_2_is_a_boot_failure(make_manager: MakeManager) -> None:
    manager = make_manager()
    manager.spawn_worker(job("boot-2", sh("exit 2")))
    outcome = manager.wait_for_worker("boot-2", timeout=30)
    assert outcome.status == "failed"
    assert outcome.exit_code == 2
    assert outcome.describe().startswith("Worker boot failed (exit code 2)")


OOM_ATTEMPTS = 4


@pytest.mark.parametrize("auto_remove", [True, False], ids=["auto-remove", "kept-until-handled"])
def test_oom_kill_is_reported(
    make_manager: MakeManager,
    sentry_events: CapturedEvents,
    docker_client: docker.DockerClient,
    auto_remove: bool,
) -> None:
    """An OOM kill shows as `oom_killed=True` in the outcome and the Sentry event, with the
    run's `duration_s`, also when the engine removed the container before dockyard's
    inspect (then both come from the engine's `oom`, `start` and `die` events).

    The engine (20.10) now and then records a real OOM kill as
    `OOMKilled=false` when its `oom` notice loses the race with the exit. So a few attempts
    are allowed; every one must be a 137 failure with a duration, and one must carry the flag.
    Podman sends no `oom` event, but there dockyard removes an auto-removed worker itself
    after its exit, so the inspect reads the flag in both cases.
    """
    manager = make_manager(worker_memory_mb=32, auto_remove_workers=auto_remove)
    outcomes = []
    for attempt in range(OOM_ATTEMPTS):
        job_id = f"oom-{attempt}"
        # `tail` keeps the newline-free stream in memory until the kernel kills it.
        manager.spawn_worker(job(job_id, sh("head -c 200m /dev/zero | tail")))
        outcome = manager.wait_for_worker(job_id, timeout=60)
        assert (outcome.status, outcome.exit_code) == ("failed", 137)
        assert outcome.duration_s is not None and 0 < outcome.duration_s < 60, outcome
        outcomes.append(outcome)
        if outcome.oom_killed:
            break
    assert outcomes[-1].oom_killed is True, outcomes
    assert "OOMKilled=true" in outcomes[-1].describe()

    events = sentry_events.wait_for("worker_exit", count=len(outcomes))
    (event,) = [e for e in events if e["extra"]["jobId"] == outcomes[-1].job_id]
    assert event["extra"]["oomKilled"] is outcomes[-1].oom_killed
    assert event["extra"]["statusCode"] == 137
    assert event["extra"]["durationMs"] == int(outcomes[-1].duration_s * 1000)


def test_timeout_gives_exactly_one_timed_out_outcome(
    make_manager: MakeManager,
    docker_client: docker.DockerClient,
    instance_id: str,
    sentry_events: CapturedEvents,
) -> None:
    listener = ListenerRecorder()
    manager = make_manager(listener=listener, worker_timeout_s=2)

    worker = manager.spawn_worker(job("slow-1", ["sleep", "30"], job_type="github"))
    assert worker.deadline - worker.started_at == timedelta(seconds=2)
    outcome = manager.wait_for_worker("slow-1", timeout=30)

    assert outcome.status == "timed_out"
    assert outcome.describe().startswith("Worker timed out")
    assert listener.wait_finished("slow-1") == outcome
    assert containers_of(docker_client, instance_id) == []
    time.sleep(1.0)  # the kill-induced exit must not deliver a second outcome
    assert listener.of("slow-1") == ["started", "finished"]
    assert manager.wait_for_worker("slow-1", timeout=1) == outcome

    (event,) = sentry_events.wait_for("worker_timeout")
    assert event["level"] == "warning"
    assert event["tags"] == {"source": "worker_timeout", "jobType": "github"}
    message = event["exception"]["values"][0]["value"]
    match = re.fullmatch(r"Worker timeout after (\d+)ms", message)
    assert match, message
    assert event["extra"]["jobId"] == "slow-1"
    assert event["extra"]["durationMs"] == int(match.group(1))
    assert int(match.group(1)) >= 2000
    # The kill is not a crash: no exit report.
    assert sentry_events.with_source("worker_exit") == []


def test_kill_worker(make_manager: MakeManager, sentry_events: CapturedEvents) -> None:
    listener = ListenerRecorder()
    manager = make_manager(listener=listener)

    assert manager.kill_worker("never-spawned") is False
    manager.spawn_worker(job("kill-1", ["sleep", "30"]))
    with pytest.raises(TimeoutError):
        manager.wait_for_worker("kill-1", timeout=0.2)
    assert manager.kill_worker("kill-1") is True
    outcome = manager.wait_for_worker("kill-1", timeout=30)

    assert outcome.status == "timed_out"
    assert listener.wait_finished("kill-1") == outcome
    assert manager.kill_worker("kill-1") is False  # no longer tracked
    assert listener.of("kill-1") == ["started", "finished"]
    assert sentry_events.with_source("worker_exit") == []
    with pytest.raises(KeyError):
        manager.wait_for_worker("never-spawned", timeout=0.1)


def test_listener_errors_never_break_the_lifecycle(make_manager: MakeManager) -> None:
    class Broken(WorkerLifecycleListener):
        def on_worker_started(self, worker: ActiveWorker) -> None:
            raise RuntimeError("listener bug")

        def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
            raise RuntimeError("listener bug")

    manager = make_manager(listener=Broken(), max_workers=1)
    for n in range(2):  # the second spawn proves the slot came back
        manager.spawn_worker(job(f"broken-{n}", ["true"]), slot_timeout=10)
        assert manager.wait_for_worker(f"broken-{n}", timeout=30).status == "succeeded"


# --------------------------------------------------------------------------- slots


def test_slot_cap_holds_under_concurrent_spawns(
    make_manager: MakeManager, docker_client: docker.DockerClient, instance_id: str
) -> None:
    listener = ListenerRecorder()
    manager = make_manager(listener=listener, max_workers=2)
    jobs = [f"cap-{n}" for n in range(8)]
    outcomes: dict[str, WorkerOutcome] = {}
    errors: list[BaseException] = []
    seen_running: list[int] = []
    seen_active: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            running = containers_of(docker_client, instance_id, status="running")
            seen_running.append(len(running))
            seen_active.append(manager.get_active_worker_count())
            time.sleep(0.03)

    def run(job_id: str) -> None:
        try:
            manager.spawn_worker(job(job_id, ["sleep", "1"]))
            outcomes[job_id] = manager.wait_for_worker(job_id, timeout=60)
        except BaseException as err:
            errors.append(err)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=run, args=(j,)) for j in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    done.set()
    sampler.join()

    assert errors == []
    assert sorted(outcomes) == sorted(jobs)
    assert all(o.status == "succeeded" for o in outcomes.values())
    assert max(seen_running) == 2
    assert max(seen_active) <= 2
    for job_id in jobs:
        listener.wait_finished(job_id)
        assert listener.of(job_id) == ["started", "finished"]


def test_no_worker_slot_error_when_full(
    make_manager: MakeManager, docker_client: docker.DockerClient, instance_id: str
) -> None:
    manager = make_manager(max_workers=2)
    for n in range(2):
        manager.spawn_worker(job(f"hold-{n}", ["sleep", "30"]))

    with pytest.raises(NoWorkerSlotError) as info:
        manager.spawn_worker(job("third", ["true"]), slot_timeout=0.3)
    assert info.value.job_id == "third"
    assert isinstance(info.value, TimeoutError)
    assert containers_of(docker_client, instance_id, labels=["cascade.job.id=third"]) == []
    assert len(containers_of(docker_client, instance_id)) == 2

    for n in range(2):
        manager.kill_worker(f"hold-{n}")
    # The refused id was not kept reserved, and freed slots are handed out again.
    manager.spawn_worker(job("third", ["true"]), slot_timeout=30)
    assert manager.wait_for_worker("third", timeout=30).status == "succeeded"
    for n in range(2):
        assert manager.wait_for_worker(f"hold-{n}", timeout=30).status == "timed_out"


def test_slot_grants_are_first_come_first_served(make_manager: MakeManager) -> None:
    listener = ListenerRecorder()
    manager = make_manager(listener=listener, max_workers=1)
    manager.spawn_worker(job("holder", ["sleep", "30"]))
    errors: list[BaseException] = []

    def run(job_id: str) -> None:
        try:
            manager.spawn_worker(job(job_id, ["sleep", "0.2"]), slot_timeout=60)
            manager.wait_for_worker(job_id, timeout=60)
        except BaseException as err:
            errors.append(err)

    order = ["first", "second", "third", "fourth"]
    threads = []
    for n, job_id in enumerate(order, start=1):
        thread = threading.Thread(target=run, args=(job_id,))
        thread.start()
        threads.append(thread)
        # Queue them one after the other: the gate's waiter count says when one is in line.
        eventually(lambda n=n: manager._parts.slots.waiting == n, what=f"{n} waiters")
    assert manager.kill_worker("holder")
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert listener.started == ["holder", *order]
    assert manager.wait_for_worker("holder", timeout=30).status == "timed_out"


# --------------------------------------------------------------------------- refusals


def test_duplicate_job_is_refused_without_a_container(
    make_manager: MakeManager, docker_client: docker.DockerClient, instance_id: str
) -> None:
    manager = make_manager()
    first = manager.spawn_worker(job("dup-1", ["sleep", "30"]))

    with pytest.raises(DuplicateJobError) as info:
        manager.spawn_worker(job("dup-1", ["true"]))
    assert info.value.job_id == "dup-1"
    (only,) = containers_of(docker_client, instance_id, labels=["cascade.job.id=dup-1"])
    assert only["Id"] == first.container_id

    assert manager.kill_worker("dup-1")
    assert manager.wait_for_worker("dup-1", timeout=30).status == "timed_out"
    # Once finished, the id can run again and wait_for_worker follows the new run.
    manager.spawn_worker(job("dup-1", ["true"]))
    assert manager.wait_for_worker("dup-1", timeout=30).status == "succeeded"


_IMAGE_PROJECT = ProjectConfig(
    "img-bad",
    worker_image="registry.example/team/worker:1",
    worker_image_status="verified",
    worker_image_digest="Not A Valid Image!",
)
_UNVERIFIED_PROJECT = ProjectConfig(
    "img-pending", worker_image="registry.example/team/worker:2", worker_image_status="pending"
)
_BIG = "x" * (96 * 1024)

BAD_INPUTS: list[tuple[str, dict[str, Any], dict[str, Any], type[Exception]]] = [
    ("set-payload", {"data": {"tags": {"a", "b"}}}, {}, InvalidJobError),
    ("nan-payload", {"data": {"score": float("nan")}}, {}, InvalidJobError),
    ("object-payload", {"data": {"when": object()}}, {}, InvalidJobError),
    ("tuple-key", {"data": {(1, 2): "x"}}, {}, InvalidJobError),
    ("lone-surrogate", {"data": {"text": "\ud800"}}, {}, InvalidJobError),
    ("nul-in-id", {"job_id": "bad\x00id"}, {}, InvalidJobError),
    ("empty-type", {"job_type": ""}, {}, InvalidJobError),
    ("nul-in-project", {"data": {"projectId": "p\x00q"}}, {}, InvalidJobError),
    (
        "invalid-image",
        {"data": {"projectId": "img-bad"}},
        {"projects": StaticProjects(_IMAGE_PROJECT)},
        InvalidJobError,
    ),
    (
        "unverified-image",
        {"data": {"projectId": "img-pending"}},
        {"projects": StaticProjects(_UNVERIFIED_PROJECT)},
        WorkerImageResolutionError,
    ),
    # No store and no Redis to offload to (spec §13 offloads to redis_url by default).
    ("oversize-no-store", {"data": {"blob": _BIG}}, {"redis_url": ""}, InvalidJobError),
    (
        "nul-in-credential",
        {"data": {"projectId": "p-1"}},
        {"credentials": Credentials({"TOKEN": "a\x00b"})},
        InvalidJobError,
    ),
]


@pytest.mark.parametrize(
    ("job_kwargs", "manager_kwargs", "error"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_refused_without_a_container(
    make_manager: MakeManager,
    docker_client: docker.DockerClient,
    instance_id: str,
    job_kwargs: dict[str, Any],
    manager_kwargs: dict[str, Any],
    error: type[Exception],
) -> None:
    manager = make_manager(max_workers=1, **manager_kwargs)
    kwargs = dict(job_kwargs)
    job_id = kwargs.pop("job_id", "bad-1")
    job_type = kwargs.pop("job_type", "trello")
    bad = WorkerJob(job_id, job_type, kwargs.pop("data", {}), command=["true"])

    with pytest.raises(error):
        manager.spawn_worker(bad, slot_timeout=1)

    assert containers_of(docker_client, instance_id) == []
    assert manager.get_active_worker_count() == 0
    # The only slot is free again, and the id is not held.
    manager.spawn_worker(job("bad-1", ["true"]), slot_timeout=1)
    assert manager.wait_for_worker("bad-1", timeout=30).status == "succeeded"


def test_bad_input_is_refused_even_while_every_slot_is_busy(make_manager: MakeManager) -> None:
    manager = make_manager(max_workers=1, redis_url="")  # large payloads: nowhere to go
    manager.spawn_worker(job("busy", ["sleep", "30"]))
    # Refused for what it is, not after a slot wait ending in NoWorkerSlotError.
    with pytest.raises(InvalidJobError):
        manager.spawn_worker(job("huge", ["true"], data={"blob": _BIG}), slot_timeout=0.5)
    with pytest.raises(InvalidJobError):
        manager.spawn_worker(job("nan", ["true"], data={"x": float("nan")}), slot_timeout=0.5)
    assert manager.kill_worker("busy")
    assert manager.wait_for_worker("busy", timeout=30).status == "timed_out"


# --------------------------------------------------------------------------- containers


def test_labels_and_host_config(
    make_manager: MakeManager, docker_client: docker.DockerClient, instance_id: str, test_image: str
) -> None:
    manager = make_manager()
    data = {"projectId": "p-1", "issueKey": "MNG-1", "agentType": "review"}
    worker = manager.spawn_worker(
        job("coalesce:p:MNG-1", ["sleep", "30"], job_type="jira", data=data)
    )
    try:
        info = docker_client.api.inspect_container(worker.container_id)
    finally:
        manager.kill_worker(worker.job_id)
    manager.wait_for_worker(worker.job_id, timeout=30)

    assert worker.container_name == "cascade-worker-coalesce_p_MNG-1"
    assert info["Name"] == "/cascade-worker-coalesce_p_MNG-1"
    assert same_image(info["Config"]["Image"], test_image)  # Podman answers it normalised
    assert worker.image == test_image
    assert (worker.project_id, worker.work_item_id, worker.agent_type) == ("p-1", "MNG-1", "review")

    host = info["HostConfig"]
    assert host["Memory"] == 64 * MIB
    assert host["MemorySwap"] == 64 * MIB
    assert host["NetworkMode"] == "bridge"
    # On Podman the driver removes the worker itself (its AutoRemove takes the log too soon).
    assert host["AutoRemove"] is not is_podman(docker_client)
    assert host["Privileged"] is False
    assert not host.get("Binds")
    assert not host.get("Mounts")
    assert info["Mounts"] == []
    assert host["PidsLimit"] == manager.config.pids_limit

    labels = {k: v for k, v in info["Config"]["Labels"].items() if k.startswith("cascade.")}
    deadline = labels.pop("cascade.deadline")
    assert labels == {
        "cascade.job.id": "coalesce:p:MNG-1",
        "cascade.job.type": "jira",
        "cascade.managed": "true",
        "cascade.router.instance": instance_id,
        "cascade.project.id": "p-1",
        "cascade.work.item.id": "MNG-1",
        "cascade.agent.type": "review",
        "cascade.snapshot.enabled": "false",
        "cascade.base.image": test_image,
    }
    parsed = datetime.fromisoformat(deadline)
    assert parsed.tzinfo is not None
    # Stamped just before create; the worker's own deadline is counted from its start.
    assert parsed <= worker.deadline
    assert worker.deadline - parsed < timedelta(seconds=30)

    env = dict(item.partition("=")[::2] for item in info["Config"]["Env"])
    assert env["JOB_ID"] == "coalesce:p:MNG-1"
    assert env["JOB_TYPE"] == "jira"
    assert json.loads(env["JOB_DATA"]) == data


def test_empty_labels_for_a_job_without_project(
    make_manager: MakeManager, docker_client: docker.DockerClient
) -> None:
    manager = make_manager()
    worker = manager.spawn_worker(job("plain-1", ["sleep", "30"]))
    try:
        labels = docker_client.api.inspect_container(worker.container_id)["Config"]["Labels"]
    finally:
        manager.kill_worker(worker.job_id)
    manager.wait_for_worker(worker.job_id, timeout=30)
    assert labels["cascade.project.id"] == ""
    assert labels["cascade.agent.type"] == ""
    assert labels["cascade.work.item.id"] == ""


@pytest.mark.parametrize(
    ("settings", "auto_remove"),
    [
        ({"snapshot_enabled": True}, False),
        ({"auto_remove_workers": False}, False),
        ({}, True),
    ],
    ids=["snapshots-on", "auto-remove-off", "default"],
)
def test_auto_remove_follows_snapshots(
    make_manager: MakeManager,
    docker_client: docker.DockerClient,
    instance_id: str,
    settings: dict[str, Any],
    auto_remove: bool,
) -> None:
    manager = make_manager(**settings)
    # A project id: without one a job never runs in snapshot mode (as the original).
    worker = manager.spawn_worker(job("ar-1", sh("sleep 0.5; exit 1"), data={"projectId": "p"}))
    info = docker_client.api.inspect_container(worker.container_id)
    # On Podman dockyard removes an auto-removed worker itself, after its exit (below).
    assert info["HostConfig"]["AutoRemove"] is (auto_remove and not is_podman(docker_client))
    snapshots = "true" if settings.get("snapshot_enabled") else "false"
    assert info["Config"]["Labels"]["cascade.snapshot.enabled"] == snapshots
    env = dict(item.partition("=")[::2] for item in info["Config"]["Env"])
    assert ("CASCADE_SNAPSHOT_ENABLED" in env) is bool(settings.get("snapshot_enabled"))

    assert manager.wait_for_worker("ar-1", timeout=30).status == "failed"
    # Removed by the engine or by dockyard, before the outcome was delivered.
    assert containers_of(docker_client, instance_id) == []


# --------------------------------------------------------------------------- secrets


def test_credential_reaches_the_worker_but_no_log_label_or_event(
    make_manager: MakeManager,
    docker_client: docker.DockerClient,
    sentry_events: CapturedEvents,
    dockyard_logs: LogCapture,
) -> None:
    credentials = Credentials({"API_TOKEN": SECRET})
    # Without auto-removal the engine hands out the log tail, so it is read and logged.
    manager = make_manager(credentials=credentials, auto_remove_workers=False)
    data = {"projectId": "p-1", "workItemId": "c-1"}

    checker = manager.spawn_worker(
        job(
            "cred-ok",
            sh(
                f'test "$API_TOKEN" = {SECRET} && test "$CASCADE_CREDENTIAL_KEYS" = API_TOKEN '
                "&& sleep 0.5"
            ),
            data=data,
        )
    )
    info = docker_client.api.inspect_container(checker.container_id)
    assert manager.wait_for_worker("cred-ok", timeout=30).status == "succeeded"

    manager.spawn_worker(
        job(
            "cred-echo", sh('echo "token=$API_TOKEN"; echo "err $API_TOKEN" >&2; exit 4'), data=data
        )
    )
    assert manager.wait_for_worker("cred-echo", timeout=30).status == "failed"
    sentry_events.wait_for("worker_exit")

    assert credentials.calls == ["p-1", "p-1"]
    assert f"API_TOKEN={SECRET}" in info["Config"]["Env"]
    for key, value in info["Config"]["Labels"].items():
        assert SECRET not in key and SECRET not in value

    texts = dockyard_logs.texts()
    output = [t for t in texts if "worker output" in t and "cred-echo" in t]
    assert output, "the log tail of the failed worker was not logged"
    assert "token=***" in output[0] and "err ***" in output[0]
    assert all(SECRET not in text for text in texts)

    serialized = json.dumps(list(sentry_events), default=str)
    assert "cred-echo" in serialized
    assert SECRET not in serialized


def test_credential_master_key_never_reaches_the_worker(
    make_manager: MakeManager,
    monkeypatch: pytest.MonkeyPatch,
    sentry_events: CapturedEvents,
    dockyard_logs: LogCapture,
) -> None:
    monkeypatch.setenv("CREDENTIAL_MASTER_KEY", MASTER_KEY)
    monkeypatch.setenv("SENTRY_RELEASE", "rel-1")
    monkeypatch.delenv("CASCADE_DASHBOARD_URL", raising=False)
    # A provider handing out the master key itself must not smuggle it in either.
    credentials = Credentials({"CREDENTIAL_MASTER_KEY": MASTER_KEY, "OTHER": "fine-value"})
    manager = make_manager(credentials=credentials)

    script = (
        'if [ -n "${CREDENTIAL_MASTER_KEY+set}" ]; then exit 9; fi; '
        'test "$SENTRY_RELEASE" = rel-1 || exit 8; '
        'test -z "${CASCADE_DASHBOARD_URL+set}" || exit 7; '
        'test "$OTHER" = fine-value || exit 6; '
        'test "$CASCADE_CREDENTIAL_KEYS" = OTHER || exit 5'
    )
    manager.spawn_worker(job("mk-1", sh(script), data={"projectId": "p-1"}))
    outcome = manager.wait_for_worker("mk-1", timeout=30)
    assert (outcome.status, outcome.exit_code) == ("succeeded", 0)
    assert all(MASTER_KEY not in text for text in dockyard_logs.texts())
    assert MASTER_KEY not in json.dumps(list(sentry_events), default=str)


# --------------------------------------------------------------------------- ids


def test_job_without_id_gets_unknown_epoch_ms(make_manager: MakeManager) -> None:
    manager = make_manager()
    before = int(time.time() * 1000)
    worker = manager.spawn_worker(job(None, ["true"]))
    after = int(time.time() * 1000)

    match = re.fullmatch(r"unknown-(\d+)-[A-Za-z0-9_.-]+-[0-9a-f]{8}", worker.job_id)
    assert match, worker.job_id
    assert before <= int(match.group(1)) <= after
    assert worker.container_name == f"cascade-worker-{worker.job_id}"
    assert manager.wait_for_worker(worker.job_id, timeout=30).status == "succeeded"


# --------------------------------------------------------------------------- shutdown


def _open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since listed
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def test_close_leaves_no_thread_timer_or_connection(
    thread_baseline: ThreadBaseline,
    make_manager: MakeManager,
    docker_client: docker.DockerClient,
) -> None:
    sockets_before = _open_sockets()
    manager = make_manager(max_workers=3)
    manager.spawn_worker(job("t-quick", ["true"]))
    manager.wait_for_worker("t-quick", timeout=30)
    running = manager.spawn_worker(job("t-running", ["sleep", "30"]))
    manager.start_snapshot_cleanup(interval=60)
    manager.start_orphan_cleanup(interval=60)

    manager.close()
    manager.close()  # idempotent

    thread_baseline.assert_no_new_threads(timeout=5.0)
    assert _open_sockets() <= sockets_before
    with pytest.raises(RuntimeError):
        manager.spawn_worker(job("t-late", ["true"]))
    # close() detaches: the worker keeps running until someone deals with it.
    assert docker_client.api.inspect_container(running.container_id)["State"]["Running"]
    docker_client.api.remove_container(running.container_id, force=True)


def test_detach_all_keeps_the_container_and_delivers_nothing(
    make_manager: MakeManager,
    docker_client: docker.DockerClient,
    sentry_events: CapturedEvents,
) -> None:
    listener = ListenerRecorder()
    manager = make_manager(listener=listener, worker_timeout_s=1)
    worker = manager.spawn_worker(job("det-1", ["sleep", "30"]))

    manager.detach_all()

    assert manager.get_active_worker_count() == 0
    assert manager.kill_worker("det-1") is False
    with pytest.raises((KeyError, CancelledError)):
        manager.wait_for_worker("det-1", timeout=0.1)
    assert docker_client.api.inspect_container(worker.container_id)["State"]["Running"]
    # Past the detached worker's deadline nothing fires; its exit is nobody's business now.
    time.sleep(1.5)
    assert docker_client.api.inspect_container(worker.container_id)["State"]["Running"]
    docker_client.api.kill(worker.container_id)
    if is_podman(docker_client):
        # Made without AutoRemove there (dockyard removes its workers itself): the exited
        # container is left for the orphan scan, which takes it as an exited leftover.
        docker_client.api.wait(worker.container_id, timeout=30)
        time.sleep(0.5)
        assert manager.scan_and_cleanup_orphans() == [worker.container_id]
        assert docker_client.containers.list(all=True, filters={"id": worker.container_id}) == []
    else:
        with pytest.raises(docker.errors.NotFound):
            docker_client.api.wait(worker.container_id, timeout=30, condition="removed")
            docker_client.api.inspect_container(worker.container_id)
        time.sleep(0.5)
    assert listener.of("det-1") == ["started"]
    assert sentry_events.with_source("worker_exit") == []
    assert sentry_events.with_source("worker_timeout") == []

    # The manager itself stays usable.
    manager.spawn_worker(job("det-2", ["true"]))
    assert manager.wait_for_worker("det-2", timeout=30).status == "succeeded"


def test_two_managers_share_no_state(make_manager: MakeManager) -> None:
    first_listener, second_listener = ListenerRecorder(), ListenerRecorder()
    first = make_manager(max_workers=1, listener=first_listener)
    second = make_manager(
        max_workers=1, listener=second_listener, container_name_prefix="cascade-worker-b-"
    )
    first.spawn_worker(job("shared", ["sleep", "30"]))

    assert second.get_active_worker_count() == 0
    assert second.kill_worker("shared") is False
    with pytest.raises(KeyError):
        second.wait_for_worker("shared", timeout=0.1)
    # Neither the job id nor the single slot of the first manager is taken here.
    second.spawn_worker(job("shared", ["true"]), slot_timeout=1)
    assert second.wait_for_worker("shared", timeout=30).status == "succeeded"
    assert first.get_active_worker_count() == 1

    assert first.snapshots is not second.snapshots
    first.snapshots.register("p", "w", "dockyard-test-unused:latest")
    assert len(first.snapshots) == 1
    assert len(second.snapshots) == 0

    assert first.kill_worker("shared")
    assert first.wait_for_worker("shared", timeout=30).status == "timed_out"
    first.close()
    second.spawn_worker(job("after-close", ["true"]))
    assert second.wait_for_worker("after-close", timeout=30).status == "succeeded"
    assert first_listener.started == ["shared"]
    assert second_listener.started == ["shared", "after-close"]

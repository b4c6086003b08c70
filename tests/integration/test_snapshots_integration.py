"""Snapshots and image fallbacks end to end on the real engine (spec §6), plus the pull and
scrub error paths with fakes.

Each test runs its own router instance (containers and snapshot images are removed by the
``instance_id`` fixture) with ``snapshot_enabled=True``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
import docker.errors
import pytest

from dockyard import (
    ActiveWorker,
    ContainerManager,
    ProjectConfig,
    RouterConfig,
    WorkerImageResolutionError,
    WorkerJob,
    WorkerOutcome,
    WorkerSpawnError,
)
from dockyard._docker import DockerGateway
from dockyard._errors import UnpullableImageError
from dockyard._images import ImagePuller
from dockyard._naming import LabelSchema, snapshot_image_name
from dockyard._sentry import Reporter
from dockyard._snapshot_registry import SnapshotRegistry
from dockyard._snapshots import SnapshotManager
from support.engine import ManagerFactory, image_names
from support.hold import let_go
from support.hosts import StaticProjects, snapshot_worker
from support.sentry import CapturedEvents

WAIT_S = 60.0

# Every key of the spec's deny-list (§6).
DENY_LIST = (
    "JOB_DATA",
    "JOB_DATA_REDIS_KEY",
    "JOB_ID",
    "JOB_TYPE",
    "DATABASE_URL",
    "DATABASE_SSL",
    "DATABASE_CA_CERT",
    "REDIS_URL",
    "CREDENTIAL_MASTER_KEY",
    "CASCADE_CREDENTIAL_KEYS",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CASCADE_POSTGRES_HOST",
    "CASCADE_POSTGRES_PORT",
    "CASCADE_SNAPSHOT_REUSE",
    "CASCADE_SNAPSHOT_ENABLED",
)

# The entry image's own start-up: a fresh worker leaves /warm.txt behind.
ENTRY_CMD = ["echo warm > /warm.txt"]
ENTRYPOINT = ["/bin/sh", "-c"]
# For the entry image (`sh -c`): succeed only on a warm start from a snapshot.
CHECK_WARM = 'test "$(cat /warm.txt)" = warm && test "$CASCADE_SNAPSHOT_REUSE" = true'
# Fail unless the start is cold, then wait for /go (created with docker exec).
COLD_THEN_WAIT = (
    'test ! -e /warm.txt && test -z "$CASCADE_SNAPSHOT_REUSE" || exit 3; '
    "while [ ! -e /go ]; do sleep 0.05; done"
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def entry_image(docker_client: docker.DockerClient, test_image: str) -> Iterator[str]:
    """The test image with an ENTRYPOINT and a CMD of its own, to see both survive a commit."""
    name = f"dockyard-test-entry-{uuid.uuid4().hex[:8]}:latest"
    dockerfile = (
        f"FROM {test_image}\nENTRYPOINT {json.dumps(ENTRYPOINT)}\nCMD {json.dumps(ENTRY_CMD)}\n"
    )
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=name, rm=True)
    yield name
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.images.remove(name, force=True)


class Credentials:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get_project_credentials(self, project_id: str) -> dict[str, str]:
        return dict(self.values)


@pytest.fixture
def managers(
    instance_id: str, entry_image: str, snapshot_image_prefix: str
) -> Iterator[Callable[..., ContainerManager]]:
    """``make(**overrides)``: a snapshot-enabled manager on the entry image; closed at teardown."""
    make = ManagerFactory(
        {
            "worker_image": entry_image,
            "router_instance_id": instance_id,
            "snapshot_image_prefix": snapshot_image_prefix,
            "container_name_prefix": f"{instance_id}-",
            "snapshot_enabled": True,
            "stop_grace_s": 1,
            "worker_memory_mb": 64,
            "slot_wait_timeout_s": 30,
            "docker_network": "none",  # workers here need no network
        },
        ("credentials", "projects", "job_data_store", "listener", "reporter"),
    )
    yield make
    make.close_all()


def job(
    job_id: str,
    *,
    project: str = "proj-1",
    work_item: str = "card-1",
    command: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> WorkerJob:
    return WorkerJob(
        id=job_id,
        type="trello",
        data=data or {},
        project_id=project,
        work_item_id=work_item,
        command=command,
    )


def run(manager: ContainerManager, worker_job: WorkerJob) -> tuple[ActiveWorker, WorkerOutcome]:
    worker = manager.spawn_worker(worker_job)
    return worker, manager.wait_for_worker(worker.job_id, timeout=WAIT_S)


def instance_containers(client: docker.DockerClient, instance_id: str) -> list[Any]:
    return list(
        client.containers.list(
            all=True, filters={"label": f"cascade.router.instance={instance_id}"}
        )
    )


def image_exists(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def env_of(client: docker.DockerClient, image: str) -> dict[str, str]:
    env = client.api.inspect_image(image)["Config"]["Env"] or []
    return dict(item.partition("=")[::2] for item in env)


def everything_recorded(client: docker.DockerClient, image: str) -> str:
    """`docker image inspect` and `docker history` of the image, and inspect of every
    image its history names: all the metadata the engine keeps about it."""
    parts = [json.dumps(client.api.inspect_image(image))]
    history = client.api.history(image)
    parts.append(json.dumps(history))
    for entry in history:
        # No image of its own: Docker says `<missing>`, Podman `sha256:<missing>`.
        if not str(entry.get("Id", "<missing>")).endswith("<missing>"):
            parts.append(json.dumps(client.api.inspect_image(entry["Id"])))
    return "\n".join(parts)


# --------------------------------------------------------------------------- commit and reuse


def test_clean_exit_commits_a_scrubbed_snapshot_that_the_next_run_starts_from(
    managers: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    snapshot_image_prefix: str,
    instance_id: str,
    entry_image: str,
    sentry_events: CapturedEvents,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = uuid.uuid4().hex[:10]
    secrets = {
        "DATABASE_URL": f"postgres://app:dbpw-{marker}@db:5432/app",
        "DATABASE_SSL": f"ssl-{marker}",
        "DATABASE_CA_CERT": f"-----BEGIN CERTIFICATE----- ca-{marker}",
        "CLAUDE_CODE_OAUTH_TOKEN": f"oauth-{marker}",
        "SENTRY_DSN": f"https://dsn{marker}@sentry.example.invalid/7",
        "CREDENTIAL_MASTER_KEY": f"master-{marker}",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    credentials = {"API_TOKEN": f"tok-{marker}", "GH_TOKEN": f"gh-{marker}"}
    redis_url = f"redis://:redispw-{marker}@redis:6379/0"
    payload_secret = f"payload-{marker}"
    manager = managers(credentials=Credentials(credentials), redis_url=redis_url)

    project, work_item = "Proj/Alpha", "Card #42"
    worker, outcome = run(
        manager,
        job(
            f"{instance_id}-first", project=project, work_item=work_item, data={"n": payload_secret}
        ),
    )
    assert outcome.status == "succeeded", outcome
    assert worker.image == entry_image

    # Named per spec: prefix + sanitised project + '-' + sanitised work item + '-' + hash.
    meta = manager.snapshots.get(project, work_item)
    assert meta is not None
    repository, _, tag = meta.image_name.rpartition(":")
    assert tag == "latest"
    assert re.fullmatch(
        re.escape(snapshot_image_prefix) + r"proj-alpha-card-42-[0-9a-f]+", repository
    )
    assert (meta.project_id, meta.work_item_id) == (project, work_item)
    info = docker_client.api.inspect_image(meta.image_name)
    assert meta.image_size_bytes == info["Size"]

    # Every deny-listed key that the worker had, and every credential, is blank.
    env = env_of(docker_client, meta.image_name)
    had = {
        "JOB_DATA", "JOB_ID", "JOB_TYPE", "DATABASE_URL", "DATABASE_SSL", "DATABASE_CA_CERT",
        "REDIS_URL", "CASCADE_CREDENTIAL_KEYS", "CLAUDE_CODE_OAUTH_TOKEN",
        "CASCADE_POSTGRES_HOST", "CASCADE_POSTGRES_PORT", "CASCADE_SNAPSHOT_ENABLED",
    }  # fmt: skip
    for key in sorted(had | set(credentials)):
        assert env.get(key) == "", (key, env.get(key))
    for key in set(DENY_LIST) - had:
        assert key not in env, key  # never set, so nothing to blank (and never the master key)
    assert env["LOG_LEVEL"] == "info"  # keys outside the deny-list keep their value
    assert "PATH" in env
    # The image's own start-up is kept, and snapshot labels of its own name the pair.
    assert info["Config"]["Entrypoint"] == ENTRYPOINT
    assert info["Config"]["Cmd"] == ENTRY_CMD
    labels = info["Config"]["Labels"]
    assert labels["cascade.snapshot.project.id"] == project
    assert labels["cascade.snapshot.work.item.id"] == work_item
    assert labels["cascade.project.id"] == ""  # the worker labels own nothing

    # No secret value anywhere in what the engine records about the image.
    recorded = everything_recorded(docker_client, meta.image_name)
    for value in [*secrets.values(), *credentials.values(), redis_url, payload_secret]:
        assert value not in recorded
    assert marker not in recorded

    # The committed container is gone.
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(worker.container_id)
    first_image_id = info["Id"]

    # The next run of the same work item starts from the snapshot, warm.
    worker2, outcome2 = run(
        manager,
        job(f"{instance_id}-second", project=project, work_item=work_item, command=[CHECK_WARM]),
    )
    assert worker2.image == meta.image_name
    assert outcome2.status == "succeeded", outcome2

    # It is committed in turn (the reuse flag blanked too); the image it replaced is
    # removed by the cleanup round once no container uses it.
    meta2 = manager.snapshots.get(project, work_item)
    assert meta2 is not None and meta2.created_at > meta.created_at
    env2 = env_of(docker_client, meta2.image_name)
    assert env2["CASCADE_SNAPSHOT_REUSE"] == ""
    assert marker not in everything_recorded(docker_client, meta2.image_name)
    manager.run_snapshot_cleanup()
    assert image_exists(docker_client, meta2.image_name)
    if docker_client.api.inspect_image(meta2.image_name)["Parent"] == first_image_id:
        # Docker 25 and later: the second commit's parent is the first snapshot, which is
        # kept, untagged, until its child goes (20.10 re-records the commit without one).
        assert not docker_client.api.inspect_image(first_image_id)["RepoTags"]
        assert first_image_id in manager._parts.snapshot_manager.kept_parents()
        manager.snapshots.invalidate(project, work_item)
        assert manager._parts.snapshot_manager.remove_images([meta2]) == [meta2]
        assert not image_exists(docker_client, meta2.image_name)
    assert not image_exists(docker_client, first_image_id)
    assert sentry_events.with_source("snapshot_commit") == []
    assert instance_containers(docker_client, instance_id) == []


def test_failed_run_commits_nothing_and_is_removed(
    managers: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    snapshot_image_prefix: str,
    instance_id: str,
) -> None:
    manager = managers()
    worker, outcome = run(
        manager, job(f"{instance_id}-fails", command=["echo warm > /warm.txt; exit 1"])
    )
    assert outcome.status == "failed"
    assert outcome.exit_code == 1
    assert manager.snapshots.get("proj-1", "card-1") is None
    assert len(manager.snapshots) == 0
    assert not [t for t in image_names(docker_client) if t.startswith(snapshot_image_prefix)]
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(worker.container_id)


# --------------------------------------------------------------------------- fallbacks


def test_deleted_snapshot_image_falls_back_to_the_base_image(
    managers: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
    entry_image: str,
    sentry_events: CapturedEvents,
) -> None:
    manager = managers()
    _, outcome = run(manager, job(f"{instance_id}-warmup"))
    assert outcome.status == "succeeded"
    meta = manager.snapshots.get("proj-1", "card-1")
    assert meta is not None
    docker_client.images.remove(meta.image_name)

    worker = manager.spawn_worker(job(f"{instance_id}-cold", command=[COLD_THEN_WAIT]))
    assert worker.image == entry_image
    assert manager.snapshots.get("proj-1", "card-1") is None  # invalidated
    let_go(docker_client.containers.get(worker.container_id))
    outcome = manager.wait_for_worker(worker.job_id, timeout=WAIT_S)
    assert outcome.status == "succeeded", outcome  # exit 3 would mean it started warm

    fresh = manager.snapshots.get("proj-1", "card-1")
    assert fresh is not None and image_exists(docker_client, fresh.image_name)
    assert sentry_events.with_source("worker_spawn_fallback") == []
    assert sentry_events.with_source("worker_spawn") == []


def test_snapshot_and_base_both_missing_reports_and_leaks_nothing(
    managers: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    snapshot_image_prefix: str,
    instance_id: str,
    test_image: str,
    sentry_events: CapturedEvents,
) -> None:
    missing_base = f"dockyard-test-missing-{uuid.uuid4().hex[:10]}"
    manager = managers(worker_image=f"{missing_base}:latest", max_workers=1)
    stale = f"{snapshot_image_prefix}gone-{uuid.uuid4().hex[:8]}:latest"
    manager.snapshots.register("proj-1", "card-1", stale)
    failing = job(f"{instance_id}-doomed")

    with pytest.raises(WorkerSpawnError) as raised:
        manager.spawn_worker(failing, slot_timeout=5)

    (event,) = sentry_events.wait_for("worker_spawn_fallback")
    assert event["tags"]["source"] == "worker_spawn_fallback"
    assert event["tags"]["jobType"] == "trello"
    assert event["extra"]["jobId"] == failing.id
    assert event["extra"]["staleImage"] == stale
    assert event["exception"]["values"][-1]["value"] == str(raised.value)
    assert sentry_events.with_source("worker_image_pull_fallback")
    assert manager.snapshots.get("proj-1", "card-1") is None
    assert manager.get_active_worker_count() == 0
    assert instance_containers(docker_client, instance_id) == []

    # The slot came back: with the base image in place the single slot is free at once.
    docker_client.images.get(test_image).tag(missing_base, "latest")
    try:
        _, outcome = run(manager, job(f"{instance_id}-after", command=["true"]))
    finally:
        docker_client.images.remove(f"{missing_base}:latest")
    assert outcome.status == "succeeded"


def test_concurrent_spawns_needing_a_missing_base_image_pull_it_once(
    managers: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
    sentry_events: CapturedEvents,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pulls: list[str] = []
    real_pull = DockerGateway.pull

    def counting_pull(self: DockerGateway, image: str, timeout_s: float) -> None:
        pulls.append(image)
        real_pull(self, image, timeout_s)  # the real engine: no registry, fails at once

    monkeypatch.setattr(DockerGateway, "pull", counting_pull)
    missing = f"dockyard-test-missing-{uuid.uuid4().hex[:10]}:latest"
    # No retry: an engine without a network answers "network is unreachable", a transient
    # failure tried again; what is checked here is that the callers share one pull.
    manager = managers(worker_image=missing, max_workers=4, image_pull_retries=0)
    jobs = [job(f"{instance_id}-burst-{i}", work_item=f"card-{i}") for i in range(4)]
    start = threading.Barrier(len(jobs))

    def spawn(worker_job: WorkerJob) -> BaseException | None:
        start.wait()
        try:
            manager.spawn_worker(worker_job, slot_timeout=5)
        except Exception as err:
            return err
        return None

    with ThreadPoolExecutor(len(jobs)) as pool:
        errors = list(pool.map(spawn, jobs))

    assert pulls == [missing]
    assert all(isinstance(err, WorkerSpawnError) for err in errors), errors
    assert len({id(err) for err in errors}) == len(jobs)  # each caller raises its own copy
    events = sentry_events.wait_for("worker_image_pull_fallback", count=len(jobs))
    assert {e["extra"]["jobId"] for e in events} == {j.id for j in jobs}
    assert manager.get_active_worker_count() == 0
    assert instance_containers(docker_client, instance_id) == []


# --------------------------------------------------------------------------- project images


def test_verified_project_image_is_used_and_unverified_is_refused(
    managers: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
    test_image: str,
    sentry_events: CapturedEvents,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    digest = docker_client.images.get(test_image).id
    assert digest.startswith("sha256:")
    projects = StaticProjects(
        ProjectConfig(
            id="own-image",
            worker_image="registry.example.invalid/own:1",
            worker_image_status="verified",
            worker_image_digest=digest,
        ),
        ProjectConfig(
            id="unverified",
            worker_image="registry.example.invalid/own:2",
            worker_image_status="pending",
            worker_image_digest=digest,
        ),
        ProjectConfig(
            id="gone-image",
            worker_image="registry.example.invalid/own:3",
            worker_image_status="verified",
            worker_image_digest="sha256:" + "0" * 64,
        ),
    )
    # The global image is missing: only the project's own image can make a run succeed.
    missing = f"dockyard-test-missing-{uuid.uuid4().hex[:10]}:latest"
    manager = managers(worker_image=missing, projects=projects, snapshot_enabled=False)
    creates: list[str] = []
    real_create = DockerGateway.create

    def counting_create(self: DockerGateway, spec: Any) -> str:
        creates.append(spec.image)
        return real_create(self, spec)

    monkeypatch.setattr(DockerGateway, "create", counting_create)

    worker, outcome = run(manager, job(f"{instance_id}-own", project="own-image", command=["true"]))
    assert worker.image == digest
    assert outcome.status == "succeeded", outcome

    creates.clear()
    with pytest.raises(WorkerImageResolutionError):
        manager.spawn_worker(job(f"{instance_id}-unverified", project="unverified"))
    assert creates == []  # refused before any Docker call

    with pytest.raises(WorkerImageResolutionError):
        manager.spawn_worker(job(f"{instance_id}-gone", project="gone-image"))
    assert creates == ["sha256:" + "0" * 64]  # never the global image instead
    assert sentry_events.with_source("worker_image_pull_fallback")
    assert manager.get_active_worker_count() == 0
    assert instance_containers(docker_client, instance_id) == []


# --------------------------------------------------------------------------- cleanup and sync


def test_cleanup_removes_evicted_images_and_is_quiet_about_gone_or_busy_ones(
    managers: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    snapshot_image_prefix: str,
    instance_id: str,
    test_image: str,
    sentry_events: CapturedEvents,
) -> None:
    manager = managers(snapshot_max_count=1)
    run(manager, job(f"{instance_id}-w1", work_item="card-1"))
    run(manager, job(f"{instance_id}-w2", work_item="card-2"))
    old = manager.snapshots.get("proj-1", "card-1")
    new = manager.snapshots.get("proj-1", "card-2")
    assert old is not None and new is not None
    assert image_exists(docker_client, old.image_name)

    # Two more entries, both long expired: one whose image is gone (404), one whose
    # image a container still uses (409).
    long_ago = datetime.now(UTC) - timedelta(days=30)
    manager.snapshots.register(
        "proj-1", "gone", f"{snapshot_image_prefix}gone:latest", created_at=long_ago
    )
    busy = f"{snapshot_image_prefix}busy:latest"
    source = docker_client.containers.create(
        test_image, ["true"], labels={"cascade.router.instance": instance_id}
    )
    busy_id = source.commit(repository=busy.rpartition(":")[0], tag="latest").id
    source.remove(force=True)
    holder = docker_client.containers.create(
        busy, ["true"], labels={"cascade.router.instance": instance_id}
    )
    manager.snapshots.register("proj-1", "busy", busy, created_at=long_ago)

    manager.run_snapshot_cleanup()

    assert not image_exists(docker_client, old.image_name)  # evicted over the count
    assert image_exists(docker_client, new.image_name)
    assert manager.snapshots.get("proj-1", "card-2") == new
    assert len(manager.snapshots) == 1
    assert sentry_events.with_source("snapshot_image_remove") == []
    assert sentry_events.with_source("snapshot_cleanup_scan") == []
    assert image_exists(docker_client, busy)  # in use: kept for now, quietly

    holder.remove(force=True)
    manager.run_snapshot_cleanup()  # a later round removes it once nothing uses it
    assert not image_exists(docker_client, busy_id)
    assert sentry_events.with_source("snapshot_image_remove") == []


def test_a_new_manager_syncs_the_snapshots_a_previous_one_committed(
    managers: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
) -> None:
    first = managers()
    run(first, job(f"{instance_id}-a", work_item="card-a"))
    run(first, job(f"{instance_id}-b", work_item="card-b"))
    committed = {w: first.snapshots.get("proj-1", w) for w in ("card-a", "card-b")}
    first.close()

    second = managers()
    assert len(second.snapshots) == 0
    second.sync_snapshots_from_docker()
    assert len(second.snapshots) == 2
    for work_item, before in committed.items():
        assert before is not None
        synced = second.snapshots.get("proj-1", work_item)
        assert synced is not None
        info = docker_client.api.inspect_image(before.image_name)
        labels = info["Config"]["Labels"]
        assert labels["cascade.snapshot.project.id"] == "proj-1"  # what sync relies on
        assert labels["cascade.snapshot.work.item.id"] == work_item
        assert labels["cascade.snapshot.instance"] == instance_id
        assert synced.image_name == before.image_name
        assert synced.image_size_bytes == info["Size"]
        assert synced.created_at == datetime.fromtimestamp(_created_epoch(info["Created"]), UTC)

    # And the next run there starts warm.
    worker, outcome = run(second, job(f"{instance_id}-c", work_item="card-a", command=[CHECK_WARM]))
    assert worker.image == committed["card-a"].image_name  # type: ignore[union-attr]
    assert outcome.status == "succeeded", outcome


def _created_epoch(created: str) -> int:
    """Docker's RFC 3339 `Created` in whole seconds (as the image list reports it)."""
    head = created.split(".", maxsplit=1)[0].rstrip("Z")
    return int(datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp())


# --------------------------------------------------------------------------- unit: pulls


class FakePullGateway:
    """Stands in for `DockerGateway.pull` only."""

    def __init__(self, gate: Callable[[], None] | None = None, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.gate = gate
        self.fail = fail

    def pull(self, image: str, timeout_s: float) -> None:
        self.calls.append(image)
        if self.gate is not None:
            self.gate()
        if self.fail:
            raise docker.errors.APIError("pull failed: no such host")


@pytest.mark.parametrize("fail", [False, True])
def test_concurrent_pullers_join_the_pull_in_flight(fail: bool) -> None:
    callers = 4
    entered = threading.Semaphore(0)

    class CountingPuller(ImagePuller):
        def pull(self, image: str) -> None:
            entered.release()
            super().pull(image)

    def gate() -> None:
        # The leader's pull lasts until every caller is inside `pull()`.
        for _ in range(callers):
            assert entered.acquire(timeout=10)

    fake = FakePullGateway(gate, fail=fail)
    puller = CountingPuller(fake, timeout_s=5, failure_ttl_s=0)  # type: ignore[arg-type]

    def call(_: int) -> BaseException | None:
        try:
            puller.pull("img:1")
        except Exception as err:
            return err
        return None

    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(call, range(callers)))

    assert fake.calls == ["img:1"]
    if fail:
        assert all(isinstance(r, docker.errors.APIError) for r in results)
        assert len({id(r) for r in results}) == callers
    else:
        assert results == [None] * callers


def test_a_failed_pull_is_remembered_briefly_and_a_success_not_at() -> None:
    now = [100.0]
    fake = FakePullGateway(fail=True)
    puller = ImagePuller(fake, 5, failure_ttl_s=5, clock=lambda: now[0])  # type: ignore[arg-type]
    errors = []
    for _ in range(3):
        with pytest.raises(docker.errors.APIError) as raised:
            puller.pull("img:1")
        errors.append(raised.value)
    assert fake.calls == ["img:1"]
    # Each caller gets its own copy, so tracebacks do not pile up on one object.
    assert len({id(e) for e in errors}) == 3
    depth = [len(list(_tb_frames(e))) for e in errors[1:]]
    assert depth[0] == depth[1]

    now[0] += 5.01
    with pytest.raises(docker.errors.APIError):
        puller.pull("img:1")
    assert fake.calls == ["img:1", "img:1"]

    fake.fail = False
    now[0] += 10
    puller.pull("img:1")
    puller.pull("img:1")
    assert fake.calls == ["img:1"] * 4


def _tb_frames(err: BaseException) -> Iterator[Any]:
    tb = err.__traceback__
    while tb is not None:
        yield tb
        tb = tb.tb_next


def test_a_bare_image_id_is_not_pulled() -> None:
    fake = FakePullGateway()
    puller = ImagePuller(fake, 5)  # type: ignore[arg-type]
    with pytest.raises(UnpullableImageError):
        puller.pull("sha256:" + "a" * 64)
    assert fake.calls == []


# --------------------------------------------------------------------------- unit: scrubbing


class RecordingReporter(Reporter):
    def __init__(self) -> None:
        self.sources: list[str] = []

    def report(self, err: BaseException, source: str, **kwargs: Any) -> None:
        self.sources.append(source)


class FakeCommitGateway:
    """The calls SnapshotManager.commit makes, answering from canned image data."""

    def __init__(self, images: dict[str, dict[str, Any]]) -> None:
        self.images = images
        self.removed: list[str] = []
        self.committed: list[tuple[str, str, list[str]]] = []
        self.tagged: list[tuple[str, str, str]] = []

    def tag(self, image: str, repository: str, tag: str, *, force: bool = True) -> None:
        self.tagged.append((image, repository, tag))

    def inspect(self, container_id: str) -> dict[str, Any]:
        return {
            "Config": {
                "Env": [
                    "JOB_ID=j",
                    "API_TOKEN=t0ken",
                    "CASCADE_CREDENTIAL_KEYS=API_TOKEN",
                    "LOG_LEVEL=info",
                ]
            }
        }

    def commit(self, container_id: str, repository: str, tag: str, changes: list[str]) -> str:
        self.committed.append((repository, tag, list(changes)))
        return "sha256:committed"

    def image_inspect(self, image: str) -> dict[str, Any]:
        if image not in self.images:
            raise docker.errors.ImageNotFound(f"No such image: {image}")
        return self.images[image]

    def remove_image(self, image: str) -> None:
        self.removed.append(image)


def _snapshot_manager(fake: FakeCommitGateway, reporter: Reporter) -> SnapshotManager:
    registry = SnapshotRegistry(
        default_ttl_s=3600, max_count=5, max_size_bytes=10**12, project_ttl=lambda _p: None
    )
    config = RouterConfig(router_instance_id="unit", snapshot_image_prefix="unit-snap-")
    return SnapshotManager(
        fake,  # type: ignore[arg-type]
        registry,
        reporter,
        config,
        LabelSchema("cascade"),
        worker_env=lambda worker_id: fake.inspect(worker_id)["Config"]["Env"],
    )


def test_commit_without_a_kept_container_config_registers_the_commit_as_is() -> None:
    fake = FakeCommitGateway(
        {
            "sha256:committed": {
                "Id": "sha256:committed",
                "Size": 42,
                "Config": {
                    "Env": ["JOB_ID=", "API_TOKEN=", "CASCADE_CREDENTIAL_KEYS=", "LOG_LEVEL=info"]
                },
            }
        }
    )
    reporter = RecordingReporter()
    manager = _snapshot_manager(fake, reporter)
    meta = manager.commit(
        snapshot_worker(), ["JOB_ID", "API_TOKEN", "CASCADE_CREDENTIAL_KEYS", "LOG_LEVEL"]
    )
    assert meta is not None and meta.image_size_bytes == 42
    assert meta.image_name == snapshot_image_name("unit-snap-", "p", "w") + ":latest"
    ((repository, tag, changes),) = fake.committed
    assert (repository, tag) == ("", "")  # untagged until checked
    assert fake.tagged == [("sha256:committed", *meta.image_name.rsplit(":", 1))]
    env_changes = [change for change in changes if change.startswith("ENV ")]
    assert env_changes == ["ENV JOB_ID=", "ENV CASCADE_CREDENTIAL_KEYS=", "ENV API_TOKEN="]
    assert 'LABEL "cascade.managed"=""' in changes  # the image owns no worker
    assert reporter.sources == []
    assert fake.removed == []


def test_an_image_that_still_holds_a_value_is_removed_and_not_registered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    leaking = {"Config": {"Env": ["JOB_ID="]}, "ContainerConfig": {"Env": ["API_TOKEN=t0ken"]}}
    fake = FakeCommitGateway(
        {
            "sha256:committed": {"Id": "sha256:committed", **leaking},
            "sha256:rewritten": {"Id": "sha256:rewritten", **leaking},  # the rewrite did not help
        }
    )
    monkeypatch.setattr(
        "dockyard._snapshots.record_without_container_config",
        lambda docker, image_id, reference: "sha256:rewritten",
    )
    reporter = RecordingReporter()
    manager = _snapshot_manager(fake, reporter)
    assert manager.commit(snapshot_worker(), ["JOB_ID", "API_TOKEN"]) is None
    assert reporter.sources == ["snapshot_commit"]
    assert set(fake.removed) == {"sha256:committed", "sha256:rewritten"}
    assert fake.tagged == []  # the name never pointed at it
    assert len(manager.registry) == 0

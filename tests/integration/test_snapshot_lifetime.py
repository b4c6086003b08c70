"""Snapshots that last a work item's whole life, on the real engine (issue 18).

Each run of one work item starts from the previous run's snapshot and commits one more layer;
past `snapshot_max_layers` the snapshot is written flattened (one layer), so the chain never
reaches the storage driver's limit. The worker proves it started from the previous run's
filesystem: it reads a counter file, exits 3 unless it holds the count the test expects, and
writes the next count.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from dockyard import ContainerManager, WorkerJob
from support.engine import ManagerFactory, is_podman
from support.sentry import CapturedEvents

pytestmark = pytest.mark.docker

WAIT_S = 60.0
PROJECT, WORK_ITEM = "proj-life", "card-life"


def counting(run: int) -> list[str]:
    """The worker of run `run` (1-based): exit 3 unless /count says run - 1, then count on."""
    script = (
        "n=$(cat /count 2>/dev/null || echo 0); "
        f'if [ "$n" != "{run - 1}" ]; then echo "count $n, expected {run - 1}"; exit 3; fi; '
        f"echo {run} > /count"
    )
    return ["sh", "-c", script]


@pytest.fixture
def managers(
    instance_id: str,
    test_image: str,
    snapshot_image_prefix: str,
    docker_client: docker.DockerClient,
) -> Iterator[Callable[..., ContainerManager]]:
    """``make(**overrides)``: a snapshot-enabled manager on the test image; at teardown the
    managers are closed and every image of this instance's snapshots is removed, untagged
    ones included (the instance fixture removes only named ones)."""
    make = ManagerFactory(
        {
            "worker_image": test_image,
            "router_instance_id": instance_id,
            "snapshot_image_prefix": snapshot_image_prefix,
            "container_name_prefix": f"{instance_id}-",
            "snapshot_enabled": True,
            "stop_grace_s": 1,
            "worker_memory_mb": 64,
            "docker_network": "none",
        },
        ("reporter", "credentials"),
    )
    yield make
    make.close_all()
    for _ in range(3):  # children first: a parent goes once its children have
        for image in snapshot_images(docker_client, instance_id):
            with contextlib.suppress(docker.errors.APIError):
                docker_client.api.remove_image(image["Id"], force=True)


def snapshot_images(client: docker.DockerClient, instance_id: str) -> list[dict[str, Any]]:
    """Every image carrying this instance's snapshot label, untagged and parents included."""
    raw: Any = client.api
    found: list[dict[str, Any]] = raw.images(
        all=True, filters={"label": f"cascade.snapshot.instance={instance_id}"}
    )
    return found


def layers(client: docker.DockerClient, image: str) -> int:
    return len(client.api.inspect_image(image)["RootFS"]["Layers"])


def run_chain(
    manager: ContainerManager,
    instance_id: str,
    client: docker.DockerClient,
    runs: int,
    first: int = 1,
) -> list[int]:
    """Run the work item `runs` times, counting from run `first`; each must succeed. Returns
    the snapshot's layer count after each run."""
    counts = []
    started = time.monotonic()
    for run in range(first, first + runs):
        if run % 50 == 0:
            print(f"run {run}: {time.monotonic() - started:.0f}s", flush=True)
        job = WorkerJob(
            id=f"{instance_id}-run-{run}",
            type="trello",
            data={},
            project_id=PROJECT,
            work_item_id=WORK_ITEM,
            command=counting(run),
        )
        worker = manager.spawn_worker(job)
        outcome = manager.wait_for_worker(worker.job_id, timeout=WAIT_S)
        assert outcome.status == "succeeded", (run, outcome)
        meta = manager.snapshots.get(PROJECT, WORK_ITEM)
        assert meta is not None, run  # committed (a failed commit would leave none)
        if run > 1:
            assert worker.image == meta.image_name  # started warm, from the snapshot
        counts.append(layers(client, meta.image_name))
    return counts


def assert_one_image_left(
    manager: ContainerManager, client: docker.DockerClient, instance_id: str
) -> None:
    """After a cleanup round: the work item's named snapshot and its live chain, nothing
    else (no untagged image of a retired chain).

    The live chain is the named snapshot's own parents: on Docker 25 and later a commit's
    `Parent` is the snapshot its container ran, kept untagged until its child goes; on
    20.10 a snapshot has no parent and the chain is the named snapshot alone.
    """
    manager.run_snapshot_cleanup()
    meta = manager.snapshots.get(PROJECT, WORK_ITEM)
    assert meta is not None
    named = client.api.inspect_image(meta.image_name)["Id"]
    chain = live_chain(client, named)
    left = {image["Id"]: image for image in snapshot_images(client, instance_id)}
    assert set(left) == set(chain), (chain, left)
    kept = manager._parts.snapshot_manager.kept_parents()
    for parent in chain[1:]:  # untagged, kept only for its child
        assert not [t for t in left[parent].get("RepoTags") or [] if t != "<none>:<none>"]
        assert parent in kept


def live_chain(client: docker.DockerClient, image: str) -> list[str]:
    """`image` and its parents that are this test's snapshots, child first."""
    chain = [image]
    while True:
        info = client.api.inspect_image(chain[-1])
        parent = info.get("Parent") or ""
        if not parent:
            return chain
        labels = client.api.inspect_image(parent)["Config"].get("Labels") or {}
        if "cascade.snapshot.instance" not in labels:
            return chain  # the base image: not a snapshot
        chain.append(parent)


def flattens(counts: list[int]) -> list[int]:
    """The runs (1-based) whose snapshot was written flattened (one layer)."""
    return [run for run, count in enumerate(counts, 1) if count == 1]


@pytest.mark.parametrize("max_layers", [10])
def test_200_runs_each_start_from_the_previous_runs_filesystem(
    managers: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
    test_image: str,
    sentry_events: CapturedEvents,
    max_layers: int,
) -> None:
    manager = managers(snapshot_max_layers=max_layers)
    base = layers(docker_client, test_image)
    started = time.monotonic()
    counts = run_chain(manager, instance_id, docker_client, 200)
    elapsed = time.monotonic() - started

    assert max(counts) <= max_layers
    # The first run commits base + 1 layers; each run adds one; past the limit: one layer.
    period = max_layers  # a flattened snapshot (1) grows to max_layers, then flattens again
    first = max_layers - base + 1
    assert flattens(counts) == list(range(first, 201, period)), counts
    assert sentry_events.with_source("snapshot_commit") == []
    assert sentry_events.with_source("snapshot_image_remove") == []
    assert_one_image_left(manager, docker_client, instance_id)
    print(f"200 runs, flattened at {flattens(counts)}, {elapsed:.1f}s")


def test_the_default_limit_is_crossed_without_losing_a_run(
    managers: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
    test_image: str,
    sentry_events: CapturedEvents,
) -> None:
    manager = managers()
    limit = manager.config.snapshot_max_layers
    assert limit == 100
    first = limit - layers(docker_client, test_image) + 1
    counts = run_chain(manager, instance_id, docker_client, first + 2)

    assert max(counts) <= limit
    assert counts[first - 2] == limit  # the last run before the flatten: at the limit
    assert counts[first - 1 :] == [1, 2, 3]  # flattened, then growing from one again
    assert sentry_events.with_source("snapshot_commit") == []
    assert_one_image_left(manager, docker_client, instance_id)


class Credentials:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get_project_credentials(self, project_id: str) -> dict[str, str]:
        return dict(self.values)


def test_a_flattened_snapshot_carries_no_secret_and_owns_nothing(
    managers: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
    test_image: str,
    sentry_events: CapturedEvents,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = uuid.uuid4().hex[:10]
    secrets = {
        "DATABASE_URL": f"postgres://app:dbpw-{marker}@db:5432/app",
        "CLAUDE_CODE_OAUTH_TOKEN": f"oauth-{marker}",
        "SENTRY_DSN": f"https://dsn{marker}@sentry.example.invalid/7",
        "CREDENTIAL_MASTER_KEY": f"master-{marker}",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    credentials = {"API_TOKEN": f"tok-{marker}"}
    # The test image has 2 layers: the first commit (3) is already past the limit.
    manager = managers(
        snapshot_max_layers=2,
        credentials=Credentials(credentials),
        redis_url=f"redis://:redispw-{marker}@redis:6379/0",
    )
    assert layers(docker_client, test_image) == 2
    job = WorkerJob(
        id=f"{instance_id}-flat",
        type="trello",
        data={"payload": f"payload-{marker}"},
        project_id=PROJECT,
        work_item_id=WORK_ITEM,
        command=["sh", "-c", "echo kept > /kept"],
    )
    worker = manager.spawn_worker(job)
    outcome = manager.wait_for_worker(worker.job_id, timeout=WAIT_S)
    assert outcome.status == "succeeded", outcome
    meta = manager.snapshots.get(PROJECT, WORK_ITEM)
    assert meta is not None
    info = docker_client.api.inspect_image(meta.image_name)
    assert len(info["RootFS"]["Layers"]) == 1 and not info["Parent"]  # flattened

    env = dict(item.partition("=")[::2] for item in info["Config"]["Env"])
    for key in ("DATABASE_URL", "CLAUDE_CODE_OAUTH_TOKEN", "SENTRY_DSN", "API_TOKEN", "JOB_DATA"):
        assert env[key] == "", key
    assert "CREDENTIAL_MASTER_KEY" not in env
    assert env["LOG_LEVEL"] == "info" and env["PATH"]
    labels = info["Config"]["Labels"]
    for key in ("managed", "router.instance", "job.id", "deadline", "project.id"):
        assert labels[f"cascade.{key}"] == "", key
    assert labels["cascade.snapshot.instance"] == instance_id
    assert labels["cascade.snapshot.work.item.id"] == WORK_ITEM
    recorded = json.dumps(info) + json.dumps(docker_client.api.history(meta.image_name))
    assert marker not in recorded
    assert sentry_events.with_source("snapshot_commit") == []

    # The next run starts from it: the file is there, and the image's command is the base's.
    check = WorkerJob(
        id=f"{instance_id}-after",
        type="trello",
        data={},
        project_id=PROJECT,
        work_item_id=WORK_ITEM,
        command=["sh", "-c", 'test "$(cat /kept)" = kept'],
    )
    worker = manager.spawn_worker(check)
    assert worker.image == meta.image_name
    outcome = manager.wait_for_worker(worker.job_id, timeout=WAIT_S)
    assert outcome.status == "succeeded", outcome


def test_a_chain_of_parents_goes_with_its_last_child(
    managers: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
    sentry_events: CapturedEvents,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As on Docker 25 and later: a commit is named as it is (no container config to
    # re-record it without), its parent the previous snapshot. Here (20.10) that means
    # skipping the check that triggers the re-recording; no secret is set in this test.
    monkeypatch.setattr("dockyard._snapshots.env_values_left", lambda info, keys: [])
    monkeypatch.setattr("dockyard._snapshots.worker_labels_left", lambda labels, info: [])
    manager = managers(snapshot_max_layers=6)
    snapshots = manager._parts.snapshot_manager
    if is_podman(docker_client):
        # Podman removes an image that is another's parent (no "dependent child images"
        # refusal): nothing is kept for a child, each retired snapshot goes at a cleanup.
        counts = run_chain(manager, instance_id, docker_client, 12)
        assert counts == [3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 1, 2]
        manager.run_snapshot_cleanup()
        assert snapshots.kept_parents() == set()
        meta = manager.snapshots.get(PROJECT, WORK_ITEM)
        assert meta is not None
        head = docker_client.api.inspect_image(meta.image_name)
        assert {image["Id"] for image in snapshot_images(docker_client, instance_id)} == {
            head["Id"]
        }
        manager.snapshots.invalidate(PROJECT, WORK_ITEM)
        assert snapshots.remove_images([meta]) == [meta]
        assert snapshot_images(docker_client, instance_id) == []
        assert sentry_events.with_source("snapshot_image_remove") == []
        return
    counts = run_chain(manager, instance_id, docker_client, 3)
    assert counts == [3, 4, 5]
    meta = manager.snapshots.get(PROJECT, WORK_ITEM)
    assert meta is not None
    parent = docker_client.api.inspect_image(meta.image_name)["Parent"]
    assert parent in snapshots.kept_parents()  # refused as a parent: kept for its child
    removals = len(snapshots.kept_parents())
    for _ in range(3):
        manager.run_snapshot_cleanup()  # no retry, no report, no giving up
    assert len(snapshots.kept_parents()) == removals
    assert docker_client.api.inspect_image(parent)["Id"] == parent

    counts += run_chain(manager, instance_id, docker_client, 9, first=4)
    assert counts == [3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 1, 2]
    manager.run_snapshot_cleanup()
    meta = manager.snapshots.get(PROJECT, WORK_ITEM)
    assert meta is not None
    head = docker_client.api.inspect_image(meta.image_name)
    # What is left is the live chain: the named snapshot and the flattened image under it.
    left = {image["Id"] for image in snapshot_images(docker_client, instance_id)}
    assert left == {head["Id"], head["Parent"]}
    flat = docker_client.api.inspect_image(head["Parent"])
    assert not flat["Parent"] and len(flat["RootFS"]["Layers"]) == 1

    # Evicting the chain's head takes its untagged parents with it.
    manager.snapshots.invalidate(PROJECT, WORK_ITEM)
    assert snapshots.remove_images([meta]) == [meta]
    assert snapshot_images(docker_client, instance_id) == []
    assert snapshots.kept_parents() == set()
    assert sentry_events.with_source("snapshot_image_remove") == []
    assert sentry_events.with_source("snapshot_commit") == []

"""Snapshot images own nothing, and each router touches only its own snapshots (real engine).

A committed image carries no worker label (Docker copies image labels into every container
made from it), so a container an operator starts from it by hand is neither reaped nor
adopted. Sync, cleanup and the CLI's `snapshots` touch this instance's snapshot images and
unlabelled legacy ones, never another router's.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime

import docker
import docker.errors

from dockyard import ContainerManager, WorkerJob
from support.cli import cli_env, dockyard_cli
from support.engine import tag_image

WAIT_S = 60.0
OWNERSHIP = (
    "cascade.managed",
    "cascade.router.instance",
    "cascade.job.id",
    "cascade.job.type",
    "cascade.deadline",
    "cascade.project.id",
    "cascade.work.item.id",
    "cascade.agent.type",
    "cascade.snapshot.enabled",
    "cascade.base.image",
)

MakeManager = Callable[..., ContainerManager]


def snapshot_of(manager: ContainerManager, job_id: str, work_item: str) -> str:
    """Run one clean job of (p-1, work_item) and return its snapshot image name."""
    manager.spawn_worker(
        WorkerJob(job_id, "trello", {"projectId": "p-1", "workItemId": work_item}, command=["true"])
    )
    assert manager.wait_for_worker(job_id, WAIT_S).status == "succeeded"
    meta = manager.snapshots.get("p-1", work_item)
    assert meta is not None
    return meta.image_name


def image_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def test_committed_image_carries_snapshot_labels_and_no_worker_label(
    make_manager: MakeManager,
    docker_client: docker.DockerClient,
    instance_id: str,
    test_image: str,
) -> None:
    manager = make_manager(snapshot_enabled=True)
    before = datetime.now(UTC)
    image = snapshot_of(manager, "own-1", "card-1")
    info = docker_client.api.inspect_image(image)
    labels = info["Config"]["Labels"]
    for key in OWNERSHIP:
        assert not labels.get(key), (key, labels.get(key))
    # Engines that keep the legacy container config must not keep the labels there either.
    legacy = (info.get("ContainerConfig") or {}).get("Labels") or {}
    assert not any(legacy.get(key) for key in OWNERSHIP), legacy
    assert labels["cascade.snapshot.instance"] == instance_id
    assert labels["cascade.snapshot.project.id"] == "p-1"
    assert labels["cascade.snapshot.work.item.id"] == "card-1"
    assert labels["cascade.snapshot.base.image"] == test_image
    created = datetime.fromisoformat(labels["cascade.snapshot.created"])
    assert before <= created <= datetime.now(UTC)


def test_a_container_run_by_hand_from_a_snapshot_is_neither_reaped_nor_adopted(
    make_manager: MakeManager, docker_client: docker.DockerClient
) -> None:
    producer = make_manager(snapshot_enabled=True, worker_timeout_s=2)
    worker = producer.spawn_worker(
        WorkerJob(
            "hand-1", "trello", {"projectId": "p-1", "workItemId": "card-h"}, command=["true"]
        )
    )
    assert producer.wait_for_worker("hand-1", WAIT_S).status == "succeeded"
    meta = producer.snapshots.get("p-1", "card-h")
    assert meta is not None
    image = meta.image_name
    producer.close()
    # The producing worker's deadline passes: an inherited deadline label would be overdue.
    while datetime.now(UTC) <= worker.deadline:
        time.sleep(0.1)
    debug = docker_client.containers.run(image, ["sleep", "60"], detach=True)
    try:
        labels = docker_client.api.inspect_container(debug.id)["Config"]["Labels"] or {}
        assert not any(labels.get(key) for key in OWNERSHIP), labels

        restarted = make_manager(snapshot_enabled=True, worker_timeout_s=2)
        assert restarted.adopt_workers() == []
        assert restarted.get_active_worker_count() == 0
        assert debug.id not in restarted.scan_and_cleanup_orphans()
        debug.reload()
        assert debug.status == "running"
    finally:
        debug.remove(force=True)


def test_router_b_leaves_router_a_snapshots_alone(
    make_manager: MakeManager,
    docker_client: docker.DockerClient,
    other_instance: str,
    snapshot_image_prefix: str,
    test_image: str,
) -> None:
    router_a = make_manager(snapshot_enabled=True)
    image = snapshot_of(router_a, "a-1", "card-a")

    router_b = make_manager(
        snapshot_enabled=True, snapshot_max_count=0, router_instance_id=other_instance
    )
    router_b.sync_snapshots_from_docker()
    assert len(router_b.snapshots) == 0
    router_b.run_snapshot_cleanup()
    assert image_exists(docker_client, image)

    # The CLI under B's instance id neither lists nor evicts it; under A's it does both.
    scope = ["--snapshot-prefix", snapshot_image_prefix]
    listed_b = cli("snapshots", *scope, "--instance", other_instance)
    assert image not in listed_b.stdout
    evict_b = cli("snapshots", "--evict", *scope, "--instance", other_instance, max_count="0")
    assert evict_b.returncode == 0, evict_b.stderr
    assert image_exists(docker_client, image)

    listed_a = cli("snapshots", *scope, "--instance", router_a.config.router_instance_id)
    assert image in listed_a.stdout
    # A itself still starts warm from it.
    router_a.spawn_worker(
        WorkerJob("a-2", "trello", {"projectId": "p-1", "workItemId": "card-a"}, command=["true"])
    )
    assert router_a.wait_for_worker("a-2", WAIT_S).status == "succeeded"
    assert router_a.snapshots.get("p-1", "card-a") is not None


def test_legacy_snapshots_are_evicted_and_another_routers_old_images_kept(
    make_manager: MakeManager,
    docker_client: docker.DockerClient,
    snapshot_image_prefix: str,
    test_image: str,
    instance_id: str,
) -> None:
    # A legacy image: the name prefix, no dockyard label at all.
    legacy = f"{snapshot_image_prefix}legacy-p-card:latest"
    tag_image(docker_client, test_image, legacy)
    # An old-scheme snapshot of another router: it still carries that router's labels.
    foreign = f"{snapshot_image_prefix}foreign-p-card:latest"
    holder = docker_client.api.create_container(
        test_image,
        ["true"],
        labels={"cascade.managed": "true", "cascade.router.instance": "someone-else"},
    )
    try:
        repository, tag = foreign.rsplit(":", 1)
        docker_client.api.commit(holder["Id"], repository=repository, tag=tag)
    finally:
        docker_client.api.remove_container(holder["Id"], force=True)

    manager = make_manager(snapshot_enabled=True)
    own = snapshot_of(manager, "legacy-1", "card-own")
    listed = cli("snapshots", "--snapshot-prefix", snapshot_image_prefix, "--instance", instance_id)
    assert legacy in listed.stdout and "evict (legacy)" in listed.stdout
    assert foreign not in listed.stdout

    fresh = make_manager(snapshot_enabled=True)
    fresh.sync_snapshots_from_docker()
    assert not image_exists(docker_client, legacy)  # evicted by the sync's cleanup
    assert image_exists(docker_client, foreign)  # another router's: never touched
    assert image_exists(docker_client, own)
    assert [m.image_name for m in fresh.snapshots.entries()] == [own]


def cli(*args: str, max_count: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = {} if max_count is None else {"SNAPSHOT_MAX_COUNT": max_count}
    return dockyard_cli(*args, env=cli_env(**extra), timeout=120)

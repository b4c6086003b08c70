"""Forking hosts on a real engine: a manager created before `os.fork()` refuses at once in
the child (a raw fork, a `multiprocessing` fork-context pool, a real RQ work horse with a
real redis-server), never hangs, and leaves the parent's containers and manager alone; a
manager created in the child runs a real container to completion.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

import dockyard
from dockyard import ContainerManager, ForkedManagerError, WorkerJob
from forking import in_forked_child
from rq_host import QUEUE
from support.hold import let_go

TESTS = Path(__file__).resolve().parents[1]
HOLD = ["sh", "-c", "while [ ! -e /go ]; do sleep 0.05; done"]
REFUSED_WITHIN_S = 1.0

# What a pool worker runs: the manager a fork-context pool inherits from this process.
_POOL_MANAGER: ContainerManager | None = None


def _spawn_from_pool(job_id: str) -> str:
    assert _POOL_MANAGER is not None
    _POOL_MANAGER.spawn_worker(WorkerJob(job_id, "pool", {}, command=["true"]))
    return "spawned"


def release(client: docker.DockerClient, container_id: str) -> None:
    let_go(client.containers.get(container_id))


def test_a_forked_child_gets_the_error_at_once_and_the_parent_keeps_its_worker(
    make_manager: Callable[..., ContainerManager], docker_client: docker.DockerClient
) -> None:
    manager = make_manager()
    held = manager.spawn_worker(WorkerJob("held", "fork", {}, command=HOLD))

    def child() -> dict[str, Any]:
        refused: dict[str, Any] = {}
        started = time.monotonic()
        try:
            manager.spawn_worker(WorkerJob("from-child", "fork", {}, command=["true"]))
        except ForkedManagerError as err:
            refused = {"seconds": time.monotonic() - started, "message": str(err)}
        # The child may not stop the parent's worker either, and closing is quiet.
        try:
            manager.kill_worker("held")
        except ForkedManagerError:
            refused["kill_refused"] = True
        manager.close()
        return refused

    got = in_forked_child(child, timeout=10)
    assert got["seconds"] < REFUSED_WITHIN_S
    assert "Create the ContainerManager in the child, after the fork" in got["message"]
    assert got["kill_refused"] is True

    # Nothing of the child's reached the engine; the parent's worker runs on and ends.
    assert docker_client.containers.get(held.container_id).status == "running"
    assert [w.job_id for w in manager.get_active_workers()] == ["held"]
    labels = [f"cascade.router.instance={manager.config.router_instance_id}"]
    on_engine = docker_client.containers.list(all=True, filters={"label": labels})
    assert [c.id for c in on_engine] == [held.container_id]
    release(docker_client, held.container_id)
    assert manager.wait_for_worker("held", timeout=30).status == "succeeded"
    manager.spawn_worker(WorkerJob("after", "fork", {}, command=["sh", "-c", "exit 3"]))
    assert manager.wait_for_worker("after", timeout=30).exit_code == 3


def test_a_manager_created_in_the_forked_child_runs_a_container(
    make_manager: Callable[..., ContainerManager],
) -> None:
    parent = make_manager()
    parent.spawn_worker(WorkerJob("warm", "fork", {}, command=["true"]))
    assert parent.wait_for_worker("warm", timeout=30).status == "succeeded"

    def child() -> list[Any]:
        with ContainerManager(parent.config) as own:
            own.spawn_worker(WorkerJob("made-in-child", "fork", {}, command=["sh", "-c", "exit 4"]))
            outcome = own.wait_for_worker("made-in-child", timeout=30)
            return [outcome.status, outcome.exit_code]

    assert in_forked_child(child, timeout=60) == ["failed", 4]


def test_a_multiprocessing_fork_pool_worker_gets_the_error(
    make_manager: Callable[..., ContainerManager],
) -> None:
    global _POOL_MANAGER  # noqa: PLW0603 - inherited by the pool's forked workers
    _POOL_MANAGER = make_manager()
    _POOL_MANAGER.spawn_worker(WorkerJob("warm", "pool", {}, command=["true"]))
    assert _POOL_MANAGER.wait_for_worker("warm", timeout=30).status == "succeeded"
    context = multiprocessing.get_context("fork")
    try:
        with context.Pool(1) as pool:
            assert pool.apply(os.getpid) != os.getpid()  # the worker is up
            started = time.monotonic()
            pending = pool.apply_async(_spawn_from_pool, ("from-pool",))
            with pytest.raises(ForkedManagerError) as info:
                pending.get(timeout=10)  # a hang would be a TimeoutError here
            assert time.monotonic() - started < REFUSED_WITHIN_S
        assert info.value.owner_pid == os.getpid()
        assert info.value.pid != os.getpid()
        # The parent's manager is unaffected by its pool.
        _POOL_MANAGER.spawn_worker(WorkerJob("after", "pool", {}, command=["true"]))
        assert _POOL_MANAGER.wait_for_worker("after", timeout=30).status == "succeeded"
    finally:
        _POOL_MANAGER = None


@pytest.mark.redis
def test_a_real_rq_work_horse_gets_the_error_and_its_own_manager_works(
    redis_url: str,
    instance_id: str,
    test_image: str,
    tmp_path: Path,
) -> None:
    client = redis.Redis.from_url(redis_url)
    queue = Queue(QUEUE, connection=client)
    refused = queue.enqueue(
        "rq_host.spawn_with_preforked_manager", f"{instance_id}-rq-refused", job_timeout=30
    )
    own = queue.enqueue(
        "rq_host.spawn_with_own_manager",
        f"{instance_id}-rq-own",
        test_image,
        instance_id,
        job_timeout=60,
    )
    package_root = Path(dockyard.__file__).resolve().parents[1]  # lib/, or site-packages
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_root), str(TESTS)])}
    code = f"import rq_host; rq_host.main({redis_url!r}, {test_image!r}, {instance_id!r})"
    log = tmp_path / "rq-worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            assert worker.wait(timeout=120) == 0, log.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    output = log.read_text()
    try:
        refused_job = Job.fetch(refused.id, connection=client)
        assert refused_job.get_status() == JobStatus.FAILED, output
        result = refused_job.latest_result()
        assert result is not None
        assert "ForkedManagerError" in (result.exc_string or "")
        assert "Create the ContainerManager in the child, after the fork" in (
            result.exc_string or ""
        )
        assert refused_job.meta["spawn_seconds"] < REFUSED_WITHIN_S

        own_job = Job.fetch(own.id, connection=client)
        assert own_job.get_status() == JobStatus.FINISHED, output
        assert own_job.return_value() == "succeeded"
        # The worker process's own manager worked before and after its horses were forked.
        assert "warm-up job succeeded" in output
        assert "after the burst: succeeded" in output
    finally:
        client.close()

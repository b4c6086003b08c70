"""An RQ worker process as a router runs one, for tests/integration/test_forked_hosts.py.

`main(redis_url, image, instance)` creates a `ContainerManager` in the worker process (and
runs one real container with it, so its pools, threads and connections are live), then runs
a real `rq.Worker` in burst mode: each job runs in a work horse that RQ forks from this
process. `spawn_with_preforked_manager` uses the manager created before that fork;
`spawn_with_own_manager` creates one in the work horse. Run as
``python -c "import rq_host; rq_host.main(URL, IMAGE, INSTANCE)"`` with ``lib`` and
``tests`` on the path.
"""

from __future__ import annotations

import sys
import time

import redis
from rq import Queue, Worker, get_current_job

from dockyard import ContainerManager, RouterConfig, WorkerJob

QUEUE = "dockyard-forked-hosts"

MANAGER: ContainerManager | None = None


def config(image: str, instance: str) -> RouterConfig:
    return RouterConfig(
        worker_image=image,
        router_instance_id=instance,
        worker_memory_mb=64,
        stop_grace_s=1,
        slot_wait_timeout_s=30,
    )


def spawn_with_preforked_manager(job_id: str) -> str:
    """Spawn with the worker process's manager; records how long the call took."""
    assert MANAGER is not None
    job = get_current_job()
    assert job is not None
    started = time.monotonic()
    try:
        MANAGER.spawn_worker(WorkerJob(job_id, "rq", {}, command=["true"]))
    finally:
        job.meta["spawn_seconds"] = time.monotonic() - started
        job.save_meta()
        MANAGER.close()  # in the work horse: a no-op that must not hang
    return "spawned"  # never reached: the call above raises


def spawn_with_own_manager(job_id: str, image: str, instance: str) -> str:
    """Create a manager in the work horse and run a container to completion with it."""
    with ContainerManager(config(image, instance)) as own:
        own.spawn_worker(WorkerJob(job_id, "rq", {}, command=["sh", "-c", "exit 0"]))
        return own.wait_for_worker(job_id, timeout=60).status


def main(redis_url: str, image: str, instance: str) -> None:
    global MANAGER  # noqa: PLW0603 - the worker process's one manager, as a router keeps it
    MANAGER = ContainerManager(config(image, instance))
    try:
        MANAGER.spawn_worker(WorkerJob(f"{instance}-warm", "rq", {}, command=["true"]))
        status = MANAGER.wait_for_worker(f"{instance}-warm", timeout=60).status
        print(f"warm-up job {status}", flush=True)
        connection = redis.Redis.from_url(redis_url)
        worker = Worker([Queue(QUEUE, connection=connection)], connection=connection)
        worker.work(burst=True)
        # The parent's manager still works after its work horses were refused.
        MANAGER.spawn_worker(WorkerJob(f"{instance}-after", "rq", {}, command=["true"]))
        status = MANAGER.wait_for_worker(f"{instance}-after", timeout=60).status
        print(f"after the burst: {status}", flush=True)
    finally:
        MANAGER.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])

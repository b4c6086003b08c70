"""Where a dockyard job's time goes: Docker calls per job, and the router's own CPU.

Runs short jobs (`true`) through a `ContainerManager` and the same containers through
docker-py directly, then prints, per job: each Docker call's count and mean latency, and
the router process's CPU time (on a 2-core machine, CPU the router burns is CPU the
engine does not get). Not collected by pytest; run it from the repository root:

    PYTHONPATH=lib:tests python -m benchmarks.profile_hot_paths [jobs] [concurrency]

For a sampled profile of every thread (only on-CPU samples), wrap it in py-spy:

    PYTHONPATH=lib:tests py-spy record -o spawn.svg -- python -m benchmarks.profile_hot_paths
"""

from __future__ import annotations

import logging
import resource
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import docker

from dockyard import ContainerManager, WorkerJob
from images import TEST_IMAGE, ensure_test_images

from .harness import (
    SHORT_CALLS,
    CallTimer,
    RawDocker,
    bench_config,
    dockyard_spec,
    job_id,
    machine_facts,
    raw_name,
)

# Every gateway call a job can make: its exit waits (`open_exit_wait` goes through
# `open_wait`, so counting that one counts both) and the short calls.
GATEWAY_CALLS = ("open_wait", *SHORT_CALLS)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_dockyard(image: str, instance: str, jobs: int, concurrency: int, auto_remove: bool) -> None:
    config = bench_config(image, instance, max_workers=concurrency, auto_remove_workers=auto_remove)
    with ContainerManager(config) as manager:

        def one(_: int) -> str:
            worker = manager.spawn_worker(
                WorkerJob(id=job_id("prof"), type="bench", command=["true"])
            )
            return manager.wait_for_worker(worker.job_id, timeout=300).status

        one(0)
        calls = CallTimer(manager, GATEWAY_CALLS)
        cpu, wall = cpu_seconds(), time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            statuses = list(pool.map(one, range(jobs)))
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        calls.close()
    print(
        f"\ndockyard (auto_remove_workers={auto_remove}): {statuses.count('succeeded')}/{jobs} ok"
    )
    print(f"  {jobs / wall:.2f} jobs/s, router CPU {cpu / jobs * 1000:.1f} ms/job")
    for name, samples in calls.samples.items():
        if samples:
            mean = sum(samples) / len(samples) * 1000
            print(f"  {name:<15} {len(samples) / jobs:5.2f}/job  mean {mean:7.1f} ms")


def run_raw(
    client: docker.DockerClient, image: str, instance: str, jobs: int, concurrency: int
) -> None:
    spec = dockyard_spec(client, bench_config(image, instance), ["true"])
    raw = RawDocker(client.api, spec, auto_remove=False)
    raw.run(raw_name("prof"))
    cpu, wall = cpu_seconds(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        codes = list(pool.map(lambda _: raw.run(raw_name("prof")), range(jobs)))
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    print(f"\nraw docker-py create/start/wait/remove: {codes.count(0)}/{jobs} ok")
    print(f"  {jobs / wall:.2f} jobs/s, router CPU {cpu / jobs * 1000:.1f} ms/job")


def main() -> int:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    # INFO on, as a router runs it (and as the benchmarks do): the log tail is then read.
    logging.getLogger("dockyard").setLevel(logging.INFO)
    client = docker.from_env(timeout=60, max_pool_size=32)
    ensure_test_images(client)
    instance = f"dockyard-prof-{uuid.uuid4().hex[:8]}"
    print(", ".join(f"{k}={v}" for k, v in machine_facts(client).items()))
    try:
        run_raw(client, TEST_IMAGE, instance, jobs, concurrency)
        run_dockyard(TEST_IMAGE, instance, jobs, concurrency, auto_remove=True)
        run_dockyard(TEST_IMAGE, instance, jobs, concurrency, auto_remove=False)
    finally:
        for container in client.containers.list(
            all=True, filters={"label": f"cascade.router.instance={instance}"}
        ):
            container.remove(force=True)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

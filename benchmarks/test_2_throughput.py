"""Throughput: short jobs (`true`) from spawn to outcome at concurrency 8.

Baselines, same image and run: docker-py's low-level API in a `ThreadPoolExecutor(8)`
doing create → start → wait → remove, and a sequential `docker run --rm` loop (the
shell's way, scaled to jobs per second). One round each: 200 jobs is already a long run.
"""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dockyard import ContainerManager, WorkerJob

from .harness import (
    LABEL_PREFIX,
    NETWORK,
    RawDocker,
    baseline,
    bench_config,
    dockyard_spec,
    job_id,
    raw_name,
    record,
)

JOBS = int(os.environ.get("DOCKYARD_BENCH_JOBS", "200"))
DOCKER_RUN_JOBS = max(1, JOBS // 8)
CONCURRENCY = 8
TRUE = ["true"]


def _raw_jobs_per_s(docker_client, test_image, instance_id) -> float:
    spec = dockyard_spec(docker_client, bench_config(test_image, instance_id), TRUE)
    raw = RawDocker(docker_client.api, spec, auto_remove=False)
    raw.run(raw_name("warm"))
    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        codes = list(pool.map(lambda _: raw.run(raw_name("tp")), range(JOBS)))
    elapsed = time.perf_counter() - start
    assert codes == [0] * JOBS
    return JOBS / elapsed


def _docker_run_jobs_per_s(test_image, instance_id) -> float:
    command = [
        "docker", "run", "--rm", "--memory", "64m", "--memory-swap", "64m", "--network", NETWORK,
        "--label", f"{LABEL_PREFIX}.router.instance={instance_id}", test_image, *TRUE,
    ]  # fmt: skip
    start = time.perf_counter()
    for _ in range(DOCKER_RUN_JOBS):
        subprocess.run(command, check=True, capture_output=True)
    return DOCKER_RUN_JOBS / (time.perf_counter() - start)


@pytest.mark.benchmark(group="throughput")
def test_throughput_raw_threadpool(benchmark, docker_client, test_image, instance_id):
    """Baseline: create/start/wait/remove through docker-py in ThreadPoolExecutor(8)."""
    rates: list[float] = []
    benchmark.pedantic(
        lambda: rates.append(_raw_jobs_per_s(docker_client, test_image, instance_id)), rounds=1
    )
    baseline("throughput_raw_jobs_per_s", lambda: rates[-1])
    benchmark.extra_info["jobs"] = JOBS
    benchmark.extra_info["jobs_per_s"] = round(rates[-1], 3)


@pytest.mark.benchmark(group="throughput")
def test_throughput_docker_run_loop(benchmark, test_image, instance_id):
    """Baseline: a sequential `docker run --rm` loop (fewer jobs, scaled to jobs/s)."""
    rates: list[float] = []
    benchmark.pedantic(
        lambda: rates.append(_docker_run_jobs_per_s(test_image, instance_id)), rounds=1
    )
    baseline("throughput_docker_run_jobs_per_s", lambda: rates[-1])
    benchmark.extra_info["jobs"] = DOCKER_RUN_JOBS
    benchmark.extra_info["jobs_per_s"] = round(rates[-1], 3)


@pytest.mark.benchmark(group="throughput")
@pytest.mark.parametrize("auto_remove", [True, False], ids=["auto-remove", "dockyard-removes"])
def test_throughput_dockyard(benchmark, docker_client, test_image, instance_id, auto_remove):
    """spawn_worker → wait_for_worker from 8 threads, max_workers=8."""
    config = bench_config(
        test_image, instance_id, max_workers=CONCURRENCY, auto_remove_workers=auto_remove
    )
    with ContainerManager(config) as manager:

        def one(_: int):
            worker = manager.spawn_worker(WorkerJob(id=job_id("tp"), type="bench", command=TRUE))
            return manager.wait_for_worker(worker.job_id, timeout=300)

        assert one(0).succeeded  # warm-up: connections, threads
        outcomes = []

        def run_all():
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                outcomes.extend(pool.map(one, range(JOBS)))

        benchmark.pedantic(run_all, rounds=1)
    assert [o.status for o in outcomes] == ["succeeded"] * JOBS
    rate = JOBS / benchmark.stats.stats.median
    benchmark.extra_info["jobs"] = JOBS
    benchmark.extra_info["jobs_per_s"] = round(rate, 3)
    mode = "auto-remove" if auto_remove else "dockyard removes"
    record(
        benchmark,
        "jobs_per_s",
        rate,
        baseline(
            "throughput_raw_jobs_per_s",
            lambda: _raw_jobs_per_s(docker_client, test_image, instance_id),
        ),
        "jobs/s",
        name=f"throughput ({mode}): dockyard / docker-py pool(8)",
        target=">= 0.95",
    )
    record(
        benchmark,
        "jobs_per_s_vs_docker_run",
        rate,
        baseline(
            "throughput_docker_run_jobs_per_s",
            lambda: _docker_run_jobs_per_s(test_image, instance_id),
        ),
        "jobs/s",
        name=f"throughput ({mode}): dockyard / sequential docker run --rm",
    )

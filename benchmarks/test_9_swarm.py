"""The Swarm backend: spawn against the `docker service create` CLI, throughput against the
local backend, and the task poller's engine calls per tick as the worker count grows.

Runs on the swarm manager engine of `tests/swarm_engine.sh` (fixtures in `tests/conftest.py`,
helpers in `tests/support/swarm.py`); the local-backend side of the throughput figure runs on
the main engine. Every figure is a ratio against a baseline measured in the same run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import pytest

from dockyard import ContainerManager, WorkerJob

from .harness import bench_config, job_id, median, raw_name, record

SPAWN_ROUNDS = 10
THROUGHPUT_JOBS = 100
CONCURRENCY = 8
SHORT = ["sh", "-c", "exit 0"]
LONG = ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]
SECOND_NODE = os.environ.get("DOCKYARD_SWARM_WORKER_HOST") or "unix:///run/dyswarm2/docker.sock"
POLL_S = 0.05  # the CLI side polls for `running` as often as dockyard's start wait does


def swarm_config(image: str, instance: str, **overrides: Any) -> Any:
    return bench_config(
        image,
        instance,
        backend="swarm",
        docker_network="bridge",
        swarm_pending_timeout_s=120,
        **overrides,
    )


def remove_services(client: docker.DockerClient, instance: str) -> None:
    """Remove the run's services and their task containers (outside any timed region)."""
    label = f"cascade.router.instance={instance}"
    for service in client.api.services(filters={"label": [label]}):
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_service(service["ID"])
    for container in client.api.containers(all=True, filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            client.api.remove_container(container["Id"], force=True)
    # A second node keeps the finished task containers of removed services (moby#42789).
    with contextlib.suppress(docker.errors.DockerException, OSError):
        worker = docker.APIClient(base_url=SECOND_NODE, timeout=30)
        for container in worker.containers(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.APIError):
                worker.remove_container(container["Id"], force=True)
        worker.close()


def task_running(client: docker.DockerClient, service: str) -> bool:
    tasks = client.api.tasks(filters={"service": [service]})
    return any(t["Status"]["State"] in ("running", "complete") for t in tasks)


@pytest.mark.benchmark(group="swarm-spawn")
def test_swarm_spawn_against_the_cli(
    benchmark: Any, swarm_client: docker.DockerClient, swarm_image: str, swarm_instance: str
) -> None:
    """`spawn_worker` (service create -> task running) paired with the CLI doing the same."""
    from support.swarm import swarm_host  # noqa: PLC0415

    cli = shutil.which("docker")
    if cli is None:
        pytest.skip("no docker CLI")
    host = swarm_host()
    cli_samples: list[float] = []
    cli_services: list[str] = []

    def cli_spawn() -> float:
        name = raw_name("swarmcli")
        start = time.perf_counter()
        subprocess.run(
            [cli, "-H", host, "service", "create", "-d", "-q", "--name", name,
             "--mode", "replicated-job", "--restart-condition", "none",
             "--reserve-memory", "64m", "--limit-memory", "64m",
             "--label", f"cascade.router.instance={swarm_instance}",
             "--container-label", f"cascade.router.instance={swarm_instance}",
             swarm_image, *LONG],
            check=True, capture_output=True,
        )  # fmt: skip
        while not task_running(swarm_client, name):
            time.sleep(POLL_S)
        elapsed = time.perf_counter() - start
        cli_services.append(name)
        return elapsed

    with ContainerManager(
        swarm_config(swarm_image, swarm_instance, max_workers=2), docker_client=swarm_client
    ) as manager:
        running: list[str] = []

        def setup() -> tuple[tuple[WorkerJob], dict[str, Any]]:
            for jid in running:
                manager.kill_worker(jid)
                manager.wait_for_worker(jid, timeout=60)
            running.clear()
            cli_samples.append(cli_spawn())
            remove_services(swarm_client, swarm_instance)
            return (WorkerJob(id=job_id("swarmspawn"), type="bench", command=LONG),), {}

        def spawn(job: WorkerJob) -> None:
            manager.spawn_worker(job)
            running.append(job.id or "")

        benchmark.pedantic(spawn, setup=setup, rounds=SPAWN_ROUNDS, warmup_rounds=1)
        for jid in running:
            manager.kill_worker(jid)
            manager.wait_for_worker(jid, timeout=60)
    remove_services(swarm_client, swarm_instance)
    ours = benchmark.stats.stats.median
    theirs = median(cli_samples[1:])  # the first sample pairs with the warm-up round
    record(
        benchmark,
        "swarm_spawn_s",
        ours,
        theirs,
        "s",
        name="swarm spawn: spawn_worker / `docker service create -d` + poll for running",
        target="<= 1.0",
    )


def run_batch(manager: ContainerManager, tag: str) -> float:
    """Jobs per second for THROUGHPUT_JOBS short jobs at CONCURRENCY."""

    def one(index: int) -> str:
        jid = f"{tag}-{index}-{job_id('t')}"
        manager.spawn_worker(WorkerJob(id=jid, type="bench", command=SHORT))
        return manager.wait_for_worker(jid, timeout=300).status

    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        statuses = Counter(pool.map(one, range(THROUGHPUT_JOBS)))
    elapsed = time.perf_counter() - start
    assert statuses == {"succeeded": THROUGHPUT_JOBS}, statuses
    return THROUGHPUT_JOBS / elapsed


@pytest.mark.benchmark(group="swarm-throughput")
def test_swarm_throughput_against_the_local_backend(
    benchmark: Any,
    swarm_client: docker.DockerClient,
    swarm_image: str,
    swarm_instance: str,
    docker_client: docker.DockerClient,
    test_image: str,
    instance_id: str,
) -> None:
    """100 short jobs at concurrency 8: the swarm backend's jobs/s over the local backend's."""
    local_config = bench_config(
        test_image, instance_id, max_workers=CONCURRENCY, launch_concurrency=CONCURRENCY
    )
    with ContainerManager(local_config) as local:
        local_rate = run_batch(local, "local")
    swarm_rates: list[float] = []
    config = swarm_config(
        swarm_image, swarm_instance, max_workers=CONCURRENCY, launch_concurrency=CONCURRENCY
    )
    with ContainerManager(config, docker_client=swarm_client) as manager:

        def batch() -> None:
            swarm_rates.append(run_batch(manager, "swarm"))

        benchmark.pedantic(batch, rounds=1, warmup_rounds=0)
    benchmark.extra_info["local_jobs_per_s"] = round(local_rate, 3)
    benchmark.extra_info["swarm_jobs_per_s"] = round(swarm_rates[0], 3)
    record(
        benchmark,
        "swarm_throughput_jobs_per_s",
        swarm_rates[0],
        local_rate,
        "jobs/s",
        name="swarm throughput: jobs/s on swarm / jobs/s on the local backend",
    )


def poller_calls_per_tick(
    client: docker.DockerClient, image: str, instance: str, workers: int, window_s: float
) -> dict[str, float]:
    """Start `workers` long jobs, then count the engine calls the poller makes per tick."""
    config = swarm_config(image, instance, max_workers=workers, launch_concurrency=CONCURRENCY)
    calls: Counter[str] = Counter()
    tick_seconds: list[float] = []
    lock = threading.Lock()

    def observe(operation: str, result: str, seconds: float) -> None:
        with lock:
            calls[operation] += 1
            if operation == "task_list":
                tick_seconds.append(seconds)

    manager = ContainerManager(config, docker_client=client)
    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(
                pool.map(
                    lambda i: manager.spawn_worker(
                        WorkerJob(id=job_id(f"poll{workers}"), type="bench", command=LONG)
                    ),
                    range(workers),
                )
            )
        gateway: Any = manager._parts.driver
        gateway.observer = observe
        ticks_before = gateway.poller.ticks
        with lock:
            calls.clear()
            tick_seconds.clear()
        time.sleep(window_s)
        with lock:
            ticks = gateway.poller.ticks - ticks_before
            counted = dict(calls)
            durations = list(tick_seconds)
        assert manager.get_active_worker_count() == workers
    finally:
        manager.close()  # detaches; the services go below, outside the measurement
        remove_services(client, instance)
    return {
        "ticks": ticks,
        "calls": sum(counted.values()),
        "calls_per_tick": sum(counted.values()) / ticks,
        "task_list_median_s": median(durations),
    }


@pytest.mark.benchmark(group="swarm-poller")
def test_swarm_poller_calls_per_tick_stay_constant(
    benchmark: Any, swarm_client: docker.DockerClient, swarm_image: str, swarm_instance: str
) -> None:
    """Engine calls per poller tick with 10 and with 200 running workers (must be equal)."""
    results: dict[int, dict[str, float]] = {}

    def measure() -> None:
        for workers in (10, 200):
            results[workers] = poller_calls_per_tick(
                swarm_client, swarm_image, swarm_instance, workers, window_s=5.0
            )

    benchmark.pedantic(measure, rounds=1, warmup_rounds=0)
    for workers, figures in results.items():
        for key, value in figures.items():
            benchmark.extra_info[f"w{workers}_{key}"] = round(value, 6)
    record(
        benchmark,
        "swarm_poller_calls_per_tick",
        results[200]["calls_per_tick"],
        results[10]["calls_per_tick"],
        "calls/tick",
        name="swarm poller: engine calls per tick at 200 workers / at 10 workers",
        target="== 1.0",
    )
    record(
        benchmark,
        "swarm_poller_tick_s",
        results[200]["task_list_median_s"],
        results[10]["task_list_median_s"],
        "s",
        name="swarm poller: task_list call time at 200 workers / at 10 workers",
    )
    # One call a tick, whatever the worker count. A tick under way when the window opens or
    # closes is counted on one side only: the counts may differ by that one.
    for figures in results.values():
        assert abs(figures["calls"] - figures["ticks"]) <= 1, figures

"""Exit-detection latency: the engine's `die` event → `on_worker_finished`, p50 and p99.

The engine stamps each `die` event in nanoseconds (the moment it recorded FinishedAt);
the listener stamps the outcome. Baseline, same image and run: docker-py blocked in
`wait()` on the same containers — the moment the wait returns, and the moment a
follow-up `remove` is done (dockyard's outcome comes after the container is gone).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dockyard import ContainerManager, WorkerJob

from .harness import (
    DockerEvents,
    RawDocker,
    Recorder,
    baseline,
    bench_config,
    dockyard_spec,
    job_id,
    percentile,
    raw_name,
    record,
)

JOBS = int(os.environ.get("DOCKYARD_BENCH_EXIT_JOBS", "80"))
CONCURRENCY = 8
TRUE = ["true"]


def _raw_latencies(docker_client, test_image, instance_id) -> dict[str, float]:
    spec = dockyard_spec(docker_client, bench_config(test_image, instance_id), TRUE)
    raw = RawDocker(docker_client.api, spec, auto_remove=False)
    api = docker_client.api
    waited: dict[str, int] = {}
    removed: dict[str, int] = {}
    events = DockerEvents(docker_client, instance_id, ["die"])
    try:

        def one(_: int) -> str:
            container_id = raw.create_start(raw_name("exit"))
            api.wait(container_id)
            waited[container_id] = time.time_ns()
            api.remove_container(container_id, force=True)
            removed[container_id] = time.time_ns()
            return container_id

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            ids = list(pool.map(one, range(JOBS)))
        died = events.wait_for("die", ids)
    finally:
        events.close()
    wait_s = [(waited[i] - died[i]) / 1e9 for i in ids]
    removed_s = [(removed[i] - died[i]) / 1e9 for i in ids]
    figures = {
        "exit_raw_wait_p50_s": percentile(wait_s, 50),
        "exit_raw_wait_p99_s": percentile(wait_s, 99),
        "exit_raw_removed_p50_s": percentile(removed_s, 50),
        "exit_raw_removed_p99_s": percentile(removed_s, 99),
    }
    for key, value in figures.items():
        baseline(key, lambda value=value: value)
    return figures


@pytest.mark.benchmark(group="exit-latency")
def test_exit_latency_raw_wait(benchmark, docker_client, test_image, instance_id):
    """Baseline: die → docker-py `wait()` returns, and → `remove` done."""
    figures: dict[str, float] = {}
    benchmark.pedantic(
        lambda: figures.update(_raw_latencies(docker_client, test_image, instance_id)),
        rounds=1,
    )
    benchmark.extra_info.update({k: round(v, 6) for k, v in figures.items()})


@pytest.mark.benchmark(group="exit-latency")
@pytest.mark.parametrize("auto_remove", [True, False], ids=["auto-remove", "dockyard-removes"])
def test_exit_latency_dockyard(benchmark, docker_client, test_image, instance_id, auto_remove):
    """die → on_worker_finished, workers started 8 at a time."""
    recorder = Recorder()
    config = bench_config(
        test_image, instance_id, max_workers=CONCURRENCY, auto_remove_workers=auto_remove
    )
    events = DockerEvents(docker_client, instance_id, ["die"])
    try:
        with ContainerManager(config, listener=recorder) as manager:

            def one(_: int) -> str:
                worker = manager.spawn_worker(
                    WorkerJob(id=job_id("exit"), type="bench", command=TRUE)
                )
                manager.wait_for_worker(worker.job_id, timeout=120)
                return worker.container_id

            one(0)  # warm-up
            ids: list[str] = []

            def run_all():
                with ThreadPoolExecutor(CONCURRENCY) as pool:
                    ids.extend(pool.map(one, range(JOBS)))

            benchmark.pedantic(run_all, rounds=1)
            recorder.wait_finished(JOBS + 1)
        died = events.wait_for("die", ids)
    finally:
        events.close()
    latencies = [(recorder.finished_ns[i] - died[i]) / 1e9 for i in ids]
    mode = "auto-remove" if auto_remove else "dockyard removes"
    base = _raw_baselines(docker_client, test_image, instance_id)
    for q in (50, 99):
        value = percentile(latencies, q)
        record(
            benchmark,
            f"die_to_finished_p{q}_s",
            value,
            base[f"exit_raw_wait_p{q}_s"],
            "s",
            name=f"exit latency p{q} ({mode}): die→on_worker_finished / die→wait returns",
        )
        record(
            benchmark,
            f"die_to_finished_vs_removed_p{q}_s",
            value,
            base[f"exit_raw_removed_p{q}_s"],
            "s",
            name=f"exit latency p{q} ({mode}): die→on_worker_finished / die→wait+remove",
        )


def _raw_baselines(docker_client, test_image, instance_id) -> dict[str, float]:
    keys = (
        "exit_raw_wait_p50_s",
        "exit_raw_wait_p99_s",
        "exit_raw_removed_p50_s",
        "exit_raw_removed_p99_s",
    )
    measured: dict[str, float] = {}

    def measure(key: str) -> float:
        if not measured:
            measured.update(_raw_latencies(docker_client, test_image, instance_id))
        return measured[key]

    return {key: baseline(key, lambda key=key: measure(key)) for key in keys}

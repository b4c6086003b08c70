"""Warm reuse: a job whose set-up writes ~50 MB of files, cold against a reused snapshot.

The job skips its set-up when the files are already there, which is what a snapshot of
its last clean run gives it. Time to finished = `spawn_worker` → outcome; a cold run
includes committing its 50 MB layer (that commit is what makes the next run warm). The
baseline is the cold run, same image and run.
"""

from __future__ import annotations

import time

import pytest

from dockyard import ContainerManager, WorkerJob

from .harness import baseline, bench_config, job_id, median, record

ROUNDS = 5
SETUP_MB = 50
JOB = [
    "sh",
    "-c",
    "if [ ! -f /data/ready ]; then mkdir -p /data"
    f" && dd if=/dev/urandom of=/data/blob bs=1048576 count={SETUP_MB} 2>/dev/null"
    " && touch /data/ready; fi; wc -c /data/blob",
]


def _config(test_image, instance_id, snapshot_image_prefix):
    return bench_config(
        test_image,
        instance_id,
        max_workers=2,
        worker_memory_mb=256,
        snapshot_enabled=True,
        snapshot_image_prefix=snapshot_image_prefix,
    )


def _run(manager: ContainerManager, work_item: str):
    job = WorkerJob(
        id=job_id("warm"), type="bench", project_id="bench", work_item_id=work_item, command=JOB
    )
    start = time.perf_counter()
    worker = manager.spawn_worker(job)
    outcome = manager.wait_for_worker(worker.job_id, timeout=300)
    elapsed = time.perf_counter() - start
    assert outcome.succeeded, outcome.describe()
    return worker, outcome, elapsed


@pytest.mark.benchmark(group="warm-reuse")
def test_cold_run(benchmark, docker_client, test_image, instance_id, snapshot_image_prefix):
    """Baseline: every round a new work item, so set-up runs and a snapshot is committed."""
    runs = []
    with ContainerManager(_config(test_image, instance_id, snapshot_image_prefix)) as manager:
        benchmark.pedantic(
            lambda: runs.append(_run(manager, job_id("item"))), rounds=ROUNDS, warmup_rounds=1
        )
    assert all(worker.image == test_image for worker, _, _ in runs)
    baseline("warm_cold_s", lambda: benchmark.stats.stats.median)
    benchmark.extra_info["container_run_s"] = round(
        median([o.duration_s for _, o, _ in runs if o.duration_s is not None]), 4
    )


@pytest.mark.benchmark(group="warm-reuse")
def test_reused_snapshot(benchmark, docker_client, test_image, instance_id, snapshot_image_prefix):
    """The same work item again: the snapshot image has the files, set-up is skipped."""
    runs = []
    cold: list[float] = []
    with ContainerManager(_config(test_image, instance_id, snapshot_image_prefix)) as manager:
        item = job_id("item")
        cold.append(_run(manager, item)[2])  # makes the first snapshot
        benchmark.pedantic(lambda: runs.append(_run(manager, item)), rounds=ROUNDS, warmup_rounds=1)
    assert all(worker.image != test_image for worker, _, _ in runs), "no snapshot was reused"
    warm = benchmark.stats.stats.median
    benchmark.extra_info["container_run_s"] = round(
        median([o.duration_s for _, o, _ in runs if o.duration_s is not None]), 4
    )
    record(
        benchmark,
        "time_to_finished_s",
        warm,
        baseline("warm_cold_s", lambda: cold[0]),
        "s",
        name=f"warm reuse ({SETUP_MB} MB set-up): reused snapshot / cold run",
    )

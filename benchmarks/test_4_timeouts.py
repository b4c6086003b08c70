"""Timeout precision: a worker's deadline → the kill path's `stop` call, p50 and p99.

Workers overrun a 0.5 s timeout; the gateway's `stop` is wrapped to stamp the moment the
kill path issues it. The real sentry-sdk (capturing transport) is on, so the timeout
report the kill path sends first is part of the cost, as in production. Baseline, same
run and load: a plain `threading.Timer` of the same delay armed next to each worker,
stamping its own lateness.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from dockyard import ContainerManager, WorkerJob

from .harness import bench_config, job_id, percentile, record

JOBS = int(os.environ.get("DOCKYARD_BENCH_TIMEOUT_JOBS", "48"))
CONCURRENCY = 8
TIMEOUT_S = 0.5
# Exits at once on SIGTERM (a shell as PID 1 ignores it otherwise), so stops are quick.
TERM_AWARE_SLEEP = ["sh", "-c", "trap 'exit 0' TERM; sleep 60 & wait"]


@pytest.mark.benchmark(group="timeouts")
def test_timeout_precision(benchmark, docker_client, test_image, instance_id, sentry_events):
    config = bench_config(
        test_image,
        instance_id,
        max_workers=CONCURRENCY,
        worker_timeout_s=TIMEOUT_S,
        stop_grace_s=1.0,
    )
    stop_issued: dict[str, datetime] = {}
    timer_late: list[float] = []
    with ContainerManager(config) as manager:
        gateway = manager._parts.driver.client
        original_stop = gateway.stop

        def stamped_stop(container_id: str, grace_s: float) -> None:
            stop_issued.setdefault(container_id, datetime.now(UTC))
            original_stop(container_id, grace_s)

        gateway.stop = stamped_stop

        def plain_timer() -> None:
            due = time.monotonic() + TIMEOUT_S
            timer = threading.Timer(TIMEOUT_S, lambda: timer_late.append(time.monotonic() - due))
            timer.daemon = True
            timer.start()

        def one(_: int):
            worker = manager.spawn_worker(
                WorkerJob(id=job_id("timeout"), type="bench", command=TERM_AWARE_SLEEP)
            )
            plain_timer()
            outcome = manager.wait_for_worker(worker.job_id, timeout=120)
            return worker, outcome

        one(0)  # warm-up
        stop_issued.clear()
        timer_late.clear()
        results = []

        def run_all():
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                results.extend(pool.map(one, range(JOBS)))

        benchmark.pedantic(run_all, rounds=1)
        del gateway.stop
    assert [o.status for _, o in results] == ["timed_out"] * JOBS
    assert len(sentry_events.with_source("worker_timeout")) >= JOBS
    late = [(stop_issued[w.container_id] - w.deadline).total_seconds() for w, _ in results]
    for q in (50, 99):
        record(
            benchmark,
            f"deadline_to_stop_p{q}_s",
            percentile(late, q),
            percentile(timer_late, q),
            "s",
            name=f"timeout p{q}: deadline→stop issued / plain Timer lateness",
        )
    benchmark.extra_info["jobs"] = JOBS

"""Scale: 200 workers running at once on one (2-core) machine.

Measured: the router process's OS threads and resident memory per running worker, against
the same process just before spawning (manager open, nothing started), and urllib3's
"Connection pool is full" warnings — none are allowed, neither while the workers start
nor while all of them exit at once (killed together, as by an operator or the OOM killer).
The timed part is starting the 200 workers.
"""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dockyard import ContainerManager, WorkerJob

from .harness import (
    SHORT_CALLS,
    InFlight,
    bench_config,
    counting_pool_warnings,
    job_id,
    process_status,
    record,
)

WORKERS = int(os.environ.get("DOCKYARD_BENCH_SCALE_WORKERS", "200"))
SLEEP = ["sleep", "600"]


@pytest.mark.benchmark(group="scale")
def test_scale_running_workers(benchmark, docker_client, test_image, instance_id):
    config = bench_config(
        test_image, instance_id, max_workers=WORKERS, worker_memory_mb=16, stop_grace_s=1.0
    )
    workers = []
    with counting_pool_warnings() as pool_warnings, ContainerManager(config) as manager:
        in_flight = InFlight(manager, SHORT_CALLS)
        before = process_status()

        def spawn_all():
            with ThreadPoolExecutor(16) as pool:
                workers.extend(
                    pool.map(
                        lambda _: manager.spawn_worker(
                            WorkerJob(id=job_id("scale"), type="bench", command=SLEEP)
                        ),
                        range(WORKERS),
                    )
                )

        benchmark.pedantic(spawn_all, rounds=1)
        time.sleep(1.0)  # let the last waits and timers settle
        running = manager.get_active_worker_count()
        during = process_status()
        warnings_while_running = pool_warnings.count

        # All of them exit at once (one `docker kill` for all): 200 exit handlers wake
        # together, and their burst of calls must not overflow a connection pool.
        ids = [w.container_id for w in workers]
        # Bounded: an engine that stops answering fails the benchmark instead of hanging it.
        subprocess.run(["docker", "kill", *ids], check=True, capture_output=True, timeout=300)
        outcomes = [manager.wait_for_worker(w.job_id, timeout=300) for w in workers]
        warnings_total = pool_warnings.count
        in_flight.close()

    assert running == WORKERS
    assert [(o.status, o.exit_code) for o in outcomes] == [("failed", 137)] * WORKERS
    threads_per_worker = (during["Threads"] - before["Threads"]) / WORKERS
    rss_per_worker_kib = (during["VmRSS"] - before["VmRSS"]) / WORKERS
    benchmark.extra_info.update(
        {
            "workers": WORKERS,
            "workers_started_per_s": round(WORKERS / benchmark.stats.stats.median, 3),
            "threads_before": before["Threads"],
            "threads_running": during["Threads"],
            "threads_per_worker": round(threads_per_worker, 3),
            "rss_before_kib": before["VmRSS"],
            "rss_running_kib": during["VmRSS"],
            "rss_per_worker_kib": round(rss_per_worker_kib, 1),
            "pool_full_warnings_while_running": warnings_while_running,
            "pool_full_warnings_total": warnings_total,
            "short_calls_in_flight_peak": in_flight.peak,
        }
    )
    record(
        benchmark,
        "threads",
        during["Threads"],
        before["Threads"],
        "threads",
        name=f"scale: threads with {WORKERS} running / before spawning",
    )
    record(
        benchmark,
        "rss_kib",
        during["VmRSS"],
        before["VmRSS"],
        "KiB",
        name=f"scale: RSS with {WORKERS} running / before spawning",
    )
    assert warnings_total == 0, f"{warnings_total} 'Connection pool is full' warnings"

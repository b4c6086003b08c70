"""A worker's output: what streaming costs quiet jobs, how fast lines get through, and the
threads it takes.

- quiet jobs: 100 x `true` at concurrency 8 with `stream_output` on (a listener counting
  lines, so lines are queued and delivered) against off, in alternating halves of the same
  run (the engine's speed drifts by the minute here); target ratio ≥ 0.95;
- line throughput: one worker printing 1,000,000 lines of 80 characters (`yes | head`)
  through dockyard (masked: the job has a secret in its data; a listener counting lines),
  spawn to the last line delivered, against docker-py creating and starting the same
  container and reading its attach stream to the end (`attach(stream=True, logs=True)`,
  counting newlines), create to end of stream; target ratio ≥ 0.8; and against the same
  read splitting and decoding each line in Python, as a host reading docker-py would;
- threads per running worker with streaming on: `threading.active_count()` with N
  `sleep` workers running against before spawning them (no baseline: the figure is the
  count itself; the ratio line compares it with streaming off in the same run).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from dockyard import ActiveWorker, ContainerManager, WorkerJob, WorkerLifecycleListener

from .harness import RawDocker, bench_config, dockyard_spec, end_worker, job_id, raw_name, record

QUIET_JOBS = int(os.environ.get("DOCKYARD_BENCH_OUTPUT_JOBS", "100"))
CONCURRENCY = 8
LINES = int(os.environ.get("DOCKYARD_BENCH_OUTPUT_LINES", "1000000"))
LINE = "y" * 80
CHATTY = ["sh", "-c", f"yes {LINE} | head -n {LINES}"]
SECRET = "bench-output-secret-9d2f41"
THREAD_WORKERS = int(os.environ.get("DOCKYARD_BENCH_OUTPUT_WORKERS", "20"))


class LineCounter(WorkerLifecycleListener):
    """Counts the lines it is given and when the last one came."""

    def __init__(self) -> None:
        self.count = 0
        self.last_at = 0.0

    def on_worker_output(self, worker: ActiveWorker, stream: str, line: str) -> None:
        self.count += 1  # one delivery thread per worker at a time: no lock needed
        self.last_at = time.perf_counter()

    def settle(self, expected: int, quiet_s: float = 1.0, timeout: float = 60.0) -> None:
        """Until `expected` lines came, or none for `quiet_s` (lines the queue dropped
        never come)."""
        deadline = time.perf_counter() + timeout
        while self.count < expected and time.perf_counter() < deadline:
            seen = self.count
            time.sleep(quiet_s)
            if self.count == seen:
                return


# ------------------------------------------------------------------------ quiet jobs


def _quiet_jobs_per_s(manager: ContainerManager, jobs: int) -> float:
    def one(_: int) -> str:
        worker = manager.spawn_worker(WorkerJob(id=job_id("quiet"), type="bench", command=["true"]))
        return manager.wait_for_worker(worker.job_id, timeout=300).status

    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        statuses = list(pool.map(one, range(jobs)))
    elapsed = time.perf_counter() - start
    assert statuses == ["succeeded"] * jobs
    return jobs / elapsed


@pytest.mark.benchmark(group="output")
def test_output_quiet_jobs_streaming_on_vs_off(benchmark, test_image, instance_id):
    """100 x `true` at concurrency 8: streaming on / off, alternating halves."""
    managers = {
        streaming: ContainerManager(
            bench_config(test_image, instance_id, max_workers=CONCURRENCY, stream_output=streaming),
            listener=LineCounter(),
        )
        for streaming in (False, True)
    }
    elapsed = {False: 0.0, True: 0.0}
    half = max(1, QUIET_JOBS // 2)
    try:
        for manager in managers.values():
            assert _quiet_jobs_per_s(manager, 1) > 0  # warm-up: connections, threads

        def run_all() -> None:
            for streaming in (False, True, False, True):
                elapsed[streaming] += half / _quiet_jobs_per_s(managers[streaming], half)

        benchmark.pedantic(run_all, rounds=1)
    finally:
        for manager in managers.values():
            manager.close()
    on, off = 2 * half / elapsed[True], 2 * half / elapsed[False]
    benchmark.extra_info["jobs_each"] = 2 * half
    record(
        benchmark,
        "quiet_jobs_per_s",
        on,
        off,
        "jobs/s",
        name="output: quiet jobs, streaming on / off",
        target=">= 0.95",
    )


# ------------------------------------------------------------------------ line throughput


def _count_newlines(stream: Iterable[bytes]) -> int:
    return sum(chunk.count(b"\n") for chunk in stream)


def _count_decoded_lines(stream: Iterable[bytes]) -> int:
    """Lines as a host reading docker-py itself would take them: split, decoded, handed
    to a function one by one (a partial line carried to the next chunk)."""
    count = 0
    seen: list[str] = []
    handle = seen.append
    rest = b""
    for chunk in stream:
        *whole, rest = (rest + chunk).split(b"\n")
        for line in whole:
            handle(line.decode("utf-8", "replace"))
            count += 1
        seen.clear()
    return count


def _raw_lines_per_s(
    docker_client: Any,
    test_image: str,
    instance_id: str,
    count: Callable[[Iterable[bytes]], int] = _count_newlines,
) -> float:
    spec = dockyard_spec(docker_client, bench_config(test_image, instance_id), ["true"])
    raw = RawDocker(docker_client.api, spec, auto_remove=False, command=CHATTY)
    api = docker_client.api
    start = time.perf_counter()
    container_id = raw.create(raw_name("lines"))
    try:
        stream = api.attach(container_id, stdout=True, stderr=True, stream=True, logs=True)
        api.start(container_id)
        lines = count(stream)
        elapsed = time.perf_counter() - start
        assert api.wait(container_id)["StatusCode"] == 0
    finally:
        raw.remove(container_id)
    assert lines == LINES, lines
    return LINES / elapsed


def _dockyard_lines_per_s(test_image: str, instance_id: str) -> tuple[float, int]:
    counter = LineCounter()
    config = bench_config(test_image, instance_id)
    with ContainerManager(config, listener=counter) as manager:
        job = WorkerJob(id=job_id("lines"), type="bench", data={"token": SECRET}, command=CHATTY)
        start = time.perf_counter()
        manager.spawn_worker(job)
        outcome = manager.wait_for_worker(job.id or "", timeout=600)
        counter.settle(LINES)
        elapsed = max(counter.last_at, 1e-9) - start
    assert outcome.succeeded, outcome
    assert outcome.log_tail[-1] == LINE
    return counter.count / elapsed, counter.count


@pytest.mark.benchmark(group="output")
def test_output_line_throughput(benchmark, docker_client, test_image, instance_id):
    """One chatty worker: lines/s through dockyard / docker-py reading its attach stream."""
    raw_rate = _raw_lines_per_s(docker_client, test_image, instance_id)
    result: list[tuple[float, int]] = []
    benchmark.pedantic(
        lambda: result.append(_dockyard_lines_per_s(test_image, instance_id)), rounds=1
    )
    rate, delivered = result[-1]
    raw_after = _raw_lines_per_s(docker_client, test_image, instance_id)
    baseline_rate = (raw_rate + raw_after) / 2  # bracketing the dockyard run
    decoded = _raw_lines_per_s(docker_client, test_image, instance_id, _count_decoded_lines)
    benchmark.extra_info["lines"] = LINES
    benchmark.extra_info["lines_delivered"] = delivered
    benchmark.extra_info["raw_lines_per_s_before_after"] = [round(raw_rate), round(raw_after)]
    record(
        benchmark,
        "lines_per_s",
        rate,
        baseline_rate,
        "lines/s",
        name="output: lines/s through dockyard (masked, listener) / docker-py attach",
        target=">= 0.8",
    )
    record(
        benchmark,
        "lines_per_s_vs_decoded",
        rate,
        decoded,
        "lines/s",
        name="output: lines/s through dockyard / docker-py attach, lines decoded one by one",
    )


# ------------------------------------------------------------------------ threads


def _threads_per_worker(
    docker_client: Any, test_image: str, instance_id: str, *, streaming: bool
) -> float:
    config = bench_config(
        test_image, instance_id, max_workers=THREAD_WORKERS, stream_output=streaming
    )
    with ContainerManager(config, listener=LineCounter()) as manager:
        warm = manager.spawn_worker(WorkerJob(id=job_id("warm"), type="bench", command=["true"]))
        manager.wait_for_worker(warm.job_id, timeout=120)
        time.sleep(0.5)  # threads that end with the worker are gone
        before = threading.active_count()
        workers = [
            manager.spawn_worker(
                WorkerJob(id=job_id("threads"), type="bench", command=["sleep", "120"])
            )
            for _ in range(THREAD_WORKERS)
        ]
        time.sleep(0.5)
        during = threading.active_count()
        for worker in workers:
            end_worker(manager, docker_client, worker)
    return (during - before) / THREAD_WORKERS


@pytest.mark.benchmark(group="output")
def test_output_threads_per_running_worker(benchmark, docker_client, test_image, instance_id):
    """threading.active_count() per running worker, streaming on (and off, alongside)."""
    result: list[float] = []
    benchmark.pedantic(
        lambda: result.append(
            _threads_per_worker(docker_client, test_image, instance_id, streaming=True)
        ),
        rounds=1,
    )
    off = _threads_per_worker(docker_client, test_image, instance_id, streaming=False)
    benchmark.extra_info["workers"] = THREAD_WORKERS
    benchmark.extra_info["threads_per_worker_on"] = round(result[-1], 3)
    benchmark.extra_info["threads_per_worker_off"] = round(off, 3)
    record(
        benchmark,
        "threads_per_worker",
        result[-1],
        off,
        "threads per running worker",
        name="output: threads per running worker, streaming on / off",
    )

"""Spawn overhead: `spawn_worker` until started against docker-py's create + start.

Both sides create the very same container (dockyard's own `ContainerSpec` is captured and
replayed through docker-py's low-level API). Cleanup runs in `setup`, outside the timed
region. Besides the group baseline, every dockyard round is bracketed by raw create+starts
made just before and just after it, so slow drifts of a shared machine hit both sides alike.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from dockyard import ActiveWorker, ContainerManager, WorkerJob
from dockyard._driver import ExitResult
from dockyard._output import AttachedOutput

from .harness import (
    BASELINES,
    CallTimer,
    RawDocker,
    baseline,
    bench_config,
    capture_spec,
    dockyard_spec,
    end_worker,
    job_id,
    median,
    raw_name,
    record,
)

ROUNDS = 30
SLEEP = ["sleep", "60"]


@pytest.mark.benchmark(group="spawn")
def test_spawn_raw_create_start(benchmark, docker_client, test_image, instance_id):
    """Baseline: docker-py `create_container` + `start` of dockyard's container."""
    spec = dockyard_spec(docker_client, bench_config(test_image, instance_id), SLEEP)
    raw = RawDocker(docker_client.api, spec)
    created: list[str] = []

    def cleanup():
        while created:
            raw.remove(created.pop())

    def spawn():
        created.append(raw.create_start(raw_name("spawn")))

    benchmark.pedantic(spawn, setup=cleanup, rounds=ROUNDS, warmup_rounds=1)
    cleanup()
    BASELINES["spawn_raw_s"] = benchmark.stats.stats.median
    benchmark.extra_info["median_s"] = benchmark.stats.stats.median


@pytest.mark.benchmark(group="spawn")
def test_spawn_dockyard(benchmark, docker_client, test_image, instance_id):
    """`spawn_worker` until the container has started, paired with raw create + start."""
    with ContainerManager(bench_config(test_image, instance_id, max_workers=2)) as manager:
        spec, first = capture_spec(
            manager, WorkerJob(id=job_id("spawn"), type="bench", command=SLEEP)
        )
        end_worker(manager, docker_client, first)
        raw = RawDocker(docker_client.api, spec)
        calls = CallTimer(manager, ("create", "open_exit_wait", "start"))
        paired: list[float] = []
        running: list[ActiveWorker] = []

        def setup():
            while running:
                end_worker(manager, docker_client, running.pop())
            start = time.perf_counter()
            container_id = raw.create_start(raw_name("spawn"))
            paired.append(time.perf_counter() - start)
            raw.remove(container_id)
            calls.clear()
            return (WorkerJob(id=job_id("spawn"), type="bench", command=SLEEP),), {}

        def spawn(job):
            running.append(manager.spawn_worker(job))
            # Only the last round's call times survive `clear()`: keep each round's.
            for name, samples in calls.samples.items():
                per_round[name].append(sum(samples))

        per_round: dict[str, list[float]] = {"create": [], "open_exit_wait": [], "start": []}
        benchmark.pedantic(spawn, setup=setup, rounds=ROUNDS, warmup_rounds=1)
        setup()  # ends the last worker and takes the raw sample after the last round
        calls.close()

    total = benchmark.stats.stats.median
    # paired: [before warm-up, before round 1 .. before round N, after round N]
    brackets = [(a + b) / 2 for a, b in itertools.pairwise(paired[1:])]
    paired_raw = median(brackets)
    ratios = [d / r for d, r in zip(benchmark.stats.stats.data, brackets, strict=True)]
    benchmark.extra_info["median_of_paired_ratios"] = round(median(ratios), 4)
    record(
        benchmark,
        "spawn_s",
        total,
        paired_raw,
        "s",
        name="spawn: spawn_worker / create+start (paired rounds)",
        target="<= 1.05",
    )
    if "spawn_raw_s" in BASELINES:
        record(
            benchmark,
            "spawn_vs_group_s",
            total,
            BASELINES["spawn_raw_s"],
            "s",
            name="spawn: spawn_worker / create+start (group baseline)",
            target="<= 1.05",
        )
    parts = {name: median(samples[-ROUNDS:]) for name, samples in per_round.items()}
    for name, value in parts.items():
        benchmark.extra_info[f"{name}_median_s"] = round(value, 6)
    record(
        benchmark,
        "open_exit_wait_s",
        parts["open_exit_wait"],
        total,
        "s",
        name="spawn: open_exit_wait share of spawn_worker",
    )
    benchmark.extra_info["outside_docker_calls_s"] = round(total - sum(parts.values()), 6)


class _Wait:
    """An exit wait the benchmark ends by hand."""

    def __init__(self) -> None:
        self._exited = threading.Event()
        self.closed = False

    def exit(self) -> None:
        self._exited.set()

    def result(self) -> ExitResult:
        self._exited.wait()
        return ExitResult(0)

    def close(self) -> None:
        self.closed = True
        self._exited.set()


class _InstantEngine:
    """Answers every gateway call at once, so only dockyard's own Python remains."""

    CALLS = ("create", "open_exit_wait", "start", "inspect", "logs_tail", "remove", "wait_removed")

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.waits: dict[str, _Wait] = {}

    def install(self, manager: ContainerManager) -> None:
        for name in self.CALLS:
            setattr(manager._parts.driver.client, name, getattr(self, name))
        # The output attach too: else each spawn pays a real engine's 404 for it.
        manager._parts.outputs._attach = self.attach_output

    def create(self, spec):
        return f"{next(self._ids):064x}"

    def open_exit_wait(self, container_id):
        wait = self.waits[container_id] = _Wait()
        return wait

    def start(self, container_id):
        pass

    def attach_output(self, container_id):
        return AttachedOutput(frames=iter([(1, b"done\n")]), close=lambda: None)

    def inspect(self, container_id):
        return {
            "State": {
                "Running": False,
                "ExitCode": 0,
                "OOMKilled": False,
                "Error": "",
                "StartedAt": "2026-01-01T00:00:00.000000000Z",
                "FinishedAt": "2026-01-01T00:00:01.000000000Z",
            },
            "Config": {"Env": []},
        }

    def logs_tail(self, container_id, lines):
        return "done\n"

    def remove(self, container_id, force=True):
        pass

    def wait_removed(self, container_id, timeout_s):
        pass


@pytest.mark.benchmark(group="spawn-python")
def test_spawn_dockyard_python_only(benchmark, docker_client, test_image, instance_id):
    """dockyard's own work per spawn and per exit, with an engine that answers at once."""
    engine = _InstantEngine()
    exits: list[float] = []
    with ContainerManager(bench_config(test_image, instance_id, max_workers=2)) as manager:
        engine.install(manager)
        running: list[ActiveWorker] = []

        def setup():
            while running:
                worker = running.pop()
                start = time.perf_counter()
                engine.waits[worker.container_id].exit()
                manager.wait_for_worker(worker.job_id, timeout=10)
                exits.append(time.perf_counter() - start)
            return (WorkerJob(id=job_id("py"), type="bench", command=SLEEP),), {}

        benchmark.pedantic(
            lambda job: running.append(manager.spawn_worker(job)),
            setup=setup,
            rounds=300,
            warmup_rounds=10,
        )
        setup()
    spawn_s = benchmark.stats.stats.median
    raw = baseline("spawn_raw_s", lambda: _raw_create_start_median(docker_client, test_image))
    record(
        benchmark,
        "python_per_spawn_s",
        spawn_s,
        raw,
        "s",
        name="spawn: dockyard's own Python per spawn / raw create+start",
    )
    record(
        benchmark,
        "python_per_exit_s",
        median(exits),
        raw,
        "s",
        name="exit: dockyard's own Python per exit (to outcome) / raw create+start",
    )


def _raw_create_start_median(docker_client, test_image) -> float:
    """A raw create+start median for runs where its own benchmark was deselected."""
    instance = f"bench-{job_id('baseline')}"
    spec = dockyard_spec(docker_client, bench_config(test_image, instance), SLEEP)
    raw = RawDocker(docker_client.api, spec)
    samples = []
    for _ in range(10):
        start = time.perf_counter()
        container_id = raw.create_start(raw_name("spawn"))
        samples.append(time.perf_counter() - start)
        raw.remove(container_id)
    return median(samples)

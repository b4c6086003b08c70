"""Metrics overhead: spawn and exit with a metrics registry against the same without one.

Two managers run side by side in one process, one with `metrics_registry=` and one without,
and their rounds alternate, so a shared machine's drifts hit both alike.

- Python only: an engine that answers at once (`_InstantEngine` of test_1, its calls timed
  through the gateway's real observer hook), so only dockyard's own work per spawn and per
  exit remains: the added time is the metrics' whole cost. It is also put against a raw
  create + start, the time a real spawn takes anyway (target: the added time <= 1% of it).
- Real engine: `spawn_worker` until started, metrics on against off (target ratio <= 1.01).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from dockyard import ActiveWorker, ContainerManager, WorkerJob

from .harness import baseline, bench_config, end_worker, job_id, median, record
from .test_1_spawn import SLEEP, _InstantEngine, _raw_create_start_median

PY_ROUNDS = 400
ENGINE_ROUNDS = 20


def _install_observed(engine: _InstantEngine, manager: ContainerManager) -> None:
    """The instant engine's calls, each through the gateway's one call point (and so its
    observer), as in production."""
    calls = manager._parts.driver.client.calls
    for name in engine.CALLS:
        fake: Callable[..., Any] = getattr(engine, name)

        def observed(*args: Any, _fake: Callable[..., Any] = fake, _op: str = name, **kw: Any):
            return calls.run(_op, lambda: _fake(*args, **kw))

        setattr(manager._parts.driver.client, name, observed)


class _Side:
    """One manager and its alternating samples: spawn until started, exit until outcome."""

    def __init__(self, manager: ContainerManager, engine: _InstantEngine | None) -> None:
        self.manager = manager
        self.engine = engine
        self.spawns: list[float] = []
        self.exits: list[float] = []
        self.running: list[ActiveWorker] = []

    def spawn(self, tag: str) -> None:
        job = WorkerJob(id=job_id(tag), type="bench", command=SLEEP)
        start = time.perf_counter()
        worker = self.manager.spawn_worker(job)
        self.spawns.append(time.perf_counter() - start)
        self.running.append(worker)

    def exit_all(self, docker_client: Any = None) -> None:
        while self.running:
            worker = self.running.pop()
            if self.engine is None:
                end_worker(self.manager, docker_client, worker)
                continue
            start = time.perf_counter()
            self.engine.waits[worker.container_id].exit()
            self.manager.wait_for_worker(worker.job_id, timeout=10)
            self.exits.append(time.perf_counter() - start)


@pytest.mark.benchmark(group="metrics")
def test_metrics_overhead_python_only(benchmark, docker_client, test_image, instance_id):
    """dockyard's own Python per spawn and per exit, metrics on against off, alternating."""
    registry = CollectorRegistry()
    config = bench_config(test_image, instance_id, max_workers=2)
    with (
        ContainerManager(config) as off_manager,
        ContainerManager(config, metrics_registry=registry) as on_manager,
    ):
        off = _Side(off_manager, _InstantEngine())
        on = _Side(on_manager, _InstantEngine())
        for side in (off, on):
            _install_observed(side.engine, side.manager)
        order = itertools.cycle([(off, on), (on, off)])

        def round_():
            first, second = next(order)
            for side in (first, second):
                side.exit_all()
                side.spawn("py-on" if side is on else "py-off")

        benchmark.pedantic(round_, rounds=PY_ROUNDS, warmup_rounds=10)
        off.exit_all()
        on.exit_all()
        assert registry.get_sample_value("dockyard_workers_started_total") == len(on.spawns)

    raw = baseline("spawn_raw_s", lambda: _raw_create_start_median(docker_client, test_image))
    skip = 10  # warm-up rounds
    spawn_on, spawn_off = median(on.spawns[skip:]), median(off.spawns[skip:])
    exit_on, exit_off = median(on.exits[skip:]), median(off.exits[skip:])
    record(benchmark, "py_spawn_on_s", spawn_on, spawn_off, "s",
           name="metrics: dockyard's Python per spawn, on / off")  # fmt: skip
    record(benchmark, "py_exit_on_s", exit_on, exit_off, "s",
           name="metrics: dockyard's Python per exit, on / off")  # fmt: skip
    record(benchmark, "spawn_added_s", max(0.0, spawn_on - spawn_off), raw, "s",
           name="metrics: added time per spawn / raw create+start", target="<= 0.01")  # fmt: skip
    record(benchmark, "exit_added_s", max(0.0, exit_on - exit_off), raw, "s",
           name="metrics: added time per exit / raw create+start", target="<= 0.01")  # fmt: skip


@pytest.mark.benchmark(group="metrics")
def test_metrics_overhead_real_spawn(benchmark, docker_client, test_image, instance_id):
    """`spawn_worker` until started on the real engine, metrics on against off, alternating."""
    registry = CollectorRegistry()
    config = bench_config(test_image, instance_id, max_workers=2)
    with (
        ContainerManager(config) as off_manager,
        ContainerManager(config, metrics_registry=registry) as on_manager,
    ):
        off = _Side(off_manager, None)
        on = _Side(on_manager, None)
        order = itertools.cycle([(off, on), (on, off)])

        def round_():
            first, second = next(order)
            for side in (first, second):
                side.exit_all(docker_client)
                side.spawn("eng-on" if side is on else "eng-off")

        benchmark.pedantic(round_, rounds=ENGINE_ROUNDS, warmup_rounds=1)
        off.exit_all(docker_client)
        on.exit_all(docker_client)
    on_s, off_s = median(on.spawns[1:]), median(off.spawns[1:])
    record(benchmark, "engine_spawn_on_s", on_s, off_s, "s",
           name="metrics: spawn_worker on the engine, on / off", target="<= 1.01")  # fmt: skip

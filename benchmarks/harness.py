"""What the benchmarks share: managers on the test image, raw docker-py baselines, Docker
event timestamps, process metrics, statistics, and the figures printed at the end.

Every figure is a ratio against a baseline measured in the same run: the machines these
run on are shared and noisy, so an absolute time on its own says little.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import platform
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from dockyard import (
    ActiveWorker,
    ContainerManager,
    RouterConfig,
    WorkerJob,
    WorkerLifecycleListener,
    WorkerOutcome,
)
from dockyard._driver import ContainerSpec

LABEL_PREFIX = "cascade"
"""The default label prefix; the instance_id fixture's leak check looks for it."""

NETWORK = os.environ.get("DOCKYARD_BENCH_NETWORK", "bridge")
"""The workers' network (both sides alike); `none` skips the engine's veth set-up."""

RUN = uuid.uuid4().hex[:6]
"""Container names are global on the engine: each run names its containers apart."""

_job_numbers = itertools.count(1)


def job_id(tag: str) -> str:
    """A job id unique within this run."""
    return f"{tag}-{next(_job_numbers)}"


def bench_config(image: str, instance_id: str, **overrides: Any) -> RouterConfig:
    """A router config for benchmarks: the test image, short grace, this run's names."""
    values: dict[str, Any] = {
        "worker_image": image,
        "router_instance_id": instance_id,
        "container_name_prefix": f"bench-{RUN}-",
        "worker_memory_mb": 64,
        "docker_network": NETWORK,
        "stop_grace_s": 1.0,
        "worker_timeout_s": 600.0,
        "slot_wait_timeout_s": 600.0,
    }
    values.update(overrides)
    return RouterConfig(**values)


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


@dataclass(frozen=True)
class Figure:
    """One line of the closing summary: a measured value against its baseline."""

    name: str
    value: float
    baseline: float
    unit: str
    target: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else math.nan


FIGURES: list[Figure] = []
"""Every ratio recorded in this run, printed by the terminal summary hook."""

BASELINES: dict[str, float] = {}
"""Baselines measured by an earlier benchmark of the same run, by name."""


def baseline(key: str, measure: Callable[[], float]) -> float:
    """A baseline an earlier benchmark of this run measured, or measured now (e.g. under -k)."""
    if key not in BASELINES:
        BASELINES[key] = measure()
    return BASELINES[key]


def record(
    benchmark: Any,
    key: str,
    value: float,
    baseline: float,
    unit: str,
    *,
    name: str,
    target: str = "",
) -> Figure:
    """Put value, baseline and ratio in `extra_info` and in the closing summary."""
    figure = Figure(name=name, value=value, baseline=baseline, unit=unit, target=target)
    benchmark.extra_info[key] = round(value, 6)
    benchmark.extra_info[f"{key}_baseline"] = round(baseline, 6)
    benchmark.extra_info[f"{key}_ratio"] = round(figure.ratio, 4)
    FIGURES.append(figure)
    return figure


# --------------------------------------------------------------------------- machine


def machine_facts(client: docker.DockerClient | None = None) -> dict[str, Any]:
    """nproc, memory, Docker and Python versions: what RESULTS.md names as the machine."""
    facts: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                facts["mem_total_mib"] = int(line.split()[1]) // 1024
    if client is not None:
        with contextlib.suppress(Exception):
            facts["docker"] = client.version().get("Version")
    return facts


def process_status() -> dict[str, int]:
    """This process's resident memory (KiB) and OS thread count, from /proc/self/status."""
    status: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                status[key] = int(value.split()[0])
    return status


class PoolWarnings(logging.Handler):
    """Counts urllib3's "Connection pool is full" warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Connection pool is full" in record.getMessage():
            self.count += 1


@contextlib.contextmanager
def counting_pool_warnings() -> Iterator[PoolWarnings]:
    logger = logging.getLogger("urllib3.connectionpool")
    handler = PoolWarnings()
    previous = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# --------------------------------------------------------------------------- dockyard side


class Recorder(WorkerLifecycleListener):
    """Wall-clock nanoseconds of each lifecycle call, keyed by container id."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.started_ns: dict[str, int] = {}
        self.finished_ns: dict[str, int] = {}
        self.outcomes: dict[str, WorkerOutcome] = {}

    def on_worker_started(self, worker: ActiveWorker) -> None:
        with self._lock:
            self.started_ns[worker.container_id] = time.time_ns()

    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        now = time.time_ns()
        with self._lock:
            self.finished_ns[worker.container_id] = now
            self.outcomes[worker.container_id] = outcome
            self._lock.notify_all()

    def wait_finished(self, count: int, timeout: float = 120.0) -> None:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.finished_ns) >= count, timeout):
                raise TimeoutError(f"{len(self.finished_ns)} of {count} workers finished")


class CallTimer:
    """Times each call of some `DockerGateway` methods of one manager (costs ~1 µs a call)."""

    def __init__(self, manager: ContainerManager, names: Sequence[str]) -> None:
        self._gateway = manager._parts.driver.client
        self._names = tuple(names)
        self.samples: dict[str, list[float]] = defaultdict(list)
        for name in self._names:
            setattr(self._gateway, name, self._wrap(name, getattr(self._gateway, name)))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        samples = self.samples[name]

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                samples.append(time.perf_counter() - start)

        return timed

    def clear(self) -> None:
        for samples in self.samples.values():
            samples.clear()

    def close(self) -> None:
        for name in self._names:
            with contextlib.suppress(AttributeError):
                delattr(self._gateway, name)


class InFlight:
    """The most calls of some `DockerGateway` methods of one manager in flight at once."""

    def __init__(self, manager: ContainerManager, names: Sequence[str]) -> None:
        self._gateway = manager._parts.driver.client
        self._names = tuple(names)
        self._lock = threading.Lock()
        self._now = 0
        self.peak = 0
        for name in self._names:
            setattr(self._gateway, name, self._wrap(getattr(self._gateway, name)))

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self._now += 1
                self.peak = max(self.peak, self._now)
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._now -= 1

        return counted

    def close(self) -> None:
        for name in self._names:
            with contextlib.suppress(AttributeError):
                delattr(self._gateway, name)


SHORT_CALLS = (
    "create",
    "start",
    "inspect",
    "logs_tail",
    "remove",
    "wait_removed",
    "stop",
    "kill",
    "commit",
    "image_inspect",
)
"""The gateway methods that go through the short-call client (not the wait client)."""


def capture_spec(manager: ContainerManager, job: WorkerJob) -> tuple[ContainerSpec, ActiveWorker]:
    """Spawn `job`, keeping the `ContainerSpec` dockyard sent, so a baseline can send it too."""
    gateway = manager._parts.driver.client
    specs: list[ContainerSpec] = []
    original = gateway.create

    def create(spec: ContainerSpec) -> str:
        specs.append(spec)
        return original(spec)

    gateway.create = create  # type: ignore[method-assign]
    try:
        worker = manager.spawn_worker(job)
    finally:
        del gateway.create
    return specs[-1], worker


def dockyard_spec(
    client: docker.DockerClient, config: RouterConfig, command: Sequence[str]
) -> ContainerSpec:
    """The spec of one dockyard spawn of `command` under `config` (the worker is ended)."""
    with ContainerManager(config) as manager:
        spec, worker = capture_spec(
            manager, WorkerJob(id=job_id("spec"), type="bench", command=list(command))
        )
        end_worker(manager, client, worker)
    return spec


def end_worker(
    manager: ContainerManager, client: docker.DockerClient, worker: ActiveWorker
) -> WorkerOutcome:
    """SIGKILL a worker behind dockyard's back and wait for its outcome (cleanup only)."""
    with contextlib.suppress(docker.errors.APIError):
        client.api.kill(worker.container_id)
    return manager.wait_for_worker(worker.job_id, timeout=60)


# --------------------------------------------------------------------------- raw docker-py


class RawDocker:
    """The same container as dockyard's spec, through docker-py's low-level API only."""

    def __init__(
        self,
        api: docker.APIClient,
        spec: ContainerSpec,
        *,
        auto_remove: bool | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.api = api
        self.spec = spec
        self.auto_remove = spec.auto_remove if auto_remove is None else auto_remove
        self.command = list(command if command is not None else spec.command or []) or None

    def create(self, name: str) -> str:
        spec = self.spec
        host_config = self.api.create_host_config(
            mem_limit=spec.memory_bytes,
            memswap_limit=spec.memory_bytes,
            network_mode=spec.network,
            auto_remove=self.auto_remove,
            pids_limit=spec.pids_limit,
            security_opt=["no-new-privileges:true"] if spec.no_new_privileges else None,
        )
        created = self.api.create_container(
            image=spec.image,
            name=name,
            command=self.command,
            environment=[f"{k}={v}" for k, v in spec.env.items()],
            labels=dict(spec.labels),
            host_config=host_config,
            detach=True,
        )
        return str(created["Id"])

    def create_start(self, name: str) -> str:
        container_id = self.create(name)
        self.api.start(container_id)
        return container_id

    def run(self, name: str) -> int:
        """create → start → wait → remove, the plain docker-py way."""
        container_id = self.create_start(name)
        code = int(self.api.wait(container_id)["StatusCode"])
        self.api.remove_container(container_id, force=True)
        return code

    def remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            try:
                self.api.remove_container(container_id, force=True)
            except docker.errors.APIError as err:
                if err.status_code != 409:  # 409: auto-removal already under way
                    raise


def raw_name(tag: str) -> str:
    return f"bench-{RUN}-raw-{job_id(tag)}"


# --------------------------------------------------------------------------- engine events


class DockerEvents:
    """One router instance's container events, with the engine's own nanosecond stamps."""

    def __init__(
        self, client: docker.DockerClient, instance_id: str, actions: Sequence[str]
    ) -> None:
        self._stream = client.events(
            decode=True,
            filters={
                "type": "container",
                "event": list(actions),
                "label": f"{LABEL_PREFIX}.router.instance={instance_id}",
            },
        )
        self._cond = threading.Condition()
        self.times: dict[tuple[str, str], int] = {}
        self._thread = threading.Thread(target=self._read, name="bench-events", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # ends when the stream is closed
            for event in self._stream:
                key = (str(event.get("Action") or event.get("status")), str(event.get("id")))
                with self._cond:
                    self.times.setdefault(key, int(event["timeNano"]))
                    self._cond.notify_all()

    def wait_for(self, action: str, ids: Sequence[str], timeout: float = 30.0) -> dict[str, int]:
        """The stamps of `action` for every container in `ids` (TimeoutError if missing)."""
        with self._cond:
            ready = self._cond.wait_for(
                lambda: all((action, i) in self.times for i in ids), timeout
            )
            if not ready:
                missing = [i[:12] for i in ids if (action, i) not in self.times]
                raise TimeoutError(f"no {action} event for {missing}")
            return {i: self.times[(action, i)] for i in ids}

    def close(self) -> None:
        self._stream.close()
        self._thread.join(5)

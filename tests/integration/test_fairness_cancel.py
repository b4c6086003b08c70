"""Project caps, priorities and cancellation on the real engine."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker

from dockyard import (
    ActiveWorker,
    ContainerManager,
    ProjectConfig,
    WorkerJob,
    WorkerLifecycleListener,
    WorkerOutcome,
)
from dockyard.testing import RecordingReporter
from support.engine import is_podman
from support.hosts import StaticProjects

WAIT_S = 120.0
CANCELLED_AT_ONCE = 200
# Podman runs a cleanup process for each container that exits (conmon's exit command), and
# its teardowns grow faster than their number: on two cores raw docker-py's SIGTERM, SIGKILL
# after 3 s, of 100 auto-removed containers ends 14 s later, of 200 33 s later. With 200,
# dockyard's last outcome came at about 50 s, and once, in a CI run, Podman's API left kill
# and inspect calls unanswered past their 60 s. Podman is given 100: its limit here.
CANCELLED_AT_ONCE_PODMAN = 100


class Running(WorkerLifecycleListener):
    """Starts, outcomes, and the most workers of each project running at once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.started: list[str] = []
        self.started_at: dict[str, float] = {}
        self.outcomes: dict[str, WorkerOutcome] = {}
        self.finished_at: dict[str, float] = {}
        self.running: Counter[str | None] = Counter()
        self.peak: Counter[str | None] = Counter()

    def on_worker_started(self, worker: ActiveWorker) -> None:
        with self._cond:
            self.started.append(worker.job_id)
            self.started_at[worker.job_id] = time.monotonic()
            self.running[worker.project_id] += 1
            project = worker.project_id
            self.peak[project] = max(self.peak[project], self.running[project])
            self._cond.notify_all()

    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        with self._cond:
            self.outcomes[worker.job_id] = outcome
            self.finished_at[worker.job_id] = time.monotonic()
            self.running[worker.project_id] -= 1
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, timeout), (self.started, self.outcomes)


def spawn_all(manager: ContainerManager, jobs: list[WorkerJob]) -> list[threading.Thread]:
    threads = [threading.Thread(target=manager.spawn_worker, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    return threads


def running_of(client: docker.DockerClient, instance_id: str, project: str) -> int:
    labels = [f"cascade.router.instance={instance_id}", f"cascade.project.id={project}"]
    return len(client.api.containers(filters={"label": labels}))


def test_a_capped_project_leaves_room_for_others(
    make_manager: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
) -> None:
    listener = Running()
    manager = make_manager(
        max_workers=4, listener=listener, projects=StaticProjects(ProjectConfig("A", max_workers=2))
    )
    sleep = ["sleep", "1.5"]
    a_jobs = [WorkerJob(f"a{n}-{instance_id}", "t", {}, "A", command=sleep) for n in range(10)]
    b_jobs = [WorkerJob(f"b{n}-{instance_id}", "t", {}, "B", command=sleep) for n in range(2)]
    threads = spawn_all(manager, a_jobs)
    listener.wait_for(lambda: len(listener.started) == 2)
    deadline = time.monotonic() + 30
    while manager._parts.slots.waiting < 8:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    queued_at = time.monotonic()
    threads += spawn_all(manager, b_jobs)

    # B's start at once, A's queue notwithstanding.
    listener.wait_for(lambda: all(j.id in listener.started_at for j in b_jobs), timeout=30)
    b_started = max(listener.started_at[j.id or ""] for j in b_jobs)
    assert b_started - queued_at < 5.0
    assert sum(1 for j in a_jobs if j.id in listener.started_at) <= 4  # A mostly still queued
    # A never runs more than 2 at once: on the engine, and as the listener saw it.
    peak_on_engine = 0
    while len(listener.outcomes) < 12:
        peak_on_engine = max(peak_on_engine, running_of(docker_client, instance_id, "A"))
        assert time.monotonic() - queued_at < WAIT_S
        time.sleep(0.02)
    for thread in threads:
        thread.join(WAIT_S)
    assert peak_on_engine == 2
    assert listener.peak["A"] == 2 and listener.peak["B"] == 2
    assert {o.status for o in listener.outcomes.values()} == {"succeeded"}


def test_a_high_priority_job_queued_last_starts_at_the_next_free_slot(
    make_manager: Callable[..., ContainerManager], instance_id: str
) -> None:
    listener = Running()
    manager = make_manager(max_workers=1, listener=listener)
    first = WorkerJob(f"first-{instance_id}", "t", {}, command=["sleep", "1"])
    low = [WorkerJob(f"low{n}-{instance_id}", "t", {}, command=["true"]) for n in range(3)]
    urgent = WorkerJob(f"urgent-{instance_id}", "t", {}, command=["true"], priority=5)
    manager.spawn_worker(first)
    threads = []
    for n, job in enumerate([*low, urgent], start=1):
        threads += spawn_all(manager, [job])
        deadline = time.monotonic() + 10
        while manager._parts.slots.waiting < n:
            assert time.monotonic() < deadline
            time.sleep(0.005)
    for thread in threads:
        thread.join(WAIT_S)
    listener.wait_for(lambda: len(listener.outcomes) == 5)
    assert listener.started == [first.id, urgent.id, *(j.id for j in low)]


def test_a_cancelled_job_ends_cancelled_within_the_grace(
    make_manager: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
) -> None:
    listener = Running()
    reporter = RecordingReporter()
    manager = make_manager(stop_grace_s=2, listener=listener, reporter=reporter)
    # `sleep` as PID 1 ignores SIGTERM: the kill after the grace ends it.
    job_id = f"cancel-{instance_id}"
    job = WorkerJob(job_id, "t", {}, command=["sleep", "300"])
    worker = manager.spawn_worker(job)
    started = time.monotonic()
    assert manager.cancel_worker(job_id) is True
    returned_in = time.monotonic() - started
    outcome = manager.wait_for_worker(job_id, timeout=WAIT_S)
    ended_in = listener.finished_at[job_id] - started
    assert returned_in < 0.5, returned_in
    assert outcome.status == "cancelled", outcome
    assert outcome.exit_code == 137  # killed after the grace
    assert ended_in < 2 + 3.0, ended_in
    assert reporter.reports == []  # no Sentry event for a cancel
    assert not [c for c in docker_client.api.containers(all=True) if c["Id"] == worker.container_id]


def test_many_running_workers_cancelled_from_one_thread(
    make_manager: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
) -> None:
    podman = is_podman(docker_client)
    count = CANCELLED_AT_ONCE_PODMAN if podman else CANCELLED_AT_ONCE
    grace = 3.0
    listener = Running()
    manager = make_manager(
        max_workers=count,
        stop_grace_s=grace,
        worker_memory_mb=16,
        launch_concurrency=16,
        slot_wait_timeout_s=600,
        listener=listener,
    )
    sleep = ["sleep", "600"]
    jobs = [WorkerJob(f"w{n}-{instance_id}", "t", {}, command=sleep) for n in range(count)]
    with ThreadPoolExecutor(32) as pool:
        workers: list[Any] = list(pool.map(manager.spawn_worker, jobs))
    assert len(workers) == count == manager.get_active_worker_count()

    # The engine's side, streamed live (it replays only its last 256 events): when it saw
    # each stop begin (its SIGTERM), each container die and its removal, by its own clock.
    # Docker's `kill` events name their signal; Podman's name none, so there a container's
    # first `kill` is its stop signal (dockyard sends it: Podman's stop calls take turns);
    # Podman's removal event is `remove`, Docker's `destroy`.
    at: dict[str, list[float]] = {"sigterm": [], "die": [], "destroy": []}
    stream = docker_client.api.events(
        filters={"type": "container", "label": f"cascade.router.instance={instance_id}"},
        decode=True,
    )

    def collect() -> None:
        seen: dict[str, set[str]] = {action: set() for action in at}
        signalled: set[str] = set()
        for event in stream:
            action, container = event.get("Action"), event["Actor"]["ID"]
            if action == "kill":
                signal = event["Actor"]["Attributes"].get("signal")
                if signal == "15" or (podman and container not in signalled):
                    action = "sigterm"  # a stop's first signal
                signalled.add(container)
            elif action == "remove":
                action = "destroy"
            # Each container once: Podman now and then sends a second `die` for one.
            if action in at and container not in seen[action]:
                seen[action].add(container)
                at[action].append(event["timeNano"] / 1e9)
            if len(at["destroy"]) >= count:
                return

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    time.sleep(0.5)  # the stream is connected

    started_wall = time.time()
    started = time.monotonic()
    slowest_call_s = 0.0
    for job in jobs:
        call_started = time.monotonic()
        assert manager.cancel_worker(job.id or "") is True
        slowest_call_s = max(slowest_call_s, time.monotonic() - call_started)
    cancel_calls_s = time.monotonic() - started
    listener.wait_for(lambda: len(listener.outcomes) == count, timeout=WAIT_S)
    ends = sorted(t - started for t in listener.finished_at.values())
    collector.join(30)
    stream.close()
    at = {action: [t - started_wall for t in times] for action, times in at.items()}
    sigterms, dies, destroys = sorted(at["sigterm"]), sorted(at["die"]), sorted(at["destroy"])
    print(
        f"\n{count} cancels from one thread, grace {grace:g}s: the calls took "
        f"{cancel_calls_s:.3f}s (slowest {slowest_call_s * 1000:.1f}ms); SIGTERMs "
        f"{sigterms[0]:.2f}..{sigterms[-1]:.2f}s, engine deaths "
        f"{dies[0]:.2f}..{dies[-1]:.2f}s, removals "
        f"{destroys[0]:.2f}..{destroys[-1]:.2f}s; outcomes {ends[0]:.2f}s (first), "
        f"{ends[len(ends) // 2]:.2f}s (median), {ends[-1]:.2f}s (last)"
    )
    statuses = Counter(o.status for o in listener.outcomes.values())
    assert statuses == {"cancelled": count}
    # Never a grace per call: each returns as soon as its stop is handed to a timer thread
    # (milliseconds, more on a loaded machine).
    assert slowest_call_s < 0.5, slowest_call_s
    assert cancel_calls_s < grace, cancel_calls_s
    assert len(sigterms) == count and len(dies) == count and len(destroys) == count
    # Every stop began at once, by the engine's clock: all the SIGTERMs were sent within
    # the first grace or so (200 stops one grace after another would take 600 s, and
    # through a pool of 16 threads 39 s), and no worker died before its grace was up.
    # How long the engine then takes to tear 200 containers down is its own affair (here
    # 8 to 16 s after the kills, on Docker 20.10 and 28 alike, raw docker-py as dockyard);
    # the last outcome follows the last removal closely. Podman runs the OCI runtime for
    # each signal (`runc kill`; 20-40 a second on two loaded cores here): its SIGTERMs
    # take that long on top (its own stop calls, one grace after another in a pool of 7,
    # spread 200 of them over 85 s).
    signalling_s = count / 10 if podman else 0.0
    assert sigterms[-1] < 2 * grace + signalling_s, sigterms[-1]
    assert dies[0] >= grace - 0.5, dies[0]
    assert ends[-1] - destroys[-1] < 3.0, (ends[-1], destroys[-1])
    labels = [f"cascade.router.instance={instance_id}"]
    assert docker_client.api.containers(all=True, filters={"label": labels}) == []

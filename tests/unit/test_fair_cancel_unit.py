"""Project caps, priorities and cancellation through the manager, on the fake engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from dockyard import (
    ActiveWorker,
    ContainerManager,
    NoWorkerSlotError,
    ProjectConfig,
    RouterConfig,
    WorkerCancelledError,
    WorkerJob,
    WorkerLifecycleListener,
    WorkerOutcome,
)
from dockyard._prometheus import outcome_reason
from dockyard.testing import DEFAULT_IMAGE, FakeDockerAPI, RecordingReporter
from support.hosts import StaticProjects


class Finished(WorkerLifecycleListener):
    def __init__(self) -> None:
        self.started: list[str] = []
        self.outcomes: list[WorkerOutcome] = []

    def on_worker_started(self, worker: ActiveWorker) -> None:
        self.started.append(worker.job_id)

    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        self.outcomes.append(outcome)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


class Rig:
    def __init__(self, projects: StaticProjects | None = None, **overrides: Any) -> None:
        self.api = FakeDockerAPI()
        self.reporter = RecordingReporter()
        self.listener = Finished()
        settings: dict[str, Any] = {
            "worker_image": DEFAULT_IMAGE,
            "router_instance_id": "fair-unit",
            "stop_grace_s": 1,
            "slot_wait_timeout_s": 5,
            "wait_retry_window_s": 0.5,
        }
        settings.update(overrides)
        self.manager = ContainerManager(
            RouterConfig(**settings),
            docker_client=self.api,  # type: ignore[arg-type]
            reporter=self.reporter,
            listener=self.listener,
            projects=projects,
        )
        self.results: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []

    def spawn_in_background(
        self, job: WorkerJob, slot_timeout: float | None = None, *, queued: bool = True
    ) -> None:
        """Spawn on a thread; returns once the spawn is in the slot line (or done)."""
        assert job.id is not None
        before = self.manager._parts.slots.waiting

        def run() -> None:
            try:
                self.results[job.id] = self.manager.spawn_worker(job, slot_timeout=slot_timeout)
            except BaseException as err:
                self.results[job.id] = err

        thread = threading.Thread(target=run)
        thread.start()
        self._threads.append(thread)
        if queued:
            wait_until(lambda: self.manager._parts.slots.waiting > before or job.id in self.results)

    def exit(self, worker: ActiveWorker, code: int = 0) -> None:
        self.api.exit(worker.container_id, code)

    def close(self) -> None:
        self.manager.close()
        for thread in self._threads:
            thread.join(10)


@pytest.fixture
def rigs() -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(projects: StaticProjects | None = None, **overrides: Any) -> Rig:
        made.append(Rig(projects, **overrides))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


def job(job_id: str, project: str | None = None, priority: int = 0) -> WorkerJob:
    return WorkerJob(job_id, "trello", {}, project_id=project, priority=priority)


# --------------------------------------------------------------------------- caps


def test_the_project_cap_wins_over_the_router_default(rigs: Callable[..., Rig]) -> None:
    rig = rigs(
        StaticProjects(ProjectConfig("A", max_workers=1)), max_workers=5, max_workers_per_project=2
    )
    m = rig.manager
    m.spawn_worker(job("a1", "A"))
    with pytest.raises(NoWorkerSlotError) as caught:
        m.spawn_worker(job("a2", "A"), slot_timeout=0.05)
    assert (caught.value.limit, caught.value.project_id, caught.value.project_cap) == (
        "project",
        "A",
        1,
    )
    m.spawn_worker(job("b1", "B"))  # B has no config of its own: the router's cap of 2
    m.spawn_worker(job("b2", "B"))
    with pytest.raises(NoWorkerSlotError) as caught:
        m.spawn_worker(job("b3", "B"), slot_timeout=0.05)
    assert caught.value.project_cap == 2
    m.spawn_worker(job("free-1"))  # no project: the router cap only
    m.spawn_worker(job("free-2"))
    with pytest.raises(NoWorkerSlotError) as caught:
        m.spawn_worker(job("free-3"), slot_timeout=0.05)
    assert caught.value.limit == "router"
    assert m.get_active_worker_count() == 5


def test_a_capped_project_does_not_block_others(rigs: Callable[..., Rig]) -> None:
    rig = rigs(max_workers=2, max_workers_per_project=1)
    a1 = rig.manager.spawn_worker(job("a1", "A"))
    b1 = rig.manager.spawn_worker(job("b1", "B"))
    rig.spawn_in_background(job("a2", "A"))
    rig.spawn_in_background(job("b2", "B"))
    rig.exit(b1)
    wait_until(lambda: "b2" in rig.results)
    assert isinstance(rig.results["b2"], ActiveWorker)  # A's waiter, first in line, is capped
    assert "a2" not in rig.results
    rig.exit(a1)
    wait_until(lambda: "a2" in rig.results)
    assert isinstance(rig.results["a2"], ActiveWorker)


def test_a_high_priority_job_queued_last_starts_next(rigs: Callable[..., Rig]) -> None:
    rig = rigs(max_workers=1)
    first = rig.manager.spawn_worker(job("first"))
    for name in ("low-1", "low-2"):
        rig.spawn_in_background(job(name))
    rig.spawn_in_background(job("urgent", priority=10))
    rig.exit(first)
    wait_until(lambda: len(rig.listener.started) == 2)
    assert rig.listener.started == ["first", "urgent"]


def test_adopted_workers_count_against_their_project(rigs: Callable[..., Rig]) -> None:
    rig = rigs(max_workers=4, max_workers_per_project=1)
    worker = rig.manager.spawn_worker(job("a1", "A"))
    rig.manager.detach_all()
    assert rig.manager._parts.slots.in_use == 0
    # A second manager on the same engine adopts the running worker, over capacity if need be.
    rig.manager.close()
    second = ContainerManager(
        rig.manager.config,
        docker_client=rig.api,
        reporter=RecordingReporter(),  # type: ignore[arg-type]
    )
    try:
        rig.api.containers = lambda all=False, filters=None: [  # type: ignore[method-assign]
            {
                "Id": worker.container_id,
                "Labels": dict(rig.api.containers_by_id[worker.container_id].labels),
                "State": "running",
            }
        ]
        assert [w.job_id for w in second.adopt_workers()] == ["a1"]
        assert second._parts.slots.in_use_by("A") == 1
        with pytest.raises(NoWorkerSlotError) as caught:
            second.spawn_worker(job("a2", "A"), slot_timeout=0.05)
        assert caught.value.limit == "project"
        second.spawn_worker(job("b1", "B"))
    finally:
        second.close()


# --------------------------------------------------------------------------- cancellation


def test_cancel_returns_at_once_and_ends_cancelled(rigs: Callable[..., Rig]) -> None:
    rig = rigs()
    stopping = threading.Event()

    def slow_stop(container_id: str) -> None:  # the engine's stop takes its grace
        stopping.set()
        time.sleep(0.8)

    rig.api.before_stop = slow_stop
    worker = rig.manager.spawn_worker(job("j"))
    started = time.monotonic()
    assert rig.manager.cancel_worker("j") is True
    assert time.monotonic() - started < 0.2
    assert stopping.wait(5)
    outcome = rig.manager.wait_for_worker("j", timeout=5)
    assert outcome.status == "cancelled"
    assert outcome.exit_code == 137
    assert outcome.describe().startswith("Worker cancelled (exit code 137)")
    assert rig.listener.outcomes == [outcome]
    assert rig.reporter.reports == []  # no Sentry event: the host asked for it
    assert rig.api.calls_of("stop") == [(worker.container_id, 1)]
    assert rig.manager.cancel_worker("j") is False  # over
    assert rig.manager._parts.slots.in_use == 0


def test_a_worker_that_exited_first_keeps_its_outcome(rigs: Callable[..., Rig]) -> None:
    rig = rigs()
    worker = rig.manager.spawn_worker(job("j"))
    rig.exit(worker, 3)
    outcome = rig.manager.wait_for_worker("j", timeout=5)
    assert rig.manager.cancel_worker("j") is False
    assert outcome.status == "failed"


def test_an_exit_while_the_cancel_is_under_way_stays_cancelled(rigs: Callable[..., Rig]) -> None:
    rig = rigs()
    rig.api.stop_exits = False
    exited = threading.Event()

    def exit_during_stop(container_id: str) -> None:
        rig.api.exit(container_id, 1)  # a failure exit that lands inside the stop
        exited.set()

    rig.api.before_stop = exit_during_stop
    rig.manager.spawn_worker(job("j"))
    assert rig.manager.cancel_worker("j") is True
    outcome = rig.manager.wait_for_worker("j", timeout=5)
    assert exited.is_set()
    assert (outcome.status, outcome.exit_code) == ("cancelled", 1)
    assert rig.reporter.reports == []  # not a worker_exit failure either
    time.sleep(0.1)
    assert [o.status for o in rig.listener.outcomes] == ["cancelled"]


def test_cancel_after_a_timeout_kill_stays_timed_out(rigs: Callable[..., Rig]) -> None:
    rig = rigs()
    rig.api.stop_exits = False
    rig.manager.spawn_worker(job("j"))
    assert rig.manager.kill_worker("j") is True  # kill_worker keeps its meaning
    assert rig.manager.cancel_worker("j") is True  # stopped again
    wait_until(lambda: len(rig.api.calls_of("stop")) == 2)
    rig.api.exit(rig.api.only_container().id, 137)
    assert rig.manager.wait_for_worker("j", timeout=5).status == "timed_out"


def test_unknown_jobs_cannot_be_cancelled(rigs: Callable[..., Rig]) -> None:
    assert rigs().manager.cancel_worker("never") is False


def test_a_spawn_waiting_for_its_slot_is_cancelled(rigs: Callable[..., Rig]) -> None:
    rig = rigs(max_workers=1)
    first = rig.manager.spawn_worker(job("first"))
    rig.spawn_in_background(job("second"), slot_timeout=30)
    started = time.monotonic()
    assert rig.manager.cancel_worker("second") is True
    wait_until(lambda: "second" in rig.results)
    assert time.monotonic() - started < 1
    err = rig.results["second"]
    assert isinstance(err, WorkerCancelledError) and err.job_id == "second"
    assert rig.manager._parts.slots.waiting == 0
    with pytest.raises(KeyError):
        rig.manager.wait_for_worker("second", timeout=1)
    rig.exit(first)
    rig.manager.wait_for_worker("first", timeout=5)
    rig.manager.spawn_worker(job("second"), slot_timeout=5)  # the id is free again


def test_an_exit_not_yet_handled_keeps_its_outcome_over_a_cancel(
    rigs: Callable[..., Rig],
) -> None:
    rig = rigs()
    worker = rig.manager.spawn_worker(job("j"))
    record = rig.manager._parts.registry.get("j")
    assert record is not None
    recorded, go_on = threading.Event(), threading.Event()
    record_exit = record.record_exit

    def record_then_hold() -> bool:  # the exit is in; its handling has not run yet
        done = record_exit()
        recorded.set()
        go_on.wait(5)
        return done

    record.record_exit = record_then_hold  # type: ignore[method-assign]
    rig.exit(worker, 3)
    assert recorded.wait(5)
    assert rig.manager.cancel_worker("j") is False  # it exited first: nothing to stop
    go_on.set()
    outcome = rig.manager.wait_for_worker("j", timeout=5)
    assert (outcome.status, outcome.exit_code) == ("failed", 3)
    assert rig.api.calls_of("stop") == []
    assert [report.source for report in rig.reporter.reports] == ["worker_exit"]


def test_a_cancel_just_before_the_spawn_joins_the_slot_line_is_not_lost(
    rigs: Callable[..., Rig],
) -> None:
    rig = rigs(max_workers=1)
    first = rig.manager.spawn_worker(job("first"))
    gate = rig.manager._parts.slots
    lease = gate.lease

    def cancel_then_lease(*args: Any, **kwargs: Any) -> Any:
        # The job id is reserved, the spawn not in the slot line yet: the cancel lands here.
        assert rig.manager.cancel_worker("second") is True
        return lease(*args, **kwargs)

    gate.lease = cancel_then_lease  # type: ignore[method-assign]
    started = time.monotonic()
    rig.spawn_in_background(job("second"), slot_timeout=30, queued=False)
    wait_until(lambda: "second" in rig.results)
    assert time.monotonic() - started < 1  # not after the slot timeout
    err = rig.results["second"]
    assert isinstance(err, WorkerCancelledError) and err.job_id == "second"
    assert gate.waiting == 0
    gate.lease = lease  # type: ignore[method-assign]
    rig.exit(first)
    rig.manager.wait_for_worker("first", timeout=5)
    assert gate.in_use == 0
    rig.manager.spawn_worker(job("second"), slot_timeout=5)  # the id is free again


def test_a_spawn_cancelled_while_it_launches_is_cancelled_once_it_runs(
    rigs: Callable[..., Rig],
) -> None:
    rig = rigs()
    creating = threading.Event()
    go_on = threading.Event()

    def hold_create() -> None:
        creating.set()
        go_on.wait(5)

    rig.api.before_create = hold_create
    rig.spawn_in_background(job("j"), queued=False)
    assert creating.wait(5)
    assert rig.manager.cancel_worker("j") is True
    go_on.set()
    wait_until(lambda: "j" in rig.results)
    assert isinstance(rig.results["j"], ActiveWorker)
    assert rig.manager.wait_for_worker("j", timeout=5).status == "cancelled"
    assert rig.manager._parts.registry.record("j") is None  # the mark ended with its record


def test_the_cancelled_status_has_a_metrics_reason() -> None:
    assert outcome_reason(WorkerOutcome("j", "cancelled", exit_code=137)) == "cancelled"
    assert WorkerOutcome("j", "cancelled").describe() == "Worker cancelled"


def test_a_cancel_is_counted_under_its_own_status_and_reason() -> None:
    registry = CollectorRegistry()
    api = FakeDockerAPI()
    config = RouterConfig(
        worker_image=DEFAULT_IMAGE, router_instance_id="fair-metrics", stop_grace_s=1
    )
    labels = {"status": "cancelled", "reason": "cancelled"}
    with ContainerManager(
        config,
        docker_client=api,  # type: ignore[arg-type]
        reporter=RecordingReporter(),
        metrics_registry=registry,
    ) as manager:
        assert registry.get_sample_value("dockyard_worker_outcomes_total", labels) == 0
        manager.spawn_worker(job("j"))
        assert manager.cancel_worker("j") is True
        assert manager.wait_for_worker("j", timeout=5).status == "cancelled"
        assert registry.get_sample_value("dockyard_worker_outcomes_total", labels) == 1
        failed = {"status": "failed", "reason": "exit_signal"}
        assert registry.get_sample_value("dockyard_worker_outcomes_total", failed) == 0

"""The worker registry (one outcome each) and the worker's state machine.

The slot gate has its tests in test_slots.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError
from datetime import UTC, datetime
from typing import Any

import pytest

from dockyard import ActiveWorker, DuplicateJobError, WorkerLifecycleListener, WorkerOutcome
from dockyard._listener import SafeListener
from dockyard._registry import WorkerRegistry
from dockyard._tracker import Phase, TrackedWorker
from support.listeners import ListenerRecorder

# --------------------------------------------------------------------------- registry


class Releases:
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1


def tracked(job_id: str, release: Callable[[], None] | None = None) -> TrackedWorker:
    now = datetime.now(UTC)
    worker = ActiveWorker(job_id, "c" * 64, f"w-{job_id}", "img", now, now)
    record = TrackedWorker(job_id, worker.container_name)
    record.take_slot(release or Releases())
    record.begin(worker)
    return record


def registry(history: int = 100) -> tuple[WorkerRegistry, ListenerRecorder]:
    listener = ListenerRecorder()
    return WorkerRegistry(SafeListener(listener), history), listener


def test_reserve_refuses_an_active_or_spawning_id() -> None:
    reg, _ = registry()
    reg.reserve("a")
    with pytest.raises(DuplicateJobError):
        reg.reserve("a")  # still spawning
    reg.register(tracked("a"))
    with pytest.raises(DuplicateJobError):
        reg.reserve("a")  # running
    b = reg.reserve("b")
    reg.unreserve(b)
    reg.unreserve(b)  # twice does no harm
    reg.reserve("b")


def test_settle_delivers_exactly_once() -> None:
    reg, listener = registry()
    releases = Releases()
    t = tracked("a", releases)
    reg.reserve("a")
    reg.register(t)
    first = WorkerOutcome("a", "succeeded", exit_code=0)

    assert reg.settle(t, first) is True
    assert reg.settle(t, WorkerOutcome("a", "failed", exit_code=1)) is False

    assert listener.finished == [("a", first)]
    assert releases.count == 1
    assert reg.future("a").result(0) == first
    assert reg.count() == 0
    reg.reserve("a")  # finished: the id is free again


def test_concurrent_settles_deliver_one_outcome() -> None:
    for _ in range(50):
        reg, listener = registry()
        releases = Releases()
        t = tracked("a", releases)
        reg.register(t)
        barrier = threading.Barrier(8)
        wins: list[bool] = []

        def settle(code: int, t: TrackedWorker = t, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            wins.append(reg.settle(t, WorkerOutcome("a", "failed", exit_code=code)))

        threads = [threading.Thread(target=settle, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert wins.count(True) == 1
        assert len(listener.finished) == 1
        assert releases.count == 1
        assert reg.future("a").result(0) == listener.finished[0][1]


def test_unknown_and_forgotten_ids_raise_key_error() -> None:
    reg, _ = registry(history=2)
    with pytest.raises(KeyError):
        reg.future("never")
    for job_id in ("a", "b", "c"):
        t = tracked(job_id)
        reg.register(t)
        reg.settle(t, WorkerOutcome(job_id, "succeeded", exit_code=0))
    with pytest.raises(KeyError):
        reg.future("a")  # the oldest outcome went beyond the history bound
    assert reg.future("c").result(0).job_id == "c"


def test_a_new_run_replaces_the_remembered_outcome() -> None:
    reg, _ = registry()
    old = tracked("a")
    reg.register(old)
    reg.settle(old, WorkerOutcome("a", "failed", exit_code=1))
    new = tracked("a")
    reg.register(new)
    assert reg.future("a") is new.future
    assert not reg.future("a").done()


def test_kill_and_exit_marks() -> None:
    reg, _ = registry()
    t = tracked("a")
    reg.register(t)
    assert t.begin_kill() is True
    assert t.begin_kill() is False  # the kill path runs once
    assert t.kill_began is not None  # the exit that follows is the kill's
    assert t.record_exit() is True
    assert t.phase is Phase.EXITED

    other = tracked("b")
    reg.register(other)
    assert other.record_exit() is True
    assert other.kill_began is None
    assert other.begin_kill() is False  # too late to kill what exited


def test_detach_all_forgets_without_outcome() -> None:
    reg, listener = registry()
    releases = Releases()
    timer = threading.Timer(60, lambda: None)
    timer.start()

    class Wait:
        closed = False

        def close(self) -> None:
            self.closed = True

    t = tracked("a", releases)
    assert t.set_timer(timer)
    wait = Wait()
    assert t.set_exit_wait(wait)  # type: ignore[arg-type]
    reg.register(t)

    detached = reg.detach_all()

    assert detached == [t]
    assert reg.count() == 0
    assert releases.count == 1
    assert wait.closed
    timer.join(2)
    assert not timer.is_alive()
    assert reg.settle(t, WorkerOutcome("a", "succeeded", exit_code=0)) is False
    assert t.begin_kill() is False
    assert listener.finished == []
    with pytest.raises(CancelledError):
        t.future.result(0)


def test_listener_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(WorkerLifecycleListener):
        def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
            raise RuntimeError("host bug")

    reg = WorkerRegistry(SafeListener(Broken()), 10)
    t = tracked("a")
    reg.register(t)
    caplog.set_level(logging.WARNING, logger="dockyard")
    assert reg.settle(t, WorkerOutcome("a", "succeeded", exit_code=0)) is True
    assert t.future.result(0).status == "succeeded"
    (record,) = [r for r in caplog.records if r.name.startswith("dockyard")]
    # A warning without the traceback: a host's logging integration turns an error with
    # exc_info into an event carrying every frame's locals (the report goes to Sentry).
    assert record.levelno == logging.WARNING and record.exc_info is None
    hook: Any = getattr(record, "hook", None)
    assert hook == "on_worker_finished"


# --------------------------------------------------------------------------- outcomes


@pytest.mark.parametrize(
    ("outcome", "text"),
    [
        (
            WorkerOutcome("j", "failed", 2, False),
            "Worker boot failed (exit code 2) · OOMKilled=false",
        ),
        (WorkerOutcome("j", "failed", 1, None), "Worker crashed with exit code 1"),
        (
            WorkerOutcome("j", "failed", 137, True),
            "Worker crashed with exit code 137 · OOMKilled=true",
        ),
        (
            WorkerOutcome("j", "failed", 1, False, "oci runtime error"),
            'Worker crashed with exit code 1 · OOMKilled=false · reason="oci runtime error"',
        ),
        (WorkerOutcome("j", "failed", 1, None, ""), "Worker crashed with exit code 1"),
        (
            WorkerOutcome("j", "succeeded", 0, False),
            "Worker completed (exit code 0) · OOMKilled=false",
        ),
        (WorkerOutcome("j", "timed_out"), "Worker timed out"),
        (
            WorkerOutcome("j", "timed_out", 137, False),
            "Worker timed out (exit code 137) · OOMKilled=false",
        ),
        (WorkerOutcome("j", "lost", error="container is gone"), "Worker lost: container is gone"),
    ],
)
def test_describe(outcome: WorkerOutcome, text: str) -> None:
    assert outcome.describe() == text


def test_outcome_json_round_trip() -> None:
    outcome = WorkerOutcome("j", "failed", 3, True, "boom", 1.25, None)
    assert WorkerOutcome.from_json(outcome.to_json()) == outcome
    assert outcome.succeeded is False
    assert WorkerOutcome("j", "succeeded", 0).succeeded is True


# --------------------------------------------------------------------------- one record a job


def test_a_reservation_is_the_jobs_record_until_its_worker_runs() -> None:
    reg, listener = registry()
    releases = Releases()
    record = reg.reserve("a", "w-a")
    record.take_slot(releases)

    assert record.phase is Phase.RESERVED
    assert reg.record("a") is record
    assert reg.get("a") is None  # nothing runs yet
    assert reg.future("a") is record.future
    assert reg.active_workers() == []
    with pytest.raises(DuplicateJobError):
        reg.reserve("b", "w-a")  # its container name is claimed too

    worker = tracked("a").worker
    assert record.begin(worker) is True
    assert reg.register(record) is True
    assert reg.get("a") is record and record.phase is Phase.RUNNING
    assert reg.active_workers() == [worker]
    assert releases.count == 0  # the running record holds the slot

    assert reg.settle(record, WorkerOutcome("a", "succeeded", exit_code=0)) is True
    assert releases.count == 1  # given back by the transition that ended the record
    assert reg.record("a") is None
    assert listener.finished[0][0] == "a"


def test_an_abandoned_reservation_gives_its_slot_back_once_and_never_runs() -> None:
    reg, _ = registry()
    releases = Releases()
    record = reg.reserve("a")
    record.take_slot(releases)

    reg.unreserve(record)
    reg.unreserve(record)

    assert record.phase is Phase.ABANDONED
    assert releases.count == 1
    with pytest.raises(KeyError):
        record.future.result(0)
    assert record.begin(tracked("a").worker) is False  # a late launch cannot revive it
    late = Releases()
    record.take_slot(late)  # a slot that comes after the end goes straight back
    assert late.count == 1
    assert reg.record("a") is None


def begun(reg: WorkerRegistry, job_id: str) -> tuple[TrackedWorker, Releases]:
    """A reservation holding a slot whose worker began (not yet registered)."""
    releases = Releases()
    record = reg.reserve(job_id)
    record.take_slot(releases)
    assert record.begin(tracked(job_id).worker) is True
    return record, releases


def test_a_running_record_is_not_abandoned() -> None:
    reg, _ = registry()
    record, releases = begun(reg, "a")
    reg.register(record)

    reg.unreserve(record)  # an interrupted spawn whose launch went on

    assert record.phase is Phase.RUNNING
    assert releases.count == 0
    assert reg.get("a") is record


def test_a_record_whose_worker_began_as_the_registry_closed_is_detached() -> None:
    reg, _ = registry()
    record, releases = begun(reg, "a")
    reg.close()  # its container runs: left running, as every running worker at close

    assert reg.register(record) is False
    assert record.phase is Phase.DETACHED
    assert releases.count == 1
    assert reg.record("a") is None
    with pytest.raises(CancelledError):
        record.future.result(0)


def test_a_reservation_outlives_close_until_its_spawn_gives_it_up() -> None:
    reg, _ = registry()
    record = reg.reserve("a")
    reg.close()

    assert record.phase is Phase.RESERVED  # its spawn is still under way
    reg.unreserve(record)
    with pytest.raises(KeyError):
        record.future.result(0)

"""Worker lifecycle against the fake engine: interrupts, close() from anywhere, give-ups, races.

Each test here reproduces a way the lifecycle used to break when driven as a host drives
it: a signal handler raising mid-wait, a listener closing the manager, an engine that
refuses the kill for a while, `close()` racing adoption or a scan.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from dockyard import (
    ActiveWorker,
    ContainerManager,
    NoWorkerSlotError,
    WorkerLifecycleListener,
    WorkerOutcome,
)
from dockyard._docker import ExitWait
from dockyard._naming import parse_deadline
from dockyard._retry import RetryPolicy
from dockyard.testing import FakeDockerAPI, RecordingReporter, api_error, not_found
from support.rig import INSTANCE, fake_manager, job
from support.threads import ThreadBaseline, eventually


class ListingAPI(FakeDockerAPI):
    """The fake engine, plus container listing and a hook on inspect."""

    def __init__(self) -> None:
        super().__init__()
        self.on_inspect: Callable[[str], None] | None = None

    def inspect_container(self, ref: str) -> dict[str, Any]:
        if self.on_inspect is not None:
            self.on_inspect(ref)
        return super().inspect_container(ref)

    def containers(self, all: bool = False, filters: Any = None) -> list[dict[str, Any]]:
        include_stopped = all
        wanted = dict(item.split("=", 1) for item in (filters or {}).get("label", []))
        with self.lock:
            found = [
                c
                for c in self.containers_by_id.values()
                if include_stopped or c.status == "running"
                if wanted.items() <= c.labels.items()
            ]
            return [
                {
                    "Id": c.id,
                    "Names": ["/" + c.name],
                    "Labels": dict(c.labels),
                    "State": c.status,
                    "Created": int(time.time()) - 3600,
                }
                for c in found
            ]


def worker_labels(job_id: str, deadline: datetime) -> dict[str, str]:
    return {
        "cascade.managed": "true",
        "cascade.router.instance": INSTANCE,
        "cascade.job.id": job_id,
        "cascade.job.type": "trello",
        "cascade.deadline": deadline.isoformat(timespec="milliseconds"),
    }


@pytest.fixture
def make() -> Iterator[Callable[..., tuple[ContainerManager, Any]]]:
    made: list[ContainerManager] = []

    def factory(
        api: FakeDockerAPI | None = None,
        listener: WorkerLifecycleListener | None = None,
        **overrides: Any,
    ) -> tuple[ContainerManager, Any]:
        api = api or FakeDockerAPI()
        manager = fake_manager(api, RecordingReporter(), listener, **overrides)
        made.append(manager)
        return manager, api

    yield factory
    for manager in made:
        manager.close()


def immediate(policy: RetryPolicy, window_s: float | None) -> RetryPolicy:
    """The same policy without any back-off: a test must not sleep."""
    return dataclasses.replace(policy, first_delay_s=0.0, max_delay_s=0.0, window_s=window_s)


def fast_kill_retries(manager: ContainerManager, monkeypatch: pytest.MonkeyPatch) -> None:
    """No back-off between kill rounds (a test must not sleep through real ones)."""
    window = manager.config.wait_retry_window_s
    policy = manager._parts.timeouts.kill_policy  # type: ignore[attr-defined]
    manager._parts.timeouts.kill_policy = immediate(policy, window_s=window)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- slots


class Interrupted(Exception):
    """What a host's signal handler raises (its own KeyboardInterrupt, say)."""


def test_a_slot_wait_interrupted_by_a_signal_handler_keeps_no_slot(make: Any) -> None:
    manager, api = make(max_workers=1)
    first = manager.spawn_worker(job("first"))

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            manager.spawn_worker(job("second"), slot_timeout=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    api.exit(first.container_id, 0)
    assert manager.wait_for_worker("first", timeout=10).status == "succeeded"
    # The slot came back to the gate, not to the dead waiter.
    third = manager.spawn_worker(job("third"), slot_timeout=5)
    assert manager.get_active_workers() == [third]


def test_an_infinite_slot_timeout_waits_for_the_slot(make: Any) -> None:
    manager, api = make(max_workers=1)
    first = manager.spawn_worker(job("first"))
    results: list[Any] = []

    def spawn() -> None:
        try:
            results.append(manager.spawn_worker(job("second"), slot_timeout=math.inf))
        except BaseException as err:
            results.append(err)

    spawner = threading.Thread(target=spawn)
    spawner.start()
    eventually(lambda: manager._parts.slots.waiting == 1 or bool(results))
    api.exit(first.container_id, 0)
    spawner.join(10)
    assert len(results) == 1 and isinstance(results[0], ActiveWorker), results
    assert manager.get_active_workers() == [results[0]]


def test_an_interrupt_after_the_launch_succeeded_keeps_the_slot_taken(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager, _ = make(max_workers=1)
    real_submit = manager._parts.launch_executor.submit

    class InterruptedResult:
        """The caller's `future.result()` is interrupted just as the launch completes."""

        def __init__(self, future: Any) -> None:
            self._future = future

        def result(self, timeout: float | None = None) -> Any:
            self._future.result()
            raise KeyboardInterrupt

        def __getattr__(self, name: str) -> Any:
            return getattr(self._future, name)

    monkeypatch.setattr(
        manager._parts.launch_executor,
        "submit",
        lambda *args, **kwargs: InterruptedResult(real_submit(*args, **kwargs)),
    )
    with pytest.raises(KeyboardInterrupt):
        manager.spawn_worker(job("first"))
    monkeypatch.undo()

    assert manager.get_active_worker_count() == 1  # the launch did succeed
    with pytest.raises(NoWorkerSlotError):  # and its worker holds the only slot
        manager.spawn_worker(job("second"), slot_timeout=0.2)
    assert manager.get_active_worker_count() == 1


# --------------------------------------------------------------------------- kills


def test_the_kill_outlasts_an_engine_blip_at_the_deadline(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager, api = make(worker_timeout_s=0.3, wait_retry_window_s=30)
    fast_kill_retries(manager, monkeypatch)
    down = [requests.exceptions.ConnectionError("engine restarting") for _ in range(8)]
    api.failures["stop"] = list(down)
    api.failures["kill"] = list(down)

    manager.spawn_worker(job())
    outcome = manager.wait_for_worker("job-1", timeout=10)

    assert outcome.status == "timed_out"
    assert len(api.calls_of("stop")) == 9  # eight refused rounds, then the one that took


def test_kill_worker_stops_again_while_the_worker_still_runs(make: Any) -> None:
    manager, api = make()
    api.stop_exits = False  # the engine acknowledges the stop, the container runs on
    manager.spawn_worker(job())

    assert manager.kill_worker("job-1") is True
    assert len(api.calls_of("stop")) == 1
    assert manager.kill_worker("job-1") is True
    assert len(api.calls_of("stop")) == 2  # not just "True" without doing anything

    api.stop_exits = True
    assert manager.kill_worker("job-1") is True
    assert manager.wait_for_worker("job-1", timeout=10).status == "timed_out"
    assert manager.kill_worker("job-1") is False


def test_a_natural_exit_racing_the_timer_stays_a_success(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager, api = make(worker_timeout_s=0.5)
    stop_called = threading.Event()
    api.before_stop = lambda container_id: stop_called.set()
    real_result = ExitWait.result

    def result(self: ExitWait) -> dict[str, Any]:
        body = real_result(self)
        stop_called.wait(10)  # the timer fires between the exit and its handling
        return body

    monkeypatch.setattr(ExitWait, "result", result)
    worker = manager.spawn_worker(job())
    now = datetime.now(UTC)
    with api.lock:
        container = api.containers_by_id[worker.container_id]
        container.started_at = now.isoformat().replace("+00:00", "Z")
        container.finished_at = (now + timedelta(seconds=0.05)).isoformat().replace("+00:00", "Z")
    api.exit(worker.container_id, 0)  # well before the deadline

    outcome = manager.wait_for_worker("job-1", timeout=10)

    assert stop_called.is_set()
    assert (outcome.status, outcome.exit_code) == ("succeeded", 0)


# --------------------------------------------------------------------------- close


class ClosingListener(WorkerLifecycleListener):
    def __init__(self, on: str) -> None:
        self.on = on
        self.manager: ContainerManager | None = None
        self.closed = threading.Event()

    def _close(self) -> None:
        assert self.manager is not None
        self.manager.close()
        self.closed.set()

    def on_worker_started(self, worker: ActiveWorker) -> None:
        if self.on == "started":
            self._close()

    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        if self.on == "finished":
            self._close()


@pytest.mark.parametrize("hook", ["started", "finished"])
def test_close_from_a_listener_callback_completes(
    thread_baseline: ThreadBaseline, make: Any, caplog: pytest.LogCaptureFixture, hook: str
) -> None:
    caplog.set_level(logging.WARNING, logger="dockyard")
    listener = ClosingListener(hook)
    manager, api = make(listener=listener)
    listener.manager = manager

    worker = manager.spawn_worker(job())
    if hook == "finished":
        api.exit(worker.container_id, 0)
    assert listener.closed.wait(10), "close() from the callback did not return"

    assert [r.getMessage() for r in caplog.records] == []  # no "cannot join current thread"
    assert manager._parts.driver.client._closed  # it went all the way through
    with pytest.raises(RuntimeError):
        manager.spawn_worker(job("after"))
    thread_baseline.assert_no_new_threads(timeout=5.0)


def test_adoption_racing_close_leaves_no_worker_behind(
    thread_baseline: ThreadBaseline, make: Any
) -> None:
    api = ListingAPI()
    running = api.add_container(
        "cascade-worker-adopt-1",
        worker_labels("adopt-1", datetime.now(UTC) + timedelta(hours=1)),
        "running",
    )
    manager, _ = make(api)
    closer = threading.Thread(target=manager.close)

    def close_during_adoption(ref: str) -> None:
        if ref == running.id and not closer.is_alive() and closer.ident is None:
            closer.start()
            closer.join(10)

    api.on_inspect = close_during_adoption
    manager.adopt_workers()

    assert closer.ident is not None and not closer.is_alive()
    assert manager.get_active_worker_count() == 0
    assert running.id in api.containers_by_id  # left running, as close() leaves workers
    thread_baseline.assert_no_new_threads(timeout=5.0)


def close_while_held(manager: Any, api: FakeDockerAPI, release: threading.Event) -> list[int]:
    """Close from another thread while a dockyard thread is held inside an engine call,
    then let that call go on; the engine calls counted when `close()` returned."""
    calls_when_closed: list[int] = []

    def close() -> None:
        manager.close()
        calls_when_closed.append(len(api.calls))

    closer = threading.Thread(target=close)
    closer.start()
    closer.join(0.3)
    release.set()
    closer.join(10)
    return calls_when_closed


def test_close_waits_for_an_orphan_scan_under_way(make: Any) -> None:
    api = ListingAPI()
    overdue = datetime.now(UTC) - timedelta(minutes=5)
    for n in range(2):
        api.add_container(
            f"cascade-worker-orphan-{n}", worker_labels(f"orphan-{n}", overdue), "running"
        )
    manager, _ = make(api)
    in_stop, release = threading.Event(), threading.Event()

    def slow_stop(container_id: str) -> None:
        if not in_stop.is_set():
            in_stop.set()
            release.wait(10)  # the 15 s grace of a real stop

    api.before_stop = slow_stop
    scanner = threading.Thread(target=manager.scan_and_cleanup_orphans)
    scanner.start()
    assert in_stop.wait(10)
    calls_when_closed = close_while_held(manager, api, release)
    scanner.join(10)

    assert not scanner.is_alive()
    assert calls_when_closed == [len(api.calls)], "the scan called the engine after close()"


def test_close_waits_for_a_timer_inside_its_expiry(
    thread_baseline: ThreadBaseline, make: Any
) -> None:
    manager, api = make(worker_timeout_s=0.2)
    in_stop, release = threading.Event(), threading.Event()

    def slow_stop(container_id: str) -> None:
        in_stop.set()
        release.wait(10)

    api.before_stop = slow_stop
    api.failures["stop"] = [api_error(500, "stop failed")]  # next: SIGKILL, after close
    manager.spawn_worker(job())
    assert in_stop.wait(10)
    calls_when_closed = close_while_held(manager, api, release)
    thread_baseline.assert_no_new_threads(timeout=5.0)

    assert calls_when_closed == [len(api.calls)], "the timer called the engine after close()"


# --------------------------------------------------------------------------- deadlines, outcomes


def test_the_deadline_counts_from_the_start_not_from_an_image_pull(make: Any) -> None:
    api = FakeDockerAPI(images=set())  # the base image must be pulled first
    real_post = api.post
    pulled_at: list[datetime] = []

    def post(url: str, params: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        if url.endswith("/images/create"):
            time.sleep(0.3)  # a pull takes a while (up to image_pull_timeout_s)
            pulled_at.append(datetime.now(UTC))
        return real_post(url, params, **kwargs)

    api.post = post  # type: ignore[method-assign]
    manager, _ = make(api, worker_timeout_s=1000)
    worker = manager.spawn_worker(job())

    (pulled,) = pulled_at
    label = api.containers_by_id[worker.container_id].labels["cascade.deadline"]
    deadline = parse_deadline(label)
    assert deadline is not None
    assert deadline >= pulled + timedelta(seconds=1000) - timedelta(milliseconds=1)
    # The label is written at create: earlier than the run's own deadline by the create and
    # start (here a fake's), never later.
    assert timedelta(0) <= worker.deadline - deadline < timedelta(seconds=1)


def test_waiting_on_a_job_being_rerun_does_not_return_the_last_run(make: Any) -> None:
    manager, api = make(max_workers=1)
    old = manager.spawn_worker(job("again"))
    api.exit(old.container_id, 0)
    assert manager.wait_for_worker("again", timeout=10).status == "succeeded"

    blocker = manager.spawn_worker(job("blocker"))
    results: list[ActiveWorker] = []
    spawner = threading.Thread(target=lambda: results.append(manager.spawn_worker(job("again"))))
    spawner.start()
    eventually(lambda: manager._parts.slots.waiting == 1)

    with pytest.raises(TimeoutError):  # the re-run has no outcome yet
        manager.wait_for_worker("again", timeout=0.2)

    api.exit(blocker.container_id, 0)
    spawner.join(10)
    api.exit(results[0].container_id, 3)
    outcome = manager.wait_for_worker("again", timeout=10)
    assert (outcome.status, outcome.exit_code) == ("failed", 3)


def test_a_container_auto_removed_before_the_exit_inspect_is_no_warning(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dockyard")
    manager, api = make()
    worker = manager.spawn_worker(job())
    api.failures["inspect_container"] = [not_found(worker.container_id)]
    api.exit(worker.container_id, 0)

    assert manager.wait_for_worker("job-1", timeout=10).status == "succeeded"
    assert [r.getMessage() for r in caplog.records if r.name.startswith("dockyard")] == []

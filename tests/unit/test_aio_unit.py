"""`dockyard.aio` on the fake engine: outcomes bridged onto the loop without a thread, waits
that time out or are cancelled leave the manager's future alone, and async listeners run on
the loop, in order per worker, their failures reported like a synchronous listener's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from dockyard import ActiveWorker, ContainerManager, RouterConfig, WorkerJob, WorkerOutcome
from dockyard.aio import AsyncContainerManager, AsyncWorkerLifecycleListener
from dockyard.testing import DEFAULT_IMAGE, FakeDockerAPI, RecordingReporter

Make = Callable[..., ContainerManager]


@pytest.fixture
def api() -> FakeDockerAPI:
    return FakeDockerAPI(images={DEFAULT_IMAGE})


@pytest.fixture
def make(api: FakeDockerAPI) -> Iterator[Make]:
    made: list[ContainerManager] = []

    def build(**kwargs: Any) -> ContainerManager:
        config = RouterConfig(
            worker_image=DEFAULT_IMAGE, router_instance_id="aio-unit", max_workers=10
        )
        kwargs.setdefault("reporter", RecordingReporter())
        manager = ContainerManager(config, docker_client=api, **kwargs)  # type: ignore[arg-type]
        made.append(manager)
        return manager

    yield build
    for manager in made:
        manager.close()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def aio_threads(settle_s: float = 0.0) -> list[str]:
    """The adapter's threads alive now, or still alive after up to `settle_s` seconds."""
    threads = [t for t in threading.enumerate() if t.name.startswith("dockyard-aio")]
    for thread in threads:
        thread.join(settle_s)  # a thread posts its result, then ends
    return [t.name for t in threads if t.is_alive()]


def test_spawn_and_wait_bridge_the_manager(api: FakeDockerAPI, make: Make) -> None:
    async def main() -> tuple[ActiveWorker, WorkerOutcome]:
        async with AsyncContainerManager(make()) as workers:
            worker = await workers.spawn_worker(WorkerJob("j1", "build", {}))
            assert workers.manager.get_active_worker_count() == 1
            api.exit(worker.container_id, 3)
            return worker, await workers.wait_for_worker("j1", timeout=5)

    worker, outcome = run(main())
    assert worker.job_id == "j1"
    assert (outcome.status, outcome.exit_code) == ("failed", 3)


def test_cancel_worker_is_awaited_on_the_loop(api: FakeDockerAPI, make: Make) -> None:
    async def main() -> tuple[bool, bool, WorkerOutcome]:
        async with AsyncContainerManager(make()) as workers:
            await workers.spawn_worker(WorkerJob("c1", "build", {}))
            cancelled = await workers.cancel_worker("c1")
            outcome = await workers.wait_for_worker("c1", timeout=5)
            return cancelled, await workers.cancel_worker("never"), outcome

    cancelled, unknown, outcome = run(main())
    assert (cancelled, unknown, outcome.status) == (True, False, "cancelled")


def test_waiting_for_outcomes_holds_no_thread(api: FakeDockerAPI, make: Make) -> None:
    manager = make()
    workers = [manager.spawn_worker(WorkerJob(f"w{i}", "build", {})) for i in range(5)]

    async def main() -> list[WorkerOutcome]:
        adapter = AsyncContainerManager(manager)
        before = threading.active_count()
        waits = [
            asyncio.ensure_future(adapter.wait_for_worker(f"w{i % 5}", timeout=10))
            for i in range(100)
        ]
        await asyncio.sleep(0.1)
        assert not any(w.done() for w in waits)
        assert threading.active_count() == before  # a hundred waits, not one more thread
        assert aio_threads() == []
        for i, worker in enumerate(workers):
            api.exit(worker.container_id, i)
        return list(await asyncio.gather(*waits))

    outcomes = run(main())
    assert [o.exit_code for o in outcomes] == [i % 5 for i in range(100)]


def test_a_wait_that_times_out_or_is_cancelled_leaves_the_outcome_to_others(
    api: FakeDockerAPI, make: Make
) -> None:
    manager = make()
    worker = manager.spawn_worker(WorkerJob("slow", "build", {}))

    async def main() -> WorkerOutcome:
        adapter = AsyncContainerManager(manager)
        with pytest.raises(TimeoutError):
            await adapter.wait_for_worker("slow", timeout=0.05)
        cancelled = asyncio.ensure_future(adapter.wait_for_worker("slow"))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        api.exit(worker.container_id, 0)
        return await adapter.wait_for_worker("slow", timeout=5)

    assert run(main()).status == "succeeded"
    # The manager's own future was never cancelled by the adapter.
    assert manager.wait_for_worker("slow", timeout=1).status == "succeeded"


def test_known_outcomes_unknown_ids_and_detached_workers_answer_as_the_sync_call(
    api: FakeDockerAPI, make: Make
) -> None:
    manager = make()
    done = manager.spawn_worker(WorkerJob("done", "build", {}))
    api.exit(done.container_id, 0)
    manager.wait_for_worker("done", timeout=5)
    manager.spawn_worker(WorkerJob("kept", "build", {}))

    async def main() -> None:
        adapter = AsyncContainerManager(manager)
        assert (await adapter.wait_for_worker("done", timeout=0)).status == "succeeded"
        with pytest.raises(KeyError):
            await adapter.wait_for_worker("never-seen")
        waiting = asyncio.ensure_future(adapter.wait_for_worker("kept", timeout=5))
        await asyncio.sleep(0.05)
        manager.detach_all()
        with pytest.raises(concurrent.futures.CancelledError):
            await waiting

    run(main())


def test_spawn_errors_arrive_on_the_loop_and_aclose_closes(make: Make) -> None:
    manager = make()

    async def main() -> None:
        adapter = AsyncContainerManager(manager)
        await adapter.spawn_worker(WorkerJob("dup", "build", {}))
        with pytest.raises(Exception, match="still active"):
            await adapter.spawn_worker(WorkerJob("dup", "build", {}))
        await adapter.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await adapter.spawn_worker(WorkerJob("late", "build", {}))

    run(main())
    assert aio_threads(settle_s=2.0) == []  # each call's thread ends with the call


# -- the async listener ------------------------------------------------------------------


class Ordered(AsyncWorkerLifecycleListener):
    """Records each hook with the thread it ran on; `started` awaits before it returns."""

    def __init__(self, started_delay: float = 0.0) -> None:
        self.events: list[tuple[str, str, int]] = []
        self.started_delay = started_delay

    async def on_worker_started(self, worker: ActiveWorker) -> None:
        self.events.append(("started-begin", worker.job_id, threading.get_ident()))
        await asyncio.sleep(self.started_delay)
        self.events.append(("started-end", worker.job_id, threading.get_ident()))

    async def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        self.events.append(("finished", worker.job_id, threading.get_ident()))

    def of(self, job_id: str) -> list[str]:
        return [kind for kind, jid, _ in self.events if jid == job_id]


def test_async_hooks_run_on_the_loop_in_order_per_worker(api: FakeDockerAPI, make: Make) -> None:
    listener = Ordered(started_delay=0.1)
    api.exit_on_start = 0  # every worker exits at once: its finish races its slow start hook

    async def main() -> int:
        manager = make(listener=AsyncContainerManager.listener_for(listener))
        async with AsyncContainerManager(manager) as workers:
            jobs = [WorkerJob(f"j{i}", "build", {}) for i in range(8)]
            await asyncio.gather(*(workers.spawn_worker(job) for job in jobs))
            await asyncio.gather(*(workers.wait_for_worker(job.id or "") for job in jobs))
            while len(listener.events) < 3 * len(jobs):
                await asyncio.sleep(0.01)
        return threading.get_ident()

    loop_thread = run(main())
    for i in range(8):
        assert listener.of(f"j{i}") == ["started-begin", "started-end", "finished"]
    assert {ident for *_, ident in listener.events} == {loop_thread}
    # The hooks of different workers did overlap: only each worker's own are chained.
    begins = [i for i, (kind, *_) in enumerate(listener.events) if kind == "started-begin"]
    ends = [i for i, (kind, *_) in enumerate(listener.events) if kind == "started-end"]
    assert begins[1] < ends[0]


class Failing(AsyncWorkerLifecycleListener):
    def __init__(self) -> None:
        self.finished: list[str] = []

    async def on_worker_started(self, worker: ActiveWorker) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("router bug")

    async def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        self.finished.append(worker.job_id)


def test_a_failing_async_hook_is_reported_and_the_lifecycle_goes_on(
    api: FakeDockerAPI, make: Make
) -> None:
    reporter = RecordingReporter()
    listener = Failing()

    async def main() -> WorkerOutcome:
        bridge = AsyncContainerManager.listener_for(listener, reporter=reporter)
        manager = make(listener=bridge, reporter=reporter)
        async with AsyncContainerManager(manager) as workers:
            worker = await workers.spawn_worker(WorkerJob("j", "build", {}))
            api.exit(worker.container_id, 0)
            outcome = await workers.wait_for_worker("j", timeout=5)
            while not listener.finished:
                await asyncio.sleep(0.01)
            return outcome

    assert run(main()).status == "succeeded"
    assert listener.finished == ["j"]
    (report,) = reporter.of("lifecycle_listener")
    assert str(report.err) == "router bug"
    assert (report.level, report.tags, report.extras) == (
        "warning",
        {"hook": "on_worker_started"},
        {"jobId": "j"},
    )


def test_listener_for_needs_a_loop() -> None:
    with pytest.raises(RuntimeError, match="event loop"):
        AsyncContainerManager.listener_for(AsyncWorkerLifecycleListener())
    loop = asyncio.new_event_loop()
    try:
        bridge = AsyncContainerManager.listener_for(AsyncWorkerLifecycleListener(), loop=loop)
        assert bridge is not None
    finally:
        loop.close()


def test_events_for_a_closed_loop_are_reported_not_raised(api: FakeDockerAPI, make: Make) -> None:
    reporter = RecordingReporter()
    loop = asyncio.new_event_loop()
    bridge = AsyncContainerManager.listener_for(Ordered(), loop=loop)
    loop.close()
    manager = make(listener=bridge, reporter=reporter)
    worker = manager.spawn_worker(WorkerJob("j", "build", {}))
    api.exit(worker.container_id, 0)
    assert manager.wait_for_worker("j", timeout=5).status == "succeeded"
    assert [r.tags["hook"] for r in reporter.of("lifecycle_listener")][:1] == ["on_worker_started"]

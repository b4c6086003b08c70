"""An asyncio router on a real engine: plain `asyncio.run`, `dockyard.aio` over a real
manager, twenty jobs spawned at once with `asyncio.gather`, every outcome awaited, and an
async listener that runs on the router's loop, in order per worker.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from dockyard import ActiveWorker, ContainerManager, WorkerJob, WorkerOutcome
from dockyard.aio import AsyncContainerManager, AsyncWorkerLifecycleListener

JOBS = 20
BOUND_S = 180.0  # a busy shared engine takes seconds per start


class Records(AsyncWorkerLifecycleListener):
    """Each hook with its thread; the start hook awaits before it is done."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []
        self.outcomes: dict[str, list[WorkerOutcome]] = {}

    async def on_worker_started(self, worker: ActiveWorker) -> None:
        self.events.append(("started-begin", worker.job_id, threading.get_ident()))
        await asyncio.sleep(0.05)  # a router's own I/O: the finish must still come after
        self.events.append(("started-end", worker.job_id, threading.get_ident()))

    async def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        self.events.append(("finished", worker.job_id, threading.get_ident()))
        self.outcomes.setdefault(worker.job_id, []).append(outcome)

    def of(self, job_id: str) -> list[str]:
        return [kind for kind, jid, _ in self.events if jid == job_id]


def test_an_asyncio_router_spawns_twenty_jobs_at_once_and_hears_every_outcome(
    make_manager: Callable[..., ContainerManager],
) -> None:
    listener = Records()
    jobs = [
        WorkerJob(f"aio-{i}", "aio", {}, command=["sh", "-c", f"sleep 0.{i % 3}; exit {i % 4}"])
        for i in range(JOBS)
    ]

    async def router() -> dict[str, Any]:
        bridge = AsyncContainerManager.listener_for(listener)  # this loop
        manager = make_manager(max_workers=6, listener=bridge)
        async with AsyncContainerManager(manager) as workers:
            spawned = await asyncio.gather(*(workers.spawn_worker(job) for job in jobs))
            waits = [
                asyncio.ensure_future(workers.wait_for_worker(job.id or "", timeout=120))
                for job in jobs
            ]
            outcomes = await asyncio.gather(*waits)
            while sum(len(o) for o in listener.outcomes.values()) < JOBS:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # a duplicate event would arrive meanwhile
        return {
            "loop_thread": threading.get_ident(),
            "spawned": spawned,
            "outcomes": outcomes,
        }

    got = asyncio.run(asyncio.wait_for(router(), BOUND_S))

    assert [w.job_id for w in got["spawned"]] == [job.id for job in jobs]
    for i, outcome in enumerate(got["outcomes"]):
        assert outcome.job_id == f"aio-{i}"
        assert outcome.exit_code == i % 4
        assert outcome.status == ("succeeded" if i % 4 == 0 else "failed")
    # The async listener: once per event, on the router's loop, in order per worker.
    for job in jobs:
        assert listener.of(job.id or "") == ["started-begin", "started-end", "finished"]
        assert listener.outcomes[job.id or ""] == [got["outcomes"][jobs.index(job)]]
    assert {ident for *_, ident in listener.events} == {got["loop_thread"]}

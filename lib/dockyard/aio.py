"""dockyard for asyncio routers: the synchronous `ContainerManager`, awaited from a loop.

The manager stays the core; this is a thin adapter with no logic of its own::

    from dockyard import ContainerManager, RouterConfig, WorkerJob
    from dockyard.aio import AsyncContainerManager, AsyncWorkerLifecycleListener

    class RunRecords(AsyncWorkerLifecycleListener):
        async def on_worker_finished(self, worker, outcome):
            await runs.mark_done(worker.job_id, outcome.status)  # on the router's loop

    async def main() -> None:
        listener = AsyncContainerManager.listener_for(RunRecords())  # captures this loop
        manager = ContainerManager(RouterConfig.from_env(), listener=listener)
        async with AsyncContainerManager(manager) as workers:
            await workers.spawn_worker(WorkerJob("job-1", "build", {}))
            outcome = await workers.wait_for_worker("job-1")

- `spawn_worker` runs the manager's `spawn_worker` on a thread of its own (the call blocks
  while it waits for a slot and for the container to start, as the synchronous one does;
  the loop's default executor is never taken). Cancelling the awaiting task does not undo
  the spawn: the worker starts, and its outcome still reaches the listener and
  `wait_for_worker`.
- `wait_for_worker` holds no thread: the manager's outcome future is bridged onto the loop
  by a done-callback (`loop.call_soon_threadsafe`). A timeout or a cancelled wait leaves
  that future alone; other waiters still get the outcome.
- `aclose()` (and leaving `async with`) runs `close()` on a thread.
- Lifecycle events reach an `AsyncWorkerLifecycleListener` through the synchronous listener
  that `listener_for` returns, given to the manager as `listener=`. Its coroutines run on
  the loop that was running when `listener_for` was called, in order per worker: a
  worker's `on_worker_finished` starts only after its `on_worker_started` has returned, even
  when that awaits. An exception in one is logged and reported like a synchronous
  listener's (Sentry source `lifecycle_listener`) and never breaks the lifecycle.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any, Self, TypeVar

from ._listener import SafeListener
from ._models import ActiveWorker, WorkerLifecycleListener, WorkerOutcome
from ._sentry import Reporter, SentryReporter

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from ._jobs import WorkerJob
    from .container_manager import ContainerManager

__all__ = ["AsyncContainerManager", "AsyncWorkerLifecycleListener"]

log = logging.getLogger("dockyard.aio")

T = TypeVar("T")


class AsyncWorkerLifecycleListener:
    """Receives lifecycle events as coroutines on the router's loop; override what you need.

    For one worker the coroutines run one after the other, in the order of the events.
    An exception raised here is logged and reported, never propagated.
    """

    async def on_worker_started(self, worker: ActiveWorker) -> None:
        """A worker's container has started."""

    async def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        """A worker ended; called exactly once per started worker (unless detached)."""

    async def on_orphan_stopped(self, container_id: str, labels: dict[str, str]) -> None:
        """An orphaned container of this router instance was stopped and removed."""


class AsyncContainerManager:
    """A `ContainerManager` awaited from asyncio: `spawn_worker`, `wait_for_worker`,
    `aclose`, `async with`. The manager itself stays usable (and is the one to configure)."""

    # Each call is the manager's, bridged: a call that blocks runs on `_on_thread`, an
    # outcome is awaited through `_copy_state`. A new manager method is one more line here.

    def __init__(self, manager: ContainerManager) -> None:
        self._manager = manager

    @property
    def manager(self) -> ContainerManager:
        """The synchronous manager this adapter awaits."""
        return self._manager

    @staticmethod
    def listener_for(
        listener: AsyncWorkerLifecycleListener,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        reporter: Reporter | None = None,
    ) -> WorkerLifecycleListener:
        """The synchronous listener to give `ContainerManager(listener=...)` for `listener`.

        Its coroutines run on `loop`, by default the loop running this call (call it from a
        coroutine, or pass `loop=`). A coroutine's exception goes to `reporter` (pass the
        manager's when it has one of its own; by default Sentry), as a synchronous
        listener's does.
        """
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "listener_for needs the router's event loop: call it from a coroutine "
                    "running on that loop, or pass loop="
                ) from None
        return _LoopListener(listener, loop, reporter or SentryReporter())

    async def spawn_worker(
        self, job: WorkerJob, *, slot_timeout: float | None = None
    ) -> ActiveWorker:
        """`ContainerManager.spawn_worker` on a thread of its own: returns once it runs."""
        return await _on_thread("spawn", self._manager.spawn_worker, job, slot_timeout=slot_timeout)

    async def wait_for_worker(self, job_id: str, timeout: float | None = None) -> WorkerOutcome:
        """The worker's outcome, awaited without a thread (also after it finished).

        As `ContainerManager.wait_for_worker`: `TimeoutError` after `timeout` seconds,
        `KeyError` for a job id the manager never saw, `concurrent.futures.CancelledError`
        when the worker was detached.
        """
        source = self._manager._outcome_future(job_id)  # KeyError at once
        if source.done():
            return source.result()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[WorkerOutcome] = loop.create_future()

        def relay(done: concurrent.futures.Future[WorkerOutcome]) -> None:
            # On the thread that settled the outcome; a closed loop has nobody waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_copy_state, done, waiter)

        source.add_done_callback(relay)
        return await asyncio.wait_for(waiter, timeout)

    async def cancel_worker(self, job_id: str) -> bool:
        """`ContainerManager.cancel_worker`: it never blocks, so it runs on the loop."""
        return self._manager.cancel_worker(job_id)

    async def aclose(self) -> None:
        """`ContainerManager.close()` on a thread: detach, stop loops, shut pools down."""
        await _on_thread("close", self._manager.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _on_thread(name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on a new daemon thread; its result or error on this loop."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            outcome.set_result(fn(*args, **kwargs))
        except BaseException as err:
            outcome.set_exception(err)
        try:
            loop.call_soon_threadsafe(_copy_state, outcome, waiter)
        except RuntimeError:  # the loop closed meanwhile
            log.debug("a %s finished after its event loop closed", name)

    threading.Thread(target=run, name=f"dockyard-aio-{name}", daemon=True).start()
    return await waiter


def _copy_state(source: concurrent.futures.Future[T], waiter: asyncio.Future[T]) -> None:
    """Settle `waiter` (on its loop) as `source` was settled, unless it was given up."""
    if waiter.done():  # timed out or cancelled meanwhile
        return
    if source.cancelled():
        waiter.set_exception(concurrent.futures.CancelledError())
        return
    error = source.exception()
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(source.result())


class _Raise(WorkerLifecycleListener):
    """A listener that raises `err` from every hook: to report it as a listener's failure."""

    def __init__(self, err: Exception) -> None:
        self._err = err

    def on_worker_started(self, worker: ActiveWorker) -> None:
        raise self._err

    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        raise self._err

    def on_orphan_stopped(self, container_id: str, labels: dict[str, str]) -> None:
        raise self._err


class _LoopListener(WorkerLifecycleListener):
    """The manager's (synchronous) listener: schedules each event's coroutine on the loop,
    chained per worker so that they run in the order of the events."""

    def __init__(
        self,
        listener: AsyncWorkerLifecycleListener,
        loop: asyncio.AbstractEventLoop,
        reporter: Reporter,
    ) -> None:
        self._listener = listener
        self._loop = loop
        self._reporter = reporter
        self._tails: dict[str, asyncio.Task[None]] = {}  # the last event per worker; loop only

    def on_worker_started(self, worker: ActiveWorker) -> None:
        self._schedule(worker.job_id, "on_worker_started", worker)

    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        self._schedule(worker.job_id, "on_worker_finished", worker, outcome)

    def on_orphan_stopped(self, container_id: str, labels: dict[str, str]) -> None:
        self._schedule(f"orphan:{container_id}", "on_orphan_stopped", container_id, dict(labels))

    def _schedule(self, key: str, hook: str, *args: Any) -> None:
        # Raises RuntimeError once the loop is closed: the manager reports it as ours.
        self._loop.call_soon_threadsafe(self._chain, key, hook, args)

    def _chain(self, key: str, hook: str, args: tuple[Any, ...]) -> None:
        """On the loop: run this event after the worker's previous one has returned."""
        previous = self._tails.get(key)
        task = self._loop.create_task(self._run(previous, hook, args))
        self._tails[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tails.get(key) is done:
                del self._tails[key]

        task.add_done_callback(forget)

    async def _run(
        self, previous: asyncio.Task[None] | None, hook: str, args: tuple[Any, ...]
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # its own failure was reported already
        try:
            await getattr(self._listener, hook)(*args)
        except Exception as err:
            # Through the manager's own listener guard: logged and reported alike.
            _GUARDED[hook](SafeListener(_Raise(err), self._reporter), *args)


_GUARDED: dict[str, Callable[..., None]] = {
    "on_worker_started": SafeListener.started,
    "on_worker_finished": SafeListener.finished,
    "on_orphan_stopped": SafeListener.orphan_stopped,
}

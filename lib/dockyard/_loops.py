"""Background work: periodic loops, thread pools, retry back-offs, and what `close()` waits for."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, ParamSpec, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["Activity", "ManagedPool", "PeriodicTask"]

log = logging.getLogger("dockyard.loops")

P = ParamSpec("P")
T = TypeVar("T")


class Activity:
    """The threads inside one kind of work; `close()` refuses new ones and waits for the rest.

    The thread calling `close()` is never waited for, so closing from inside the work (a
    listener callback calling `ContainerManager.close`) cannot deadlock.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inside: dict[threading.Thread, int] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    @contextmanager
    def enter(self) -> Iterator[bool]:
        """Yields False (and tracks nothing) once closed."""
        me = threading.current_thread()
        with self._cond:
            if self._closed:
                allowed = False
            else:
                allowed = True
                self._inside[me] = self._inside.get(me, 0) + 1
        try:
            yield allowed
        finally:
            if allowed:
                with self._cond:
                    self._inside[me] -= 1
                    if not self._inside[me]:
                        del self._inside[me]
                    self._cond.notify_all()

    def inside(self) -> bool:
        with self._cond:
            return threading.current_thread() in self._inside

    def close(self) -> None:
        me = threading.current_thread()
        with self._cond:
            self._closed = True
            self._cond.wait_for(lambda: not (self._inside.keys() - {me}))


class ManagedPool:
    """A `ThreadPoolExecutor` whose shutdown is safe from one of its own threads."""

    def __init__(self, size: int, name: str) -> None:
        self._executor = ThreadPoolExecutor(size, thread_name_prefix=name)
        self._activity = Activity()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run `fn` on the pool; RuntimeError once shut down."""
        if self._activity.closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self._executor.submit(self._run, partial(fn, *args, **kwargs))

    def _run(self, call: Callable[[], T]) -> T:
        with self._activity.enter() as allowed:
            if not allowed:
                raise RuntimeError("the pool shut down before this task began")
            return call()

    def shutdown(self) -> None:
        """Cancel queued work, wait for running work (but the caller's own), join the threads."""
        inside = self._activity.inside()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._activity.close()
        if not inside:
            self._executor.shutdown(wait=True)


class PeriodicTask:
    """Runs `fn` every `interval` seconds until stopped; a failing run never ends the loop."""

    def __init__(self, name: str, fn: Callable[[], object]) -> None:
        self._name = name
        self._fn = fn
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def start(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"{self._name} interval must be positive, got {interval!r}")
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._loop, args=(interval, self._stop), name=self._name, daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self, interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            try:
                self._fn()
            except Exception as err:
                # Not `log.exception`: a host's logging integration would send it with the
                # locals of every frame. The tasks report their own failures.
                log.warning(
                    "background task failed",
                    extra={"task": self._name, "error_type": type(err).__name__},
                )

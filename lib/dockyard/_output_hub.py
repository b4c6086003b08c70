"""One manager's output machinery: each worker's pipe opened and read, the delivery threads.

The hub attaches to a worker's output before its start (or follows an adopted worker's
log after the previous manager's marks), starts a reader thread per worker, delivers on
one executor, and ends them all at `close`. How far delivery got is left for the next
manager: the hub hands its pipes to `marking` about once a second on a thread of its own
(never the delivery's: a mark costs a Redis write, a line must not), and the detached ones
to `keep` at its close.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ._listener import wants_output
from ._output import (
    DEFAULT_BUFFER_BYTES,
    DEFAULT_BUFFER_LINES,
    AttachedOutput,
    Frame,
    OutputCounters,
    OutputPipe,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from ._listener import SafeListener
    from ._models import WorkerLifecycleListener
    from ._secrets import Masker

__all__ = ["MARK_EVERY_S", "OutputHub"]

log = logging.getLogger("dockyard.output")

MARK_EVERY_S = 1.0  # how often the running workers' marks are left (`marking`)


class OutputHub:
    """One manager's output machinery: opens each worker's pipe (its reader started), owns
    the delivery threads, and ends every reader on `close`.

    Output is best effort: a stream that cannot be opened leaves the worker without live
    output (a warning), never without its launch. `follow` reads an adopted worker's
    output from the engine's log instead, after the given marks. With a listener for the
    lines, `marking` gets every pipe about every `mark_every_s` (on a thread of the hub's,
    started with the first worker), to leave how far delivery got while they run; on
    `close`, `keep` is handed the pipes of the workers still running, to leave it exactly.
    """

    def __init__(
        self,
        *,
        attach: Callable[[str], AttachedOutput] | None,
        enabled: bool,
        listener: WorkerLifecycleListener | None,
        sink: SafeListener,
        counters: OutputCounters,
        tail_lines: int,
        delivery_threads: int,
        buffer_lines: int = DEFAULT_BUFFER_LINES,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        follow: Callable[[str, Mapping[str, int] | None], AttachedOutput] | None = None,
        keep: Callable[[list[OutputPipe]], None] | None = None,
        marking: Callable[[list[OutputPipe]], None] | None = None,
        mark_every_s: float = MARK_EVERY_S,
    ) -> None:
        self.enabled = enabled and attach is not None
        self._attach = attach
        self._follow = follow
        self._keep = keep
        self._marking = marking
        self._mark_every_s = mark_every_s
        self._mark_thread: threading.Thread | None = None
        self._marks_stop = threading.Event()
        self._sink = sink if wants_output(listener) else None
        self._counters = counters
        self._tail_lines = tail_lines
        self._buffer_lines = buffer_lines
        self._buffer_bytes = buffer_bytes
        self._lock = threading.Lock()
        self._readers: dict[int, tuple[OutputPipe, threading.Thread]] = {}
        self._detached: list[OutputPipe] = []  # their workers run on: `keep` gets them
        # Every pipe not yet collected: one whose reader ended may still have lines queued.
        self._pipes: weakref.WeakSet[OutputPipe] = weakref.WeakSet()
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        if self.enabled and self._sink is not None:
            self._executor = ThreadPoolExecutor(
                max(1, delivery_threads), thread_name_prefix="dockyard-output"
            )

    @property
    def delivers(self) -> bool:  # lines go to a listener
        return self._sink is not None

    def open(self, worker_id: str, job_id: str, masker: Masker) -> OutputPipe | None:
        """Attach to a worker's output (before its start) and start reading it."""
        if self._attach is None or not self.enabled or self._closed:
            return None
        return self._start(self._attach, (worker_id,), worker_id, job_id, masker)

    def follow(
        self, worker_id: str, job_id: str, masker: Masker, after: Mapping[str, int] | None
    ) -> OutputPipe | None:
        """Read a running worker's output from the engine's log, after `after` (`follow`)."""
        if self._follow is None or not self.enabled or self._closed:
            return None
        return self._start(self._follow, (worker_id, after), worker_id, job_id, masker, after=after)

    def _start(
        self,
        opener: Callable[..., AttachedOutput],
        args: tuple[object, ...],
        worker_id: str,
        job_id: str,
        masker: Masker,
        *,
        after: Mapping[str, int] | None = None,
    ) -> OutputPipe | None:
        try:
            attached = opener(*args)
        except Exception as err:
            log.warning(
                "could not attach to a worker's output; it runs without live output",
                extra={"job_id": job_id, "error_type": type(err).__name__, "error": str(err)},
            )
            return None
        pipe = OutputPipe(
            masker,
            self._tail_lines,
            self._sink,
            self._executor,
            self._counters,
            buffer_lines=self._buffer_lines,
            buffer_bytes=self._buffer_bytes,
            job_id=job_id,
            close_source=attached.close,
            worker_id=worker_id,
            on_detach=self._on_detach,
            after=after,
        )
        thread = threading.Thread(
            target=self._read,
            args=(pipe, attached.frames),
            name=f"dockyard-output-{job_id[:40]}",
            daemon=True,
        )
        with self._lock:
            if self._closed:
                pipe.cancel()
                return None
            self._readers[id(pipe)] = (pipe, thread)
            self._pipes.add(pipe)
            self._start_marks()
        thread.start()
        return pipe

    def _start_marks(self) -> None:
        """The mark thread, started with the first pipe (under the lock: `close` joins it)."""
        if self._marking is None or self._sink is None or self._mark_thread is not None:
            return
        self._mark_thread = threading.Thread(
            target=self._mark_running, name="dockyard-output-marks", daemon=True
        )
        self._mark_thread.start()

    def _mark_running(self) -> None:
        assert self._marking is not None
        while not self._marks_stop.wait(self._mark_every_s):
            with self._lock:
                pipes = list(self._pipes)
            try:
                self._marking(pipes)
            except Exception:  # best effort: the next tick tries again
                log.warning("could not keep how far worker output was delivered", exc_info=True)

    def _on_detach(self, pipe: OutputPipe) -> None:
        with self._lock:
            self._detached.append(pipe)

    def _read(self, pipe: OutputPipe, frames: Iterable[Frame]) -> None:
        try:
            pipe.run_reader(frames)
        finally:
            with self._lock:
                self._readers.pop(id(pipe), None)

    def close(self, join_s: float = 2.0) -> None:
        """End every reader (their streams closed) and the delivery threads; lines still
        queued are dropped (a slow listener never holds `close` up). Then `keep` gets the
        pipes of the workers detached: they run on."""
        with self._lock:
            self._closed = True
            readers = list(self._readers.values())
            pipes = list(self._pipes)
            running, self._detached = self._detached, []
            marks = self._mark_thread
        # The mark thread ends first: what it last left is then overwritten by `keep`'s,
        # and it never takes the cancels below for workers that ended.
        self._marks_stop.set()
        if marks is not None:
            marks.join()
        for pipe in pipes:
            pipe.cancel()
        deadline = time.monotonic() + join_s
        for _, thread in readers:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._keep is not None and self._sink is not None and running:
            try:
                self._keep(running)
            except Exception as err:  # best effort: the next manager delivers from the start
                log.warning(
                    "could not keep how far worker output was delivered",
                    extra={"error_type": type(err).__name__, "error": str(err)},
                )

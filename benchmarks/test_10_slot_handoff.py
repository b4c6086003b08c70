"""Slot hand-off: one acquire and release through the fair gate, against the FIFO gate.

Pure Python, no Docker. The baseline is the FIFO gate dockyard had before per-project caps
and priorities (kept here as it was, so the comparison survives it). Two loads, both gates
in the one group of this run:
- uncontended: one thread takes and gives back a free slot;
- contended: 8 threads on 4 slots; the fair gate's waiters spread over three projects
  capped at 2 each, one without a project, and three priorities.
The figure is microseconds per acquire+release pair (lower is better).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import pytest

from dockyard._slots import SlotGate

from .harness import record

PAIRS = 2000  # acquire+release pairs per thread and round
THREADS = 8
CAPACITY = 4
PROJECTS = ["a", "b", "c", None]
CAP = 2


class FifoGate:
    """The FIFO gate before caps and priorities (its lease, acquire and release, as they were)."""

    def __init__(self, capacity: int) -> None:
        self._free = capacity
        self._lock = threading.Lock()
        self._waiters: deque[threading.Event] = deque()

    def lease(self, timeout: float | None) -> FifoLease | None:
        return FifoLease(self) if self.acquire(timeout) else None

    def acquire(self, timeout: float | None) -> bool:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            granted = threading.Event()
            self._waiters.append(granted)
        try:
            _wait(granted, timeout)
        except BaseException:
            if self._leave(granted):
                self.release()
            raise
        return self._leave(granted)

    def _leave(self, granted: threading.Event) -> bool:
        with self._lock:
            if granted.is_set():
                return True
            self._waiters.remove(granted)
            return False

    def release(self) -> None:
        with self._lock:
            if self._waiters and self._free >= 0:
                self._waiters.popleft().set()
            else:
                self._free += 1


class FifoLease:
    """The lease a worker held on the FIFO gate's slot (released once)."""

    def __init__(self, gate: FifoGate) -> None:
        self._gate = gate
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> bool:
        with self._lock:
            if not self._held:
                return False
            self._held = False
        self._gate.release()
        return True


def _wait(granted: threading.Event, timeout: float | None) -> None:
    if timeout is None or math.isinf(timeout) or timeout >= threading.TIMEOUT_MAX:
        granted.wait()
        return
    deadline = time.monotonic() + max(0.0, timeout)
    granted.wait(max(0.0, deadline - time.monotonic()))


def _fifo_loop(gate: FifoGate, _n: int):
    def run() -> None:
        for _ in range(PAIRS):
            gate.lease(None).release()

    return run


def _fair_loop(gate: SlotGate, n: int):
    project = PROJECTS[n % len(PROJECTS)]
    cap = None if project is None else CAP

    def run() -> None:
        for i in range(PAIRS):
            gate.lease(None, project=project, cap=cap, priority=(i + n) % 3).release()

    return run


_US_PER_PAIR: dict[str, float] = {}


@pytest.mark.parametrize("load", ["uncontended", "contended"])
@pytest.mark.parametrize("kind", ["fifo", "fair"])
def test_slot_handoff(benchmark, kind, load):
    benchmark.group = "slot-handoff"
    threads = 1 if load == "uncontended" else THREADS
    if kind == "fifo":
        fifo = FifoGate(CAPACITY)
        loops = [_fifo_loop(fifo, n) for n in range(threads)]
    else:
        fair = SlotGate(CAPACITY)
        loops = [_fair_loop(fair, n) for n in range(threads)]
    if threads == 1:
        benchmark.pedantic(loops[0], rounds=20, warmup_rounds=2)
    else:
        with ThreadPoolExecutor(threads) as pool:

            def run_threads() -> None:
                for future in [pool.submit(loop) for loop in loops]:
                    future.result()

            benchmark.pedantic(run_threads, rounds=10, warmup_rounds=1)
    us_per_pair = benchmark.stats.stats.median / (PAIRS * threads) * 1e6
    benchmark.extra_info["us_per_pair"] = round(us_per_pair, 3)
    if kind == "fifo":
        _US_PER_PAIR[load] = us_per_pair
    elif load in _US_PER_PAIR:
        record(
            benchmark,
            "us_per_pair",
            us_per_pair,
            _US_PER_PAIR[load],
            "us/pair",
            name=f"slot hand-off, {load}: fair gate / FIFO gate",
        )

"""The worker slot gate: a counting semaphore that serves waiters first come, first served."""

from __future__ import annotations

import threading
import time
from collections import deque

__all__ = ["SlotGate"]


class SlotGate:
    """At most `capacity` slots held at once; waiters are served in arrival order.

    A released slot is handed straight to the oldest waiter, so a late arrival can never
    overtake it, and the count can never exceed the capacity.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._free = capacity
        self._lock = threading.Lock()
        self._waiters: deque[threading.Event] = deque()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._capacity - self._free

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)

    def acquire(self, timeout: float | None) -> bool:
        """Take a slot, waiting up to `timeout` seconds (None: forever); False on timeout."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            granted = threading.Event()
            self._waiters.append(granted)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        granted.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._lock:
            if granted.is_set():  # also when handed over just as the wait timed out
                return True
            self._waiters.remove(granted)
            return False

    def acquire_over_capacity(self) -> None:
        """Take a slot even when none is free (adopted workers already run)."""
        with self._lock:
            self._free -= 1

    def release(self) -> None:
        with self._lock:
            if self._waiters and self._free >= 0:
                self._waiters.popleft().set()
            else:
                self._free += 1

"""Worker slots: a FIFO gate, and the lease a worker holds on a slot."""

from __future__ import annotations

import math
import threading
import time
from collections import deque

__all__ = ["SlotGate", "SlotLease"]


class SlotGate:
    """At most `capacity` slots held at once; waiters are served in arrival order.

    A released slot is handed straight to the oldest waiter, so a late arrival can never
    overtake it, and the count can never exceed the capacity. A wait that ends in any way
    but success (timeout, KeyboardInterrupt, a signal handler's exception) leaves the line,
    and gives on a slot that was handed over meanwhile.
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

    def lease(self, timeout: float | None) -> SlotLease | None:
        """A slot as a lease (released exactly once), or None on timeout."""
        return SlotLease(self) if self.acquire(timeout) else None

    def lease_over_capacity(self) -> SlotLease:
        """A slot even when none is free (adopted workers already run)."""
        with self._lock:
            self._free -= 1
        return SlotLease(self)

    def acquire(self, timeout: float | None) -> bool:
        """Take a slot, waiting up to `timeout` seconds (None or inf: forever); False on timeout."""
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
                self.release()  # handed over as the wait broke: not ours to keep
            raise
        return self._leave(granted)

    def _leave(self, granted: threading.Event) -> bool:
        """End a wait; True when the slot was handed over (also just as the wait ended)."""
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


def _wait(granted: threading.Event, timeout: float | None) -> None:
    if timeout is None or math.isinf(timeout) or timeout >= threading.TIMEOUT_MAX:
        granted.wait()  # `monotonic() + inf` would make Event.wait raise OverflowError
        return
    deadline = time.monotonic() + max(0.0, timeout)
    granted.wait(max(0.0, deadline - time.monotonic()))


class SlotLease:
    """One held slot; `release()` gives it back once, any later call does nothing."""

    def __init__(self, gate: SlotGate) -> None:
        self._gate = gate
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> bool:
        """Give the slot back; True only for the call that did."""
        with self._lock:
            if not self._held:
                return False
            self._held = False
        self._gate.release()
        return True

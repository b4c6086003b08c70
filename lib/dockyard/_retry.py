"""Retry policy: attempts, back-off and an overall window; sleeps a stop event can end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RetryPolicy", "RetryRun"]


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying: like urllib3's `Retry`, but the sleeps end on a stop event.

    A run ends when `attempts` retries were made (None: no count limit) or when the
    window since the run began has passed (None: no time limit), whichever comes first.
    """

    first_delay_s: float = 0.2
    max_delay_s: float = 5.0
    window_s: float | None = 60.0
    attempts: int | None = None

    @classmethod
    def immediate(cls, window_s: float | None = 5.0, attempts: int | None = None) -> RetryPolicy:
        """No back-off at all: for tests that must not sleep."""
        return cls(first_delay_s=0.0, max_delay_s=0.0, window_s=window_s, attempts=attempts)

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.first_delay_s * float(2 ** min(attempt, 32)))

    def begin(self, stop: threading.Event, clock: Callable[[], float] = time.monotonic) -> RetryRun:
        return RetryRun(self, stop, clock)


@dataclass
class RetryRun:
    """One sequence of retries under a policy; `sleep()` is the only blocking part."""

    policy: RetryPolicy
    stop: threading.Event
    clock: Callable[[], float] = time.monotonic
    attempt: int = 0
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def exhausted(self) -> bool:
        """True once the count or the window is spent, or the run was stopped."""
        if self.stop.is_set():
            return True
        if self.policy.attempts is not None and self.attempt >= self.policy.attempts:
            return True
        window = self.policy.window_s
        return window is not None and self.clock() - self.started > window

    def sleep(self) -> bool:
        """Back off before the next attempt; False (without sleeping) when the run is over."""
        if self.exhausted:
            return False
        delay = self.policy.delay(self.attempt)
        self.attempt += 1
        if delay > 0 and self.stop.wait(delay):
            return False
        return not self.stop.is_set()

    def reset(self) -> None:
        """Progress was made: count and window start again."""
        self.attempt = 0
        self.started = self.clock()

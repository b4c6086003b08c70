"""Retries: one frozen policy (which errors, one back-off, a count and a window) and its runner.

In the spirit of urllib3's `Retry`: a `RetryPolicy` says which error types are worth another
try, how long to back off (exponential from `first_delay_s`, capped at `max_delay_s`) and
when to give up (`attempts` retries, or `window_s` seconds since the first attempt). A run
under it is an immutable `RetryState`: `increment(error)` returns the state for the next
attempt, or raises `RetriesExhaustedError` (the last error as its cause) when the error is
not retried, the count or window is spent, or the stop event is set. `sleep()` waits out
the back-off and ends early when the stop event is set (a manager's `close()`, a worker's
end). `call_with_retry` runs one call under a policy.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

from ._errors import RetriesExhaustedError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RetryPolicy", "RetryState", "call_with_retry"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Which errors to retry, the back-off between tries, and when to give up.

    `attempts`: retries after the first try (None: no count limit); `window_s`: seconds
    since the first try after which no retry starts (None: no time limit).
    """

    retry_on: tuple[type[BaseException], ...]
    attempts: int | None = None
    window_s: float | None = None
    first_delay_s: float = 0.2
    max_delay_s: float = 5.0

    def delay(self, retry: int) -> float:
        """The back-off before retry number `retry` (0 for the first)."""
        return min(self.max_delay_s, self.first_delay_s * float(2 ** min(retry, 32)))

    def begin(
        self, stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic
    ) -> RetryState:
        """A run under this policy, starting now; `stop` ends it (and its sleeps) early."""
        return RetryState(self, stop or threading.Event(), clock, 0, clock())


@dataclass(frozen=True)
class RetryState:
    """One run under a policy: `attempt` retries made so far since `started`."""

    policy: RetryPolicy
    stop: threading.Event = field(repr=False)
    clock: Callable[[], float] = field(repr=False)
    attempt: int
    started: float
    last_error: BaseException | None = None

    @property
    def exhausted(self) -> bool:
        """True once the count or the window is spent, or the run was stopped."""
        if self.stop.is_set():
            return True
        attempts = self.policy.attempts
        if attempts is not None and self.attempt >= attempts:
            return True
        window = self.policy.window_s
        return window is not None and self.clock() - self.started > window

    def increment(self, error: BaseException) -> RetryState:
        """The state for one more try after `error`; raises when there is none.

        `RetriesExhaustedError` (with `error` as `last_error` and cause) when `error` is
        not one the policy retries, or the run is exhausted.
        """
        if not isinstance(error, self.policy.retry_on):
            raise RetriesExhaustedError(f"not retried: {error}", error) from error
        if self.exhausted:
            raise RetriesExhaustedError(
                f"gave up after {self.attempt + 1} tries: {error}", error
            ) from error
        return replace(self, attempt=self.attempt + 1, last_error=error)

    @property
    def delay(self) -> float:
        """The back-off before the try this state stands for (0 before the first retry)."""
        return self.policy.delay(self.attempt - 1) if self.attempt > 0 else 0.0

    def sleep(self) -> None:
        """Wait out the back-off; raises `RetriesExhaustedError` when stopped meanwhile."""
        delay = self.delay
        if (delay > 0 and self.stop.wait(delay)) or self.stop.is_set():
            error = self.last_error
            raise RetriesExhaustedError(f"stopped: {error}", error) from error


def call_with_retry(
    policy: RetryPolicy,
    fn: Callable[[], T],
    *,
    stop: threading.Event | None = None,
    on_retry: Callable[[BaseException, RetryState], None] | None = None,
    raise_last: bool = False,
) -> T:
    """`fn()`, tried again under `policy` while it raises what the policy retries.

    An error the policy does not retry propagates as it is; running out raises
    `RetriesExhaustedError` carrying the last error, or with `raise_last` that error
    itself (for callers whose own callers judge the engine's answer). `on_retry` hears
    of each retry before its back-off.
    """
    state = policy.begin(stop)
    while True:
        try:
            return fn()
        except policy.retry_on as err:
            try:
                state = state.increment(err)
                if on_retry is not None:
                    on_retry(err, state)
                state.sleep()
            except RetriesExhaustedError as out:
                if raise_last and out.last_error is not None:
                    raise out.last_error from None
                raise

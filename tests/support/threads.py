"""Threads: the ones a test leaves behind, and waiting for what happens on them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class ThreadBaseline:
    """The threads alive at set-up, to find threads a test left behind."""

    def __init__(self) -> None:
        self.before: frozenset[threading.Thread] = frozenset(threading.enumerate())

    def new_threads(self, timeout: float = 2.0) -> list[threading.Thread]:
        """Threads started since set-up that are still alive after up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            extra = [t for t in threading.enumerate() if t not in self.before and t.is_alive()]
            if not extra or time.monotonic() >= deadline:
                return extra
            for thread in extra:
                thread.join(max(0.0, min(0.05, deadline - time.monotonic())))

    def assert_no_new_threads(self, timeout: float = 2.0) -> None:
        """Fail when threads started since set-up are still alive after ``timeout`` s."""
        extra = self.new_threads(timeout)
        assert not extra, "threads left behind: " + ", ".join(
            f"{t.name} (daemon={t.daemon})" for t in extra
        )


def eventually(
    predicate: Callable[[], bool], timeout: float = 15.0, *, interval: float = 0.02, what: str = ""
) -> None:
    """Poll ``predicate`` every ``interval`` s until it holds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in time: {what or predicate}")
        time.sleep(interval)

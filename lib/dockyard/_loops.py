"""Background loops: a named daemon thread that runs one callable every `interval` seconds."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["PeriodicTask"]

log = logging.getLogger("dockyard.loops")


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

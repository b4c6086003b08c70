"""The real sentry-sdk with a capturing transport: events kept in a list, nothing sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import sentry_sdk
import sentry_sdk.transport


class CapturedEvents(list[dict[str, Any]]):
    """The events captured by the test transport (a plain list of event dicts)."""

    def with_source(self, source: str) -> list[dict[str, Any]]:
        """Events whose ``source`` tag equals ``source``."""
        return [e for e in list(self) if (e.get("tags") or {}).get("source") == source]

    def wait_for(
        self,
        source: str | None = None,
        *,
        count: int = 1,
        timeout: float = 5.0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` matching events arrived (from any thread); return them.

        Raises ``AssertionError`` on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            events = list(self) if source is None else self.with_source(source)
            if predicate is not None:
                events = [e for e in events if predicate(e)]
            if len(events) >= count:
                return events
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"expected {count} Sentry event(s) with source={source!r} within "
                    f"{timeout}s, got {len(events)}; all events: {list(self)!r}"
                )
            time.sleep(0.02)


CAPTURED_EVENTS = CapturedEvents()
_sentry_lock = threading.Lock()


class CapturingTransport(sentry_sdk.transport.Transport):
    """A sentry-sdk transport that keeps events in :data:`CAPTURED_EVENTS`; no network."""

    def capture_envelope(self, envelope: Any) -> None:
        event = envelope.get_event()
        if event is not None:
            CAPTURED_EVENTS.append(event)

    def flush(self, timeout: float, callback: Any | None = None) -> None:
        return None

    def kill(self) -> None:
        return None


def init_test_sentry() -> None:
    """Initialise the real sentry-sdk once per process with :class:`CapturingTransport`."""
    with _sentry_lock:
        if isinstance(sentry_sdk.get_client().transport, CapturingTransport):
            return
        sentry_sdk.init(
            dsn="https://public@example.invalid/1",
            transport=CapturingTransport,
            default_integrations=False,
            auto_enabling_integrations=False,
            auto_session_tracking=False,
            send_client_reports=False,
            enable_backpressure_handling=False,
            traces_sample_rate=None,
            release="dockyard-tests",
            environment="test",
            server_name="dockyard-test",
            sample_rate=1.0,
            debug=False,
        )

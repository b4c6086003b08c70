"""The ``sentry_events`` fixture captures real sentry-sdk events without any network."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
import sentry_sdk

from support.sentry import CapturedEvents


def _no_network(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"network access attempted: {args!r}")


def test_capture_exception_lands_with_tags_and_extras(
    sentry_events: CapturedEvents, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)

    assert sentry_events == []
    event_id = sentry_sdk.capture_exception(ValueError("x"), tags={"source": "t"}, extras={"a": 1})
    sentry_sdk.flush(timeout=1.0)

    assert event_id is not None
    assert len(sentry_events) == 1
    event = sentry_events[0]
    assert event["tags"]["source"] == "t"
    assert event["extra"]["a"] == 1
    (exc,) = event["exception"]["values"]
    assert exc["type"] == "ValueError"
    assert exc["value"] == "x"
    assert sentry_events.with_source("t") == [event]


def test_each_test_starts_empty_and_level_is_kept(sentry_events: CapturedEvents) -> None:
    assert sentry_events == []
    sentry_sdk.capture_exception(RuntimeError("w"), level="warning", tags={"source": "w"})
    assert [e["level"] for e in sentry_events] == ["warning"]


def test_scope_kwargs_do_not_leak_into_the_global_scope(sentry_events: CapturedEvents) -> None:
    sentry_sdk.capture_exception(ValueError("a"), tags={"source": "a"}, extras={"k": 1})
    sentry_sdk.capture_exception(ValueError("b"))
    first, second = sentry_events
    assert first["tags"] == {"source": "a"}
    assert "source" not in (second.get("tags") or {})
    assert "k" not in (second.get("extra") or {})


def test_events_from_other_threads_are_captured(sentry_events: CapturedEvents) -> None:
    def report() -> None:
        sentry_sdk.capture_exception(OSError("bg"), tags={"source": "background"})

    thread = threading.Timer(0.05, report)
    thread.start()
    (event,) = sentry_events.wait_for("background", timeout=5.0)
    thread.join()
    assert event["exception"]["values"][0]["value"] == "bg"

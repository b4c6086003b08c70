"""Failure reports to Sentry: one call, the spec's tags and extras, the host's scopes untouched."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

import sentry_sdk

__all__ = ["Reporter", "SentryReporter", "WorkerExitError", "WorkerTimeoutError"]

log = logging.getLogger("dockyard.sentry")

Level = Literal["fatal", "error", "warning", "info", "debug"]
ExtraValue = str | int | float | bool | None


class WorkerExitError(RuntimeError):
    """Reported when a worker exits non-zero (never raised to callers)."""


class WorkerTimeoutError(TimeoutError):
    """Reported when a worker overruns its deadline (never raised to callers)."""


class Reporter:
    """Where failures go. The base class only logs; substitute it in tests."""

    def report(
        self,
        err: BaseException,
        source: str,
        *,
        level: Level = "error",
        tags: Mapping[str, str] | None = None,
        extras: Mapping[str, ExtraValue] | None = None,
    ) -> None:
        """Report `err` under the `source` tag; must never raise."""
        log.debug("report source=%s %s", source, type(err).__name__)


class SentryReporter(Reporter):
    """Reports through `sentry_sdk.capture_exception` with per-event tags and extras.

    The kwargs apply to a copy of the current scope, so the host's scope is untouched; the
    SDK must be initialised by the host (without it every capture is a no-op). Extras only
    ever carry ids, codes and durations, never env values or credentials.
    """

    def report(
        self,
        err: BaseException,
        source: str,
        *,
        level: Level = "error",
        tags: Mapping[str, str] | None = None,
        extras: Mapping[str, ExtraValue] | None = None,
    ) -> None:
        try:
            sentry_sdk.capture_exception(
                err,
                tags={"source": source, **(tags or {})},
                extras=dict(extras or {}),  # `extras`, plural: `extra=` drops the event
                level=level,
            )
        except Exception:  # a broken reporter must never break a worker's lifecycle
            log.warning("sentry capture failed", extra={"source": source}, exc_info=True)

"""Failure reports to Sentry: one call, the spec's tags and extras, the host's scopes untouched."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import sentry_sdk

from ._errors import copy_error
from ._secrets import Masker, SecretBook

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sentry_sdk._types import Event

__all__ = [
    "Report",
    "Reporter",
    "SentryReporter",
    "scrub_event",
    "scrub_for_host",
]

log = logging.getLogger("dockyard.sentry")

Level = Literal["fatal", "error", "warning", "info", "debug"]
ExtraValue = str | int | float | bool | None


@dataclass
class Report:
    """One failure dockyard reported: what Sentry would have received."""

    err: BaseException
    source: str
    level: Level
    tags: dict[str, str]
    extras: dict[str, ExtraValue]


class Reporter:
    """Where failures go. The base class only logs; substitute it in tests.

    A subclass overrides `report`, or `_deliver` to receive each report as one `Report`.
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
        """Report `err` under the `source` tag; must never raise."""
        self._deliver(Report(err, source, level, dict(tags or {}), dict(extras or {})))

    def _deliver(self, report: Report) -> None:
        log.debug("report source=%s %s", report.source, type(report.err).__name__)


class SentryReporter(Reporter):
    """Reports through `sentry_sdk.capture_exception` with per-event tags and extras.

    The kwargs apply to a copy of the current scope, so the host's scope is untouched; the
    SDK must be initialised by the host (without it every capture is a no-op). Extras only
    ever carry ids, codes and durations, never env values or credentials.

    A host runs the SDK with its defaults, which send the local variables of every frame
    of the reported exception; dockyard's frames (and docker-py's below them) hold worker
    environments, credentials and job data. So each capture happens in a scope of its own
    (`sentry_sdk.new_scope()`, a fork of the current scope that ends with the call) carrying
    one event processor, `scrub_event`: it drops the locals of every frame and masks every
    secret value the manager knows of, wherever in the event it shows up. Dropping locals
    is the guarantee (no secret type can cover a docker-py local); masking by value catches
    what reaches a message or a breadcrumb. The host's options and scopes are never touched.
    """

    def __init__(self, secrets: SecretBook | None = None) -> None:
        self._secrets = secrets

    def _deliver(self, report: Report) -> None:
        try:
            masker = self._secrets.masker() if self._secrets is not None else Masker(frozenset())
            with sentry_sdk.new_scope() as scope:
                scope.add_event_processor(
                    lambda event, _hint: cast("Event", scrub_event(dict(event), masker))
                )
                sentry_sdk.capture_exception(
                    # A copy: the SDK's dedupe drops a second report of one object (a pull
                    # failure is `worker_image_pull_fallback`, then `worker_spawn_fallback`).
                    copy_error(report.err, keep_traceback=True),
                    tags={"source": report.source, **report.tags},
                    extras=report.extras,  # `extras`, plural: `extra=` drops the event
                    level=report.level,
                )
        except Exception as failure:  # a broken reporter must never break a worker's lifecycle
            log.warning(
                "sentry capture failed",
                extra={"source": report.source, "error_type": type(failure).__name__},
            )


def scrub_event(event: dict[str, Any], masker: Masker) -> dict[str, Any]:
    """The event without frame locals, with every known secret value masked."""
    for section in ("exception", "threads"):
        for value in (event.get(section) or {}).get("values") or []:
            for frame in (value.get("stacktrace") or {}).get("frames") or []:
                frame.pop("vars", None)
    if not masker:
        return event
    masked: dict[str, Any] = masker.mask_deep(event)
    return masked


def scrub_for_host(err: BaseException) -> BaseException:
    """`err` made safe to raise to the host, whose Sentry records the locals of every frame.

    The tracebacks of `err` and of every exception chained to it hold dockyard's and
    docker-py's frames, whose locals include the worker environment: they are cut, so the
    host's event shows the error types and messages and the frame that raised it to the
    host, nothing below it.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        node.__traceback__ = None
        stack += [node.__cause__, node.__context__]
        stack += list(getattr(node, "exceptions", ()))  # an ExceptionGroup's members
    return err

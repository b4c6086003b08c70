"""Engine errors: the one place that turns docker-py and requests failures into typed errors.

Every gateway call runs through `EngineCalls.run`, which times the call for an optional
observer and translates what escapes it: an engine that does not answer becomes
`DockerUnavailableError`, an engine that says no becomes an `EngineError` (with
`EngineNotFoundError` and `EngineConflictError` for the answers callers branch on). The
predicates below understand both these and the raw docker-py errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import requests
from docker.errors import APIError, DockerException, NotFound

from ._errors import DockerUnavailableError, DockyardError, WorkerSpawnError

__all__ = [
    "CallObserver",
    "EngineCalls",
    "EngineConflictError",
    "EngineError",
    "EngineNotFoundError",
    "EngineTimeoutError",
    "ObservedEngine",
    "as_spawn_error",
    "call_result",
    "is_conflict",
    "is_missing_image",
    "is_not_found",
    "is_timeout",
    "is_unreachable",
    "translate",
]

log = logging.getLogger("dockyard.docker")

T = TypeVar("T")

CallObserver = Callable[[str, str, float], None]
"""`(operation, result, seconds)`: told about every engine call once it ended."""

# Errors that mean "the engine did not answer" rather than "the engine said no".
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    ConnectionError,
    TimeoutError,
)
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (requests.exceptions.Timeout, TimeoutError)
_UNAVAILABLE_STATUSES = (502, 503, 504)


class EngineError(DockyardError):
    """The engine answered a call with an error status; the docker-py error is the cause."""

    def __init__(self, operation: str, status_code: int | None, explanation: str) -> None:
        status = f" ({status_code})" if status_code is not None else ""
        super().__init__(f"Docker {operation} failed{status}: {explanation}")
        self.operation = operation
        self.status_code = status_code
        self.explanation = explanation

    def __reduce__(self) -> tuple[type[EngineError], tuple[str, int | None, str]]:
        # `copy.copy` (the image puller hands each caller its own copy) rebuilds from these.
        return type(self), (self.operation, self.status_code, self.explanation)


class EngineNotFoundError(EngineError, LookupError):
    """404: no such container, image or network (`explanation` says which)."""


class EngineConflictError(EngineError):
    """409: a name in use, or a removal already under way."""


class EngineTimeoutError(DockerUnavailableError, TimeoutError):
    """The engine took longer than the call's timeout to answer."""


def translate(operation: str, err: BaseException) -> BaseException:
    """The typed error for what escaped an engine call (typed errors pass through)."""
    if isinstance(err, DockyardError):
        return err
    if isinstance(err, APIError):
        status = _status(err)
        explanation = str(err.explanation or err)
        if status in _UNAVAILABLE_STATUSES:
            return DockerUnavailableError(f"Docker {operation}: engine unavailable ({status})")
        cls = {404: EngineNotFoundError, 409: EngineConflictError}.get(status or 0, EngineError)
        return cls(operation, status, explanation)
    if isinstance(err, _TIMEOUT_ERRORS):
        return EngineTimeoutError(f"Docker {operation}: no answer in time")
    if isinstance(err, TRANSPORT_ERRORS):
        return DockerUnavailableError(f"Docker {operation}: engine unreachable ({err})")
    if isinstance(err, DockerException | requests.exceptions.RequestException):
        return EngineError(operation, None, str(err))
    return err  # not an engine error (a bug, an interrupt): unchanged


def call_result(err: BaseException | None) -> str:
    """How an engine call ended, for metrics: `ok`, `not_found`, `conflict`, `unreachable`,
    `error`."""
    if err is None:
        return "ok"
    return _result_of(translate("call", err))


def _result_of(err: BaseException) -> str:
    if isinstance(err, DockerUnavailableError):
        return "unreachable"
    if isinstance(err, EngineNotFoundError):
        return "not_found"
    if isinstance(err, EngineConflictError):
        return "conflict"
    return "error"


class EngineCalls:
    """Runs engine calls: timed for the observer, errors translated. One choke point."""

    def __init__(self, observer: CallObserver | None = None) -> None:
        self.observer = observer

    def run(self, operation: str, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        try:
            result = fn()
        except BaseException as err:
            typed = translate(operation, err)
            self._observe(operation, _result_of(typed), started)
            if typed is err:
                raise
            raise typed from err
        self._observe(operation, "ok", started)
        return result

    def _observe(self, operation: str, result: str, started: float) -> None:
        if self.observer is None:
            return
        try:
            self.observer(operation, result, time.monotonic() - started)
        except Exception:  # a broken metrics hook must never break an engine call
            log.debug("engine call observer failed", exc_info=True)


class ObservedEngine:
    """A gateway whose engine calls all run through one `EngineCalls`, `calls`."""

    calls: EngineCalls

    @property
    def observer(self) -> CallObserver | None:
        """Told of every engine call that runs through `calls`."""
        return self.calls.observer

    @observer.setter
    def observer(self, observer: CallObserver | None) -> None:
        self.calls.observer = observer


def as_spawn_error(err: BaseException) -> BaseException:
    """What `spawn_worker` raises for `err`: public `DockyardError`s only.

    Engine refusals become `WorkerSpawnError` with the engine's status and the docker-py
    error as the cause; public typed errors stay as they are.
    """
    typed = translate("launch", err)
    if isinstance(typed, EngineError):
        spawn = WorkerSpawnError(str(typed), typed.status_code)
        spawn.__cause__ = typed.__cause__ if typed.__cause__ is not None else err
        return spawn
    if isinstance(typed, DockyardError):
        if typed is not err:
            typed.__cause__ = err
        return typed
    if isinstance(typed, Exception):
        spawn = WorkerSpawnError(f"launch failed: {typed}")
        spawn.__cause__ = typed
        return spawn
    return typed  # KeyboardInterrupt, SystemExit: never disguised


def _status(err: BaseException) -> int | None:
    if isinstance(err, EngineError | APIError):
        if err.status_code is None and isinstance(err, NotFound):
            return 404  # docker-py's NotFound made without a response
        return err.status_code
    return None


def is_unreachable(err: BaseException) -> bool:
    """True when the engine could not be reached or dropped the connection."""
    if isinstance(err, (DockerUnavailableError, *TRANSPORT_ERRORS)):
        return True
    return _status(err) in _UNAVAILABLE_STATUSES


def is_timeout(err: BaseException) -> bool:
    """True when the engine did not answer within the call's timeout."""
    return isinstance(err, (EngineTimeoutError, *_TIMEOUT_ERRORS))


def is_not_found(err: BaseException) -> bool:
    return _status(err) == 404


def is_conflict(err: BaseException) -> bool:
    return _status(err) == 409


def is_missing_image(err: BaseException) -> bool:
    """A 404 whose text says the image does not exist (not a missing container or network)."""
    if not is_not_found(err):
        return False
    text = f"{getattr(err, 'explanation', '') or ''} {err}".lower()
    return "no such image" in text

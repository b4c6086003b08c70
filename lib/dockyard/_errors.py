"""Errors: every error class dockyard defines, and the one table that maps engine failures.

`translate` turns what escapes a call to the layer below (docker-py, requests) into a typed
error, as httpx's `_exceptions` maps httpcore's: an engine that does not answer becomes
`DockerUnavailableError` (`EngineTimeoutError` when it was too slow), an engine that says no
an `EngineError` subclass chosen by the table below from the HTTP status and the engine's
message. Podman answers several refusals with 500 and a message where Docker has its own
status: the message rows recognise both, so no caller ever sniffs a message. Callers catch
the types (`except ImageNotFoundError:`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import requests
from docker.errors import APIError, DockerException, NotFound

__all__ = [
    "TRANSIENT_ERRORS",
    "ConfigError",
    "ContainerNotFoundError",
    "DockerUnavailableError",
    "DockyardError",
    "DuplicateJobError",
    "EngineConflictError",
    "EngineError",
    "EngineImageHasChildrenError",
    "EngineNotFoundError",
    "EngineServerError",
    "EngineTimeoutError",
    "EngineUnreachableError",
    "ExitWaitClosedError",
    "ForkedManagerError",
    "ImageNotFoundError",
    "InvalidJobError",
    "InvalidReferenceError",
    "JobDataOffloadError",
    "ManagerClosedError",
    "NameInUseError",
    "NetworkNotFoundError",
    "NoWorkerSlotError",
    "RemovalInProgressError",
    "RetriesExhaustedError",
    "SnapshotScrubError",
    "StillRunningError",
    "StreamIdle",
    "UnpullableImageError",
    "UsageError",
    "WorkerCancelledError",
    "WorkerExitError",
    "WorkerImageResolutionError",
    "WorkerSpawnError",
    "WorkerTimeoutError",
    "copy_error",
    "result_of",
    "translate",
]


# -- public errors --


class DockyardError(Exception):
    """Base class of every error dockyard raises on purpose."""


class ConfigError(DockyardError, ValueError):
    """A configuration value is missing or invalid; the message names the field or variable."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


class InvalidJobError(DockyardError, ValueError):
    """A job cannot be run as given; raised before any container exists."""


class DuplicateJobError(DockyardError):
    """A worker for this job id is still active, or for another id with the same container name.

    `other_job_id` and `container_name` are set in the second case.
    """

    def __init__(
        self, job_id: str, *, other_job_id: str | None = None, container_name: str | None = None
    ) -> None:
        if other_job_id is None:
            message = f"a worker for job {job_id!r} is still active"
        else:
            message = (
                f"job {job_id!r} maps to container name {container_name!r}, which job "
                f"{other_job_id!r} holds; job ids must differ in [A-Za-z0-9_.-] characters"
            )
        super().__init__(message)
        self.job_id = job_id
        self.other_job_id = other_job_id
        self.container_name = container_name


class NoWorkerSlotError(DockyardError, TimeoutError):
    """No worker slot became free within the slot wait timeout.

    `limit` says what was full: ``"router"`` (all `max_workers` slots busy) or
    ``"project"`` (the job's project at its cap, `project_cap`).
    """

    def __init__(
        self,
        job_id: str,
        waited_s: float,
        max_workers: int,
        *,
        project_id: str | None = None,
        project_cap: int | None = None,
        router_full: bool = True,
    ) -> None:
        busy = []
        if project_cap is not None:
            busy.append(f"project {project_id!r} at its cap of {project_cap}")
        if router_full or project_cap is None:
            busy.append(f"all {max_workers} slots busy")
        super().__init__(
            f"no worker slot for job {job_id!r} after {waited_s:g}s ({'; '.join(busy)})"
        )
        self.job_id = job_id
        self.waited_s = waited_s
        self.max_workers = max_workers
        self.project_id = project_id
        self.project_cap = project_cap
        self.limit = "project" if project_cap is not None else "router"


class WorkerCancelledError(DockyardError):
    """`cancel_worker` ended a spawn before its worker ran (`waiting`: in the slot line)."""

    def __init__(self, job_id: str, *, waiting: bool = True) -> None:
        where = "while waiting for a worker slot" if waiting else "before its worker started"
        super().__init__(f"job {job_id!r} was cancelled {where}")
        self.job_id = job_id
        self.waiting = waiting


class WorkerImageResolutionError(DockyardError):
    """A project's own worker image cannot be used; the job must not fall back to another."""


class DockerUnavailableError(DockyardError, ConnectionError):
    """The Docker engine cannot be reached."""


class WorkerSpawnError(DockyardError):
    """The engine refused to create or start a worker's container.

    `status_code` is the engine's HTTP status (None when the refusal did not come as one);
    the engine's own error is the `__cause__`.
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class JobDataOffloadError(DockyardError):
    """The job data could not be written to the job data store; no container was made."""


class ForkedManagerError(DockyardError, RuntimeError):
    """A `ContainerManager` was used in a process forked after it was created.

    Its threads, pools and engine connections stayed with the parent; the child must create
    a manager of its own, after the fork. `owner_pid` created it, `pid` tried to use it.
    """

    def __init__(self, owner_pid: int, pid: int) -> None:
        super().__init__(
            f"this ContainerManager was created in process {owner_pid} and cannot be used in "
            f"process {pid}, forked from it: its threads, pools and engine connections stay "
            "with the parent. Create the ContainerManager in the child, after the fork "
            "(gunicorn: in post_fork or the app factory, not at import under --preload; "
            "Celery prefork: on worker_process_init; RQ: inside the job)"
        )
        self.owner_pid = owner_pid
        self.pid = pid

    def __reduce__(self) -> tuple[type[ForkedManagerError], tuple[int, int]]:
        # multiprocessing pickles a pool worker's exception back to the parent.
        return type(self), (self.owner_pid, self.pid)


# -- engine errors: what the table below produces --


class EngineError(DockyardError):
    """The engine answered a call with an error; the layer below's error is the cause."""

    def __init__(self, operation: str, status_code: int | None, explanation: str) -> None:
        status = f" ({status_code})" if status_code is not None else ""
        super().__init__(f"Docker {operation} failed{status}: {explanation}")
        self.operation = operation
        self.status_code = status_code
        self.explanation = explanation

    def __reduce__(self) -> tuple[type[EngineError], tuple[str, int | None, str]]:
        # `copy.copy` (`copy_error`) rebuilds from these.
        return type(self), (self.operation, self.status_code, self.explanation)


class EngineNotFoundError(EngineError, LookupError):
    """No such object (container, image, network, service); a subclass says which when known."""


class ContainerNotFoundError(EngineNotFoundError):
    """No such container (or worker): gone, or never made."""


class ImageNotFoundError(EngineNotFoundError):
    """No such image on the engine (a create never pulls by itself)."""


class NetworkNotFoundError(EngineNotFoundError):
    """No such network."""


class EngineConflictError(EngineError):
    """The object's state forbids the call: a name in use, a removal under way."""


class NameInUseError(EngineConflictError):
    """Another object already has this name."""


class RemovalInProgressError(EngineConflictError):
    """The engine is already removing this container (its own auto-removal, say)."""


class InvalidReferenceError(EngineError, ValueError):
    """The engine refused an image reference as malformed."""


class EngineServerError(EngineError):
    """The engine failed on its side (5xx): worth another try."""


class EngineImageHasChildrenError(EngineConflictError):
    """409 on an image removal: the image is the parent of another image, so it cannot be
    removed (not even forced) before its children are. Not "in use": no container holds it,
    and retrying changes nothing while the children stay."""


class EngineTimeoutError(DockerUnavailableError, TimeoutError):
    """The engine took longer than the call's timeout to answer."""


class EngineUnreachableError(DockerUnavailableError):
    """No answer at all: the connection failed or broke, or a proxy said the engine is down."""


class ExitWaitClosedError(DockerUnavailableError):
    """The exit wait was closed (or its gateway shut down) before the container exited."""


class StreamIdle(Exception):
    """The events stream was quiet for a whole heartbeat: reconnect, keep the tickets."""


class StillRunningError(Exception):
    """A polled task has not ended yet: a poll under a retry policy looks again."""


class UnpullableImageError(LookupError):
    """The image is a bare image id: absent locally, and no registry can serve it by id."""


class SnapshotScrubError(RuntimeError):
    """A committed image still holds an environment value that had to be blanked."""


class RetriesExhaustedError(DockyardError):
    """A retry policy ran out (count, window, or stopped); `last_error` is also the cause."""

    def __init__(self, message: str, last_error: BaseException | None) -> None:
        super().__init__(message)
        self.last_error = last_error


class ManagerClosedError(Exception):
    """The manager closed while a background step (adoption) was under way."""


class UsageError(Exception):
    """Something to say on one stderr line before exiting with status 2; nothing was started."""


# Reported to Sentry, never raised to callers.


class WorkerExitError(RuntimeError):
    """Reported when a worker exits non-zero (never raised to callers)."""


class WorkerTimeoutError(TimeoutError):
    """Reported when a worker overruns its deadline (never raised to callers)."""


# -- the mapping table --


@dataclass(frozen=True)
class _Row:
    """Engine answers with one of `statuses` (empty: any) whose message matches `pattern`."""

    error: type[EngineError]
    statuses: frozenset[int] = frozenset()
    pattern: re.Pattern[str] | None = None

    def matches(self, status: int | None, message: str) -> bool:
        if self.statuses and status not in self.statuses:
            return False
        return self.pattern is None or self.pattern.search(message) is not None


def _says(*phrases: str) -> re.Pattern[str]:
    return re.compile("|".join(phrases), re.IGNORECASE)


# First match wins: the message rows (Docker's and Podman's wording, whatever the status)
# come before the bare status rows.
ENGINE_ANSWERS: tuple[_Row, ...] = (
    _Row(ImageNotFoundError, pattern=_says(r"no such image", r"image not known")),
    _Row(
        NetworkNotFoundError,
        pattern=_says(r"network \S+ not found", r"no such network", r"unable to find network"),
    ),
    _Row(
        ContainerNotFoundError,
        pattern=_says(r"no such container", r"no container with (?:name or )?id .* found"),
    ),
    _Row(RemovalInProgressError, pattern=_says(r"removal of container .* already in progress")),
    # Docker: "conflict: unable to delete ... (cannot be forced) - image has dependent child
    # images": the image is another image's parent.
    _Row(EngineImageHasChildrenError, pattern=_says(r"dependent child images")),
    _Row(NameInUseError, pattern=_says(r"name .* is already in use")),
    # Docker says "invalid reference format: repository name must be lowercase"; Podman
    # says only the second half.
    _Row(
        InvalidReferenceError,
        pattern=_says(r"invalid reference format", r"repository name must be lowercase"),
    ),
    _Row(EngineNotFoundError, frozenset({404})),
    _Row(EngineConflictError, frozenset({409})),
    _Row(EngineServerError, frozenset(range(500, 600))),
)

# The engine did not answer: (error types, what they become, the message), first match wins.
_UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
_NoAnswer = tuple[tuple[type[BaseException], ...], type[DockerUnavailableError], str]
_NO_ANSWER: tuple[_NoAnswer, ...] = (
    ((requests.exceptions.Timeout, TimeoutError), EngineTimeoutError, "no answer in time"),
    (
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            ConnectionError,
        ),
        EngineUnreachableError,
        "engine unreachable ({err})",
    ),
)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (DockerUnavailableError, EngineServerError)
"""What an engine blip raises: no answer, or a 5xx answer. Retry policies retry these."""


def translate(operation: str, err: BaseException) -> BaseException:
    """The typed error for what escaped an engine call (typed errors pass through).

    Anything that is not an engine failure (a bug, an interrupt) is returned unchanged.
    """
    if isinstance(err, DockyardError):
        return err
    if isinstance(err, APIError):
        status = _status(err)
        explanation = str(err.explanation or err)
        if status in _UNAVAILABLE_STATUSES:
            return EngineUnreachableError(f"Docker {operation}: engine unavailable ({status})")
        for row in ENGINE_ANSWERS:
            if row.matches(status, explanation):
                return row.error(operation, status, explanation)
        return EngineError(operation, status, explanation)
    for kinds, error, message in _NO_ANSWER:
        if isinstance(err, kinds):
            return error(f"Docker {operation}: " + message.format(err=err))
    if isinstance(err, DockerException | requests.exceptions.RequestException):
        return EngineError(operation, None, str(err))
    return err


def _status(err: APIError) -> int | None:
    if err.status_code is None and isinstance(err, NotFound):
        return 404  # docker-py's NotFound made without a response
    return err.status_code


def result_of(err: BaseException | None) -> str:
    """How an engine call ended, for metrics: `ok`, `not_found`, `conflict`, `unreachable`,
    `error` (`err` is the translated error, None for success)."""
    if err is None:
        return "ok"
    results = (
        (DockerUnavailableError, "unreachable"),
        (EngineNotFoundError, "not_found"),
        (EngineConflictError, "conflict"),
    )
    return next((result for cls, result in results if isinstance(err, cls)), "error")


def copy_error(
    err: BaseException, *, message: str | None = None, keep_traceback: bool = False
) -> BaseException:
    """A copy of a shared error for one more raiser or report.

    Re-raising one object from many threads keeps appending every raiser's frames to its
    traceback, and Sentry's dedupe drops a second report of the same object: each gets
    its own copy, with the same chain (and traceback when `keep_traceback`). With
    `message`, the copy holds only that message and no chain: nothing of the request
    that failed (a pull's credentials) survives. An error that cannot be copied is
    returned as it is.
    """
    if message is not None:
        if isinstance(err, EngineError):
            return type(err)(err.operation, err.status_code, message)
        if isinstance(err, DockerUnavailableError):
            return type(err)(message)
        return EngineError("call", None, message)
    try:
        clone = copy.copy(err)
    except Exception:  # any copy protocol failure: the original serves
        return err
    if type(clone) is not type(err) or clone is err:
        return err
    clone.__cause__ = err.__cause__
    clone.__context__ = err.__context__
    clone.__suppress_context__ = err.__suppress_context__
    return clone.with_traceback(err.__traceback__ if keep_traceback else None)

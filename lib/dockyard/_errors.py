"""Errors: every typed error dockyard raises, and the one place engine errors become them.

`translate` turns what escapes a docker-py call into a typed error: an engine that does not
answer becomes `DockerUnavailableError`, an engine that says no an `EngineError` (with
`EngineNotFoundError` and `EngineConflictError` for the answers callers branch on, and
`EngineImageHasChildrenError` for the conflict of removing an image that is another's parent). The
gateway's `EngineCalls.run` applies it to every call. The predicates below understand both
these and the raw docker-py errors.
"""

from __future__ import annotations

import requests
from docker.errors import APIError, DockerException, NotFound

__all__ = [
    "ConfigError",
    "DockerUnavailableError",
    "DockyardError",
    "DuplicateJobError",
    "EngineConflictError",
    "EngineError",
    "EngineImageHasChildrenError",
    "EngineNotFoundError",
    "EngineTimeoutError",
    "ForkedManagerError",
    "InvalidJobError",
    "NoWorkerSlotError",
    "WorkerCancelledError",
    "WorkerImageResolutionError",
    "WorkerSpawnError",
    "as_spawn_error",
    "call_result",
    "is_conflict",
    "is_image_with_children",
    "is_missing_image",
    "is_not_found",
    "is_timeout",
    "is_transient",
    "is_unreachable",
    "result_of",
    "translate",
]


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


# -- engine errors, translated at one boundary --


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


class EngineImageHasChildrenError(EngineConflictError):
    """409 on an image removal: the image is the parent of another image, so it cannot be
    removed (not even forced) before its children are. Not "in use": no container holds it,
    and retrying changes nothing while the children stay."""


# The engine's words for an image that is another image's parent (Docker: "conflict:
# unable to delete ... (cannot be forced) - image has dependent child images").
_IMAGE_HAS_CHILDREN = "dependent child images"


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
        if status == 409 and _IMAGE_HAS_CHILDREN in explanation.lower():
            cls = EngineImageHasChildrenError
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
    return result_of(translate("call", err))


def result_of(err: BaseException) -> str:
    """How a call that raised the translated `err` ended, for metrics."""
    results = (
        (DockerUnavailableError, "unreachable"),
        (EngineNotFoundError, "not_found"),
        (EngineConflictError, "conflict"),
    )
    return next((result for cls, result in results if isinstance(err, cls)), "error")


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


def is_transient(err: BaseException) -> bool:
    """True for an engine blip worth another try: no answer, or a 5xx answer."""
    if is_unreachable(err):
        return True
    return isinstance(err, EngineError) and (err.status_code or 0) >= 500


def is_timeout(err: BaseException) -> bool:
    """True when the engine did not answer within the call's timeout."""
    return isinstance(err, (EngineTimeoutError, *_TIMEOUT_ERRORS))


def is_not_found(err: BaseException) -> bool:
    return _status(err) == 404


def is_conflict(err: BaseException) -> bool:
    return _status(err) == 409


def is_image_with_children(err: BaseException) -> bool:
    """True when an image removal was refused because other images have it as parent."""
    return isinstance(translate("call", err), EngineImageHasChildrenError)


def is_missing_image(err: BaseException) -> bool:
    """A 404 whose text says the image does not exist (not a missing container or network)."""
    if not is_not_found(err):
        return False
    text = f"{getattr(err, 'explanation', '') or ''} {err}".lower()
    return "no such image" in text

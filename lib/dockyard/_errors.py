"""The exception hierarchy: one typed error for each way a call can be refused or fail."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DockerUnavailableError",
    "DockyardError",
    "DuplicateJobError",
    "InvalidJobError",
    "NoWorkerSlotError",
    "WorkerImageResolutionError",
    "WorkerSpawnError",
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
    """No worker slot became free within the slot wait timeout."""

    def __init__(self, job_id: str, waited_s: float, max_workers: int) -> None:
        super().__init__(
            f"no worker slot for job {job_id!r} after {waited_s:g}s (all {max_workers} slots busy)"
        )
        self.job_id = job_id
        self.waited_s = waited_s


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

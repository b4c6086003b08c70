"""Job files: JSON Lines, one job object a line, every line checked before anything starts."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NoReturn

from .._container_checks import settings_from_json
from .._container_settings import JOB, ContainerSettings, check_bind_sources, check_job_allowed
from .._drivers import refuse_settings
from .._errors import InvalidJobError
from .._job_data import JOB_DATA_INLINE_LIMIT
from .._jobs import WorkerJob, resolve_job_fields
from ._exits import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .._config import RouterConfig

_JOB_KEYS = (
    "id",
    "type",
    "data",
    "projectId",
    "workItemId",
    "agentType",
    "command",
    "priority",
    "container",
)


def check_job_for(config: RouterConfig, job: WorkerJob) -> None:
    """A job's container settings against the router's rules: the fields a job may set,
    the bind roots, and what the backend's driver can express."""
    check_job_allowed(job.container, config.job_settings_allowed)
    if job.container is not None:
        check_bind_sources(job.container, config.allowed_bind_roots, JOB)
        refuse_settings(config.backend, job.container, JOB)


def load_jobs(path: Path, check: Callable[[WorkerJob], None] | None = None) -> list[WorkerJob]:
    """Read and validate every line of a JSONL job file (and `check` each job, which raises
    `ValueError`); `UsageError` names file:line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise UsageError(f"{path}: {err.strerror or err}") from None
    jobs: list[WorkerJob] = []
    first_line: dict[str, int] = {}
    # Split on newlines only: str.splitlines() would also split inside JSON strings that
    # legitimately hold U+2028 and friends.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        try:
            job = parse_job(line)
            if check is not None:
                check(job)
        except ValueError as err:
            raise UsageError(f"{path}:{number}: {err}") from None
        assert job.id is not None  # parse_job requires it
        if job.id in first_line:
            raise UsageError(
                f"{path}:{number}: duplicate job id {job.id!r} (first on line {first_line[job.id]})"
            )
        first_line[job.id] = number
        jobs.append(job)
    if not jobs:
        raise UsageError(f"{path}: no jobs in the file")
    return jobs


def parse_job(line: str) -> WorkerJob:
    """One job line: `{"id", "type", "data"?, "projectId"?, "workItemId"?, "agentType"?,
    "command"?, "priority"?, "container"?}` (`container`: the job's container settings, the
    fields of `ContainerSettings`). Raises `InvalidJobError` (a `ValueError`) naming the
    problem."""
    try:
        obj = json.loads(line, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise InvalidJobError(f"invalid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(obj, dict):
        raise InvalidJobError(f"a job must be a JSON object, got {_json_type(obj)}")
    unknown = [key for key in obj if key not in _JOB_KEYS]
    if unknown:
        raise InvalidJobError(f"unknown key {unknown[0]!r} (a job has: {', '.join(_JOB_KEYS)})")
    job_id = _id_value(obj, "id")
    if job_id is None:
        raise InvalidJobError('"id" is missing')
    job_type = obj.get("type")
    if not isinstance(job_type, str) or not job_type:
        raise InvalidJobError('"type" must be a non-empty string')
    data = obj.get("data", {})
    if not isinstance(data, dict):
        raise InvalidJobError(f'"data" must be a JSON object, got {_json_type(data)}')
    agent_type = obj.get("agentType")
    if agent_type is not None and (not isinstance(agent_type, str) or not agent_type):
        raise InvalidJobError('"agentType" must be a non-empty string')
    command = obj.get("command")
    if command is not None and (
        not isinstance(command, list)
        or not command
        or not all(isinstance(arg, str) for arg in command)
    ):
        raise InvalidJobError('"command" must be a non-empty list of strings')
    priority = obj.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidJobError('"priority" must be an integer')
    job = WorkerJob(
        id=job_id,
        type=job_type,
        data=data,
        project_id=_id_value(obj, "projectId"),
        work_item_id=_id_value(obj, "workItemId"),
        agent_type=agent_type,
        command=tuple(command) if command is not None else None,
        priority=priority,
        container=_container(obj.get("container")),
    )
    fields = resolve_job_fields(job, None)  # the library's own checks: NUL, bad Unicode
    size = len(fields.job_data_json.encode("utf-8"))
    if size > JOB_DATA_INLINE_LIMIT:
        raise InvalidJobError(
            f'"data" is {size} bytes; the command passes job data inline, '
            f"up to {JOB_DATA_INLINE_LIMIT} bytes"
        )
    return job


def _container(value: object) -> ContainerSettings | None:
    return None if value is None else settings_from_json(value, JOB)


def _id_value(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    # Ids arrive as strings or integers in job payloads; floats and booleans are mistakes.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidJobError(f'"{key}" must be a string or an integer, got {_json_type(value)}')
    text = str(value)
    if not text:
        raise InvalidJobError(f'"{key}" must not be empty')
    return text


def _reject_constant(name: str) -> NoReturn:
    raise InvalidJobError(f"invalid JSON: {name} is not a JSON number")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"

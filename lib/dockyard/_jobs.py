"""Jobs: what the router hands over, validated, with the ids derived from its payload.

A `WorkerJob` becomes its `JobFields` (`resolve_job_fields`); its project's spawn settings
are `_spawn`'s, its names and labels `_naming`.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ._container_checks import validate_settings
from ._container_settings import JOB, ContainerSettings
from ._errors import InvalidJobError

if TYPE_CHECKING:
    from ._config import ProjectConfig

__all__ = [
    "JobFields",
    "ProjectDirectory",
    "WorkerJob",
    "generated_job_id",
    "project_id_of",
    "resolve_job_fields",
    "validate_job",
    "work_item_id_of",
]


GENERATED_ID_PREFIX = "unknown-"  # + epoch milliseconds, for a job that came without an id
_INSTANCE_PART = 40  # characters of the router instance id kept in a generated id
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class ProjectDirectory(Protocol):
    """The host's project lookup (`projects=` of `ContainerManager`)."""

    def list_projects(self) -> Sequence[ProjectConfig]:
        """Every project the router knows."""
        ...

    def find_project_by_repo(self, repo_full_name: str) -> ProjectConfig | None:
        """The project of a repository (`owner/name`), or None."""
        ...


@dataclass(frozen=True)
class WorkerJob:
    """One job for one container.

    `data` is the JSON-serialisable payload given to the worker as `JOB_DATA`. Ids not given
    explicitly are derived from it (see `resolve_job_fields`). `command`, when set, replaces
    the image's default command (routers normally leave it unset; the CLI and tests use it).
    """

    id: str | None
    type: str
    # Job data is secret: a repr (a frame's locals in a Sentry event) never shows it.
    data: Mapping[str, Any] = field(default_factory=dict, repr=False)
    project_id: str | None = None
    work_item_id: str | None = None
    agent_type: str | None = None
    command: Sequence[str] | None = None
    # A freed worker slot goes to the highest priority first, first come first served
    # within one priority.
    priority: int = 0
    # This job's container controls: only the fields `RouterConfig.job_settings_allowed` names.
    container: ContainerSettings | None = None


@dataclass(frozen=True)
class JobFields:
    """A validated job with every id resolved; what the rest of dockyard works from."""

    job: WorkerJob
    job_id: str
    job_type: str
    job_data_json: str = field(repr=False)  # job data is secret: never in a repr
    project_id: str | None
    work_item_id: str | None
    agent_type: str | None


# The original router's id rules (its `extractProjectIdFromJob`, `extractWorkItemId`,
# `extractAgentType` and the adapters' job shapes); the README has them as a table.
# Job types resolved by repository when the payload carries no project id (older jobs).
REPO_LOOKUP_TYPES = frozenset({"github"})
# Where each job type names its work item; a type not listed uses `workItemId`.
WORK_ITEM_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "trello": (("workItemId",),),
    "jira": (("issueKey",), ("workItemId",)),
    # SCM jobs: only the trigger's work item (a PR without a linked card has none).
    "github": (("triggerResult", "workItemId"),),
    "gitlab": (("triggerResult", "workItemId"),),
    # Alerts: the trigger's lock key (an alert has no card), as the dispatch locks use it.
    "sentry": (("triggerResult", "lockKey"), ("triggerResult", "workItemId"), ("workItemId",)),
}
DEFAULT_WORK_ITEM_PATHS: tuple[tuple[str, ...], ...] = (("workItemId",),)
AGENT_TYPE_PATHS: tuple[tuple[str, ...], ...] = (("triggerResult", "agentType"), ("agentType",))


def validate_job(job: object) -> WorkerJob:
    """Check a job's shape; raises `InvalidJobError` naming the problem."""
    if not isinstance(job, WorkerJob):
        raise InvalidJobError(f"expected a WorkerJob, got {type(job).__name__}")
    if job.id is not None:
        _check_text("job.id", job.id, allow_empty=False)
    _check_text("job.type", job.type, allow_empty=False)
    if not isinstance(job.data, Mapping):
        raise InvalidJobError(f"job.data must be a mapping, got {type(job.data).__name__}")
    for name in ("project_id", "work_item_id", "agent_type"):
        value = getattr(job, name)
        if value is not None:
            _check_text(f"job.{name}", value, allow_empty=False)
    if isinstance(job.priority, bool) or not isinstance(job.priority, int):
        raise InvalidJobError(f"job.priority must be an integer, got {type(job.priority).__name__}")
    if job.command is not None:
        if isinstance(job.command, str | bytes) or not isinstance(job.command, Sequence):
            raise InvalidJobError("job.command must be a sequence of strings")
        for i, arg in enumerate(job.command):
            _check_text(f"job.command[{i}]", arg, allow_empty=True)
    if job.container is not None:
        validate_settings(job.container, JOB)
    return job


def resolve_job_fields(
    job: WorkerJob,
    projects: ProjectDirectory | None,
    *,
    now_ms: int | None = None,
    instance_id: str = "",
) -> JobFields:
    """Validate a job, serialise its payload and resolve its project, work item and agent."""
    validate_job(job)
    try:
        data_json = json.dumps(job.data, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidJobError(f"job.data is not JSON-serialisable: {err}") from None
    if not _is_utf8(data_json):
        raise InvalidJobError("job.data holds a string that is not valid Unicode")
    job_id = job.id if job.id is not None else generated_job_id(instance_id, now_ms)
    data = job.data
    project_id = job.project_id or project_id_of(job.type, data, projects)
    work_item_id = job.work_item_id or work_item_id_of(job.type, data)
    agent_type = job.agent_type or _first(data, AGENT_TYPE_PATHS)
    # Derived ids end up in labels and names: hold them to the rules of explicit ones.
    derived = (("projectId", project_id), ("workItemId", work_item_id), ("agentType", agent_type))
    for name, value in derived:
        if value is not None and "\x00" in value:
            raise InvalidJobError(f"job {name} contains a NUL character")
    return JobFields(
        job=job,
        job_id=job_id,
        job_type=job.type,
        job_data_json=data_json,
        project_id=project_id,
        work_item_id=work_item_id,
        agent_type=agent_type,
    )


def generated_job_id(instance_id: str, now_ms: int | None = None) -> str:
    """`unknown-<epoch ms>-<instance>-<random>` for a job that came without an id.

    The id names the worker's container and its job-data key: the instance id keeps two
    routers apart, the random part two managers (or two jobs in one millisecond) of one.
    """
    ms = now_ms if now_ms is not None else int(time.time() * 1000)
    instance = _UNSAFE_ID_CHARS.sub("_", instance_id)[:_INSTANCE_PART]
    middle = f"-{instance}" if instance else ""
    return f"{GENERATED_ID_PREFIX}{ms}{middle}-{secrets.token_hex(4)}"


def project_id_of(
    job_type: str, data: Mapping[str, Any], projects: ProjectDirectory | None
) -> str | None:
    """The project id of a payload: `projectId` (the project the router resolved), and for
    github jobs without one (queued before routers stamped it) a lookup by repository.
    """
    project_id = _text(data.get("projectId"))
    if project_id is None and job_type in REPO_LOOKUP_TYPES and projects is not None:
        repo = _text(data.get("repoFullName"))
        project = projects.find_project_by_repo(repo) if repo else None
        project_id = project.id if project is not None else None
    return project_id


def work_item_id_of(job_type: str, data: Mapping[str, Any]) -> str | None:
    """The work item id the original router derives from a payload."""
    return _first(data, WORK_ITEM_PATHS.get(job_type, DEFAULT_WORK_ITEM_PATHS))


def _first(data: Mapping[str, Any], paths: tuple[tuple[str, ...], ...]) -> str | None:
    for path in paths:
        value = _text(_dig(data, path))
        if value is not None:
            return value
    return None


def _dig(data: Mapping[str, Any], path: tuple[str, ...]) -> object:
    node: object = data
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _text(value: object) -> str | None:
    """Ids arrive as strings or numbers in payloads; anything else means absent."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        text = str(value)
        return text or None
    return None


def _check_text(name: str, value: object, *, allow_empty: bool) -> None:
    if not isinstance(value, str):
        raise InvalidJobError(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise InvalidJobError(f"{name} must not be empty")
    if "\x00" in value:
        raise InvalidJobError(f"{name} contains a NUL character")
    if not _is_utf8(value):
        raise InvalidJobError(f"{name} is not valid Unicode (lone surrogate)")


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

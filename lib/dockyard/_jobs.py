"""Jobs: what the router hands over, and who its worker is before any Docker call.

From a `WorkerJob` to the identity of its worker, in the order a spawn needs it:
- its fields and the ids derived from its payload (`resolve_job_fields`);
- its project's spawn settings: effective image, timeout and snapshot policy
  (`resolve_spawn_settings`);
- its names and labels: the container name, the label schema that reads back what it
  writes, and snapshot image names.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import InvalidJobError, WorkerImageResolutionError

if TYPE_CHECKING:
    from ._config import ProjectConfig, RouterConfig

__all__ = [
    "JobFields",
    "JobIdentity",
    "LabelSchema",
    "ProjectDirectory",
    "SpawnSettings",
    "WorkerJob",
    "WorkerLabels",
    "container_name",
    "find_project",
    "generated_job_id",
    "is_valid_image_reference",
    "job_ids",
    "project_id_of",
    "resolve_job_fields",
    "resolve_spawn_settings",
    "snapshot_image_name",
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


class JobIdentity(Protocol):
    """A job's resolved ids (`JobFields`, or the launcher's context)."""

    @property
    def job_id(self) -> str: ...
    @property
    def job_type(self) -> str: ...
    @property
    def project_id(self) -> str | None: ...
    @property
    def work_item_id(self) -> str | None: ...
    @property
    def agent_type(self) -> str | None: ...


_JOB_IDS = ("job_id", "job_type", "project_id", "work_item_id", "agent_type")


def job_ids(job: JobIdentity) -> dict[str, Any]:
    """A job's ids as keyword arguments: every record of a worker carries these five."""
    return {name: getattr(job, name) for name in _JOB_IDS}


# -- spawn settings: the effective image, timeout and snapshot policy of a job's project --

VERIFIED = "verified"


@dataclass(frozen=True)
class SpawnSettings:
    """What a job's project (or the global config) decides about its container."""

    base_image: str
    project_image: bool  # the base image is the project's own: never replace it
    snapshot_enabled: bool
    snapshot_ttl_s: float
    timeout_s: float
    project: ProjectConfig | None


def find_project(projects: ProjectDirectory | None, project_id: str | None) -> ProjectConfig | None:
    if projects is None or project_id is None:
        return None
    found: Sequence[ProjectConfig] = projects.list_projects()
    return next((p for p in found if p.id == project_id), None)


def resolve_spawn_settings(
    config: RouterConfig, project: ProjectConfig | None, *, has_project_id: bool = True
) -> SpawnSettings:
    """Per-project settings override the globals; raises before any Docker call.

    A project's own image is usable only once verified with a digest, and the digest is
    then the image: a job must never silently run on the global image instead. A job
    without a project id never runs in snapshot mode (as the original): its snapshot
    could not be keyed, and its container would only skip auto-removal for nothing.
    """
    base_image = config.worker_image
    project_image = False
    if project is not None and project.worker_image:
        if project.worker_image_status != VERIFIED or not project.worker_image_digest:
            raise WorkerImageResolutionError(
                f"project {project.id} image {project.worker_image!r} is not usable "
                f"(status {project.worker_image_status!r}, "
                f"digest {'set' if project.worker_image_digest else 'missing'})"
            )
        base_image = project.worker_image_digest
        project_image = True
    if not base_image.strip():
        raise InvalidJobError("the worker image is empty")
    if not is_valid_image_reference(base_image):
        raise InvalidJobError(f"the worker image reference {base_image!r} is malformed")
    snapshot_enabled = config.snapshot_enabled and (project is not None or has_project_id)
    ttl = config.snapshot_default_ttl_s
    timeout = config.worker_timeout_s
    if project is not None:
        if project.snapshot_enabled is not None:
            snapshot_enabled = project.snapshot_enabled
        if project.snapshot_ttl_s is not None:
            ttl = project.snapshot_ttl_s
        if project.watchdog_timeout_s is not None:
            timeout = project.watchdog_timeout_s + config.kill_buffer_s
    return SpawnSettings(
        base_image=base_image,
        project_image=project_image,
        snapshot_enabled=snapshot_enabled,
        snapshot_ttl_s=ttl,
        timeout_s=timeout,
        project=project,
    )


# -- names and labels: container names, the label schema, snapshot image names --

MAX_NAME_LENGTH = 128
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_UNSAFE_IMAGE_CHARS = re.compile(r"[^a-z0-9]+")
_HASH_LENGTH = 12
MAX_IMAGE_PART = 40


def _short_hash(*parts: str) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:_HASH_LENGTH]


def container_name(prefix: str, job_id: str) -> str:
    """`prefix` + the job id with every character outside `[A-Za-z0-9_.-]` replaced by `_`.

    An id too long for a name is cut and given a hash of the full id, so the name stays
    valid and two long ids never share it.
    """
    name = prefix + _UNSAFE_NAME_CHARS.sub("_", job_id)
    if len(name) <= MAX_NAME_LENGTH:
        return name
    keep = MAX_NAME_LENGTH - _HASH_LENGTH - 1
    return f"{name[:keep]}-{_short_hash(job_id)}"


def _image_part(value: str) -> str:
    part = _UNSAFE_IMAGE_CHARS.sub("-", value.lower()).strip("-")
    return part[:MAX_IMAGE_PART].strip("-") or "x"


def snapshot_image_name(prefix: str, project_id: str, work_item_id: str) -> str:
    """The snapshot repository for one (project, work item) pair, without tag.

    Sanitising alone could map two pairs to one name, so a hash of the raw pair follows.
    """
    return (
        f"{prefix}{_image_part(project_id)}-{_image_part(work_item_id)}"
        f"-{_short_hash(project_id, work_item_id)}"
    )


@dataclass(frozen=True)
class WorkerLabels:
    """What a worker container's labels say about it: `LabelSchema.parse` of `for_worker`."""

    instance_id: str
    job_id: str
    job_type: str
    project_id: str | None
    work_item_id: str | None
    agent_type: str | None
    base_image: str | None
    snapshot_enabled: bool
    deadline: datetime | None


@dataclass(frozen=True)
class LabelSchema:
    """The labels dockyard puts on its containers, under one prefix (default `cascade`)."""

    prefix: str

    def key(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}"

    @property
    def managed(self) -> str:
        return self.key("managed")

    @property
    def instance(self) -> str:
        return self.key("router.instance")

    @property
    def job_id(self) -> str:
        return self.key("job.id")

    @property
    def job_type(self) -> str:
        return self.key("job.type")

    @property
    def project_id(self) -> str:
        return self.key("project.id")

    @property
    def work_item_id(self) -> str:
        return self.key("work.item.id")

    @property
    def agent_type(self) -> str:
        return self.key("agent.type")

    @property
    def snapshot_enabled(self) -> str:
        return self.key("snapshot.enabled")

    @property
    def deadline(self) -> str:
        return self.key("deadline")

    @property
    def base_image(self) -> str:
        return self.key("base.image")

    # Snapshot images own no worker: they carry labels of their own, never the ones above.
    @property
    def snapshot_instance(self) -> str:
        return self.key("snapshot.instance")

    @property
    def snapshot_project_id(self) -> str:
        return self.key("snapshot.project.id")

    @property
    def snapshot_work_item_id(self) -> str:
        return self.key("snapshot.work.item.id")

    @property
    def snapshot_base_image(self) -> str:
        return self.key("snapshot.base.image")

    @property
    def snapshot_created(self) -> str:
        return self.key("snapshot.created")

    def ownership_filter(self, instance_id: str) -> list[str]:
        """Docker label filters matching exactly this router instance's managed containers."""
        return [f"{self.managed}=true", f"{self.instance}={instance_id}"]

    def for_worker(
        self,
        *,
        instance_id: str,
        job_id: str,
        job_type: str,
        project_id: str | None,
        work_item_id: str | None,
        agent_type: str | None,
        snapshot_enabled: bool,
        deadline: datetime | None,
        base_image: str,
    ) -> dict[str, str]:
        """The labels of a worker; without a deadline, `with_deadline` adds it at create."""
        labels = {
            self.job_id: job_id,
            self.job_type: job_type,
            self.managed: "true",
            self.instance: instance_id,
            self.project_id: project_id or "",
            self.work_item_id: work_item_id or "",
            self.agent_type: agent_type or "",
            self.snapshot_enabled: "true" if snapshot_enabled else "false",
            self.base_image: base_image,
        }
        return labels if deadline is None else self.with_deadline(labels, deadline)

    def with_deadline(self, labels: Mapping[str, str], deadline: datetime) -> dict[str, str]:
        return {**labels, self.deadline: format_deadline(deadline)}

    def parse(self, labels: Mapping[str, str]) -> WorkerLabels | None:
        """Read back what `for_worker` wrote; None when the labels name no managed job."""
        job_id = labels.get(self.job_id)
        if labels.get(self.managed) != "true" or not job_id:
            return None
        return WorkerLabels(
            instance_id=labels.get(self.instance, ""),
            job_id=job_id,
            job_type=labels.get(self.job_type, ""),
            project_id=labels.get(self.project_id) or None,
            work_item_id=labels.get(self.work_item_id) or None,
            agent_type=labels.get(self.agent_type) or None,
            snapshot_enabled=labels.get(self.snapshot_enabled) == "true",
            deadline=parse_deadline(labels.get(self.deadline)),
            base_image=labels.get(self.base_image) or None,
        )

    def owned_by(self, labels: Mapping[str, str], instance_id: str) -> bool:
        return labels.get(self.managed) == "true" and labels.get(self.instance) == instance_id


def format_deadline(deadline: datetime) -> str:
    return deadline.astimezone(UTC).isoformat(timespec="milliseconds")


def parse_deadline(value: str | None) -> datetime | None:
    """The deadline label back as an aware datetime; None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# The distribution reference grammar (name[:tag][@digest]), or a bare image id.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"  # noqa: E501
_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?",
    re.ASCII,  # tags are ASCII: a Unicode `\w` would let "tag-é" through
)
_IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-f]{12,64}")
MAX_REFERENCE_LENGTH = 255 + 128 + 80


def is_valid_image_reference(image: str) -> bool:
    """True for `name[:tag][@digest]` references and image ids Docker would accept."""
    if not image or len(image) > MAX_REFERENCE_LENGTH:
        return False
    return bool(_REFERENCE.fullmatch(image) or _IMAGE_ID.fullmatch(image))

"""Names and labels: container names, the label schema, snapshot image names, image grammar.

- container names (`container_name`) and snapshot image names (`snapshot_image_name`),
  shortened or told apart by a short hash;
- a job's five ids (`job_ids`), which every label set, record and report of a worker carries;
- the label schema that reads back what it writes (`LabelSchema`, `WorkerLabels`) and the
  deadline label's format;
- the image reference grammar (`is_valid_image_reference`, `is_image_id`), and references
  compared as the engine answers them (`familiar`, `same_image`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "JobIdentity",
    "LabelSchema",
    "WorkerLabels",
    "container_name",
    "familiar",
    "format_deadline",
    "is_image_id",
    "is_valid_image_reference",
    "job_ids",
    "parse_deadline",
    "same_image",
    "snapshot_image_name",
]


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


_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}|[0-9a-f]{64}")


def is_image_id(image: str) -> bool:
    """True for a full image id (`sha256:<64 hex>` or the bare 64 hex digits)."""
    return bool(_IMAGE_ID.fullmatch(image))


# Docker answers an image name as it was given; Podman answers it normalised, with Docker
# Hub's domain (`docker.io/library/busybox:latest`) or, for a name given no registry that
# it made itself (a commit, a tag, a local build), `localhost/` in front.
_HUB_DOMAINS = ("docker.io/", "index.docker.io/")
_HUB_OFFICIAL = "library/"
_PODMAN_LOCAL = "localhost/"
_FULL_IMAGE_ID = re.compile(r"(?:sha256:)?([0-9a-f]{64})")


def familiar(reference: str) -> str:
    """`reference` as the Docker CLI writes it: without Docker Hub's domain and its
    `library/` namespace, and without Podman's `localhost/` (never `localhost:PORT/`).

    `familiar` of a familiar name is the name itself; tags and digests are kept.
    """
    for domain in _HUB_DOMAINS:
        if reference.startswith(domain):
            rest = reference[len(domain) :]
            if rest.startswith(_HUB_OFFICIAL) and "/" not in rest[len(_HUB_OFFICIAL) :]:
                return rest[len(_HUB_OFFICIAL) :]
            return rest
    if reference.startswith(_PODMAN_LOCAL):
        return reference[len(_PODMAN_LOCAL) :]
    return reference


def _compared(reference: str) -> str:
    full_id = _FULL_IMAGE_ID.fullmatch(reference)
    if full_id:
        return f"sha256:{full_id.group(1)}"
    name = familiar(reference)
    if "@" not in name and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"  # what the engine takes a name without tag to mean
    return name


def same_image(a: str, b: str) -> bool:
    """Whether two references name one image however the engine spelled them: Docker
    Hub's and Podman's domains, the implied `:latest` and the `sha256:` of a full id."""
    return _compared(a) == _compared(b)

"""The launch plan: who a worker is and how long it may run, shared by launch and adoption."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from ._models import ActiveWorker
from ._naming import LabelSchema, WorkerLabels

__all__ = ["JobIdentity", "LaunchPlan"]


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


@dataclass(frozen=True)
class LaunchPlan:
    """Built once per job (or read back from a running container's labels).

    The deadline is not part of the plan until the container starts: a job that waited
    for a slot or an image pull still gets its whole timeout. `stamp` fixes it, once, just
    before the create of the container that runs; labels, timer and `ActiveWorker` all use
    that one value.
    """

    identity: WorkerLabels
    name: str
    timeout_s: float

    @classmethod
    def for_job(
        cls,
        job: JobIdentity,
        *,
        instance_id: str,
        snapshot_enabled: bool,
        base_image: str,
        name: str,
        timeout_s: float,
    ) -> LaunchPlan:
        """The plan of a job about to launch: no deadline until it starts."""
        identity = WorkerLabels(
            instance_id=instance_id,
            job_id=job.job_id,
            job_type=job.job_type,
            project_id=job.project_id,
            work_item_id=job.work_item_id,
            agent_type=job.agent_type,
            snapshot_enabled=snapshot_enabled,
            deadline=None,
            base_image=base_image,
        )
        return cls(identity, name, timeout_s)

    @property
    def job_id(self) -> str:
        return self.identity.job_id

    def stamp(self, now: datetime) -> LaunchPlan:
        """This plan with its deadline fixed at `now` + the timeout."""
        deadline = now + timedelta(seconds=self.timeout_s)
        return replace(self, identity=replace(self.identity, deadline=deadline))

    @property
    def deadline(self) -> datetime:
        if self.identity.deadline is None:
            raise RuntimeError("the launch plan has no deadline before it is stamped")
        return self.identity.deadline

    def labels(self, schema: LabelSchema) -> dict[str, str]:
        """What `LabelSchema.parse` reads back as this plan's identity."""
        fields = asdict(self.identity)
        fields["base_image"] = fields["base_image"] or ""
        return schema.for_worker(**fields)

    def worker(self, *, container_id: str, image: str, started_at: datetime) -> ActiveWorker:
        identity = self.identity
        return ActiveWorker(
            job_id=identity.job_id,
            container_id=container_id,
            container_name=self.name,
            image=image,
            started_at=started_at,
            deadline=self.deadline,
            project_id=identity.project_id,
            work_item_id=identity.work_item_id,
            agent_type=identity.agent_type,
            job_type=identity.job_type,
            snapshot_enabled=identity.snapshot_enabled,
        )

    @classmethod
    def from_container(
        cls,
        schema: LabelSchema,
        info: dict[str, Any],
        started_at: datetime,
        default_timeout_s: float,
    ) -> LaunchPlan | None:
        """The plan of a running container (adoption); None when it names no managed job.

        An unlabelled deadline counts the global timeout from the container's start.
        """
        config = info.get("Config") or {}
        identity = schema.parse(config.get("Labels") or {})
        if identity is None:
            return None
        plan = cls(identity, str(info.get("Name", "")).lstrip("/"), default_timeout_s)
        if identity.deadline is None:
            plan = plan.stamp(started_at)
        return plan

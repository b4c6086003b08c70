"""Spawning: a job's way from `spawn_worker` to its running worker, and a cancel on the way.

- its project's spawn settings (`resolve_spawn_settings`: image, timeout, snapshot policy)
  and caps (`project_cap`), decided before any engine call;
- `Spawner.spawn`: the job's fields and container controls checked, its id and container
  name reserved, a slot leased, its environment built, its launch submitted and awaited;
- `Spawner.cancel`: a cancel reaches the job in the slot line, while it launches, or once
  it runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ._container_checks import resolve_container_settings
from ._container_settings import NO_SETTINGS
from ._environment import EnvSources, build_worker_env, check_job_data, worker_masker
from ._errors import (
    DuplicateJobError,
    InvalidJobError,
    NoWorkerSlotError,
    WorkerCancelledError,
    WorkerImageResolutionError,
)
from ._jobs import (
    JobFields,
    ProjectDirectory,
    WorkerJob,
    generated_job_id,
    resolve_job_fields,
)
from ._naming import container_name, is_valid_image_reference, job_ids
from .worker_container_launcher import (
    LaunchPlan,
    WorkerContainerLaunchConfig,
    WorkerContainerLaunchContext,
    launch_worker_container,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from concurrent.futures import Future

    from ._config import ProjectConfig, RouterConfig
    from ._drivers import SettingsCheck
    from ._exit_handling import TimeoutController
    from ._loops import ManagedPool
    from ._metrics import Metrics
    from ._models import ActiveWorker
    from ._registry import WorkerRegistry
    from ._secrets import SecretBook
    from ._slots import SlotGate, SlotLease
    from ._snapshot_registry import SnapshotRegistry
    from ._tracker import TrackedWorker
    from .worker_container_launcher import WorkerContainerLauncherDependencies

__all__ = [
    "SpawnSettings",
    "Spawner",
    "find_project",
    "project_cap",
    "project_snapshot_ttl",
    "resolve_spawn_settings",
]


_GENERATED_ID_ATTEMPTS = 1000
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


def project_cap(
    config: RouterConfig, project: ProjectConfig | None, project_id: str | None
) -> int | None:
    """The most workers of `project_id` at once: its own cap, else the router's."""
    if project_id is None:
        return None
    if project is not None and project.max_workers is not None:
        return project.max_workers
    return config.max_workers_per_project


def project_snapshot_ttl(projects: ProjectDirectory | None, project_id: str) -> float | None:
    """The snapshot TTL `project_id` sets itself, if any."""
    project = find_project(projects, project_id)
    return project.snapshot_ttl_s if project is not None else None


@dataclass(kw_only=True, eq=False, repr=False)  # one per manager: identity, no field-wise ==
class Spawner:
    """One manager's spawns: each job from its settings to its launched worker."""

    config: RouterConfig
    projects: ProjectDirectory | None
    settings_check: SettingsCheck | None
    registry: WorkerRegistry
    slots: SlotGate
    secrets: SecretBook
    env_sources: EnvSources
    snapshots: SnapshotRegistry
    timeouts: TimeoutController
    launcher: WorkerContainerLauncherDependencies
    launch_executor: ManagedPool
    metrics: Metrics
    auto_remove: bool

    def spawn(self, job: WorkerJob, slot_timeout: float | None) -> ActiveWorker:
        """`ContainerManager.spawn_worker`'s work (see there): settings, slot, launch."""
        fields = resolve_job_fields(job, self.projects, instance_id=self.config.router_instance_id)
        project = find_project(self.projects, fields.project_id)
        settings = resolve_spawn_settings(
            self.config, project, has_project_id=fields.project_id is not None
        )
        layers = (self.config.container, project.container if project else None, job.container)
        container = NO_SETTINGS
        if any(layer is not None for layer in layers):
            container = resolve_container_settings(
                *layers,
                project_id=fields.project_id,
                job_settings_allowed=self.config.job_settings_allowed,
                allowed_bind_roots=self.config.allowed_bind_roots,
                backend_check=self.settings_check,
            )
        check_job_data(fields, self.env_sources)
        name = container_name(self.config.container_name_prefix, fields.job_id)
        fields, name, record = self._reserve(fields, name)
        lease: SlotLease | None = None
        try:
            timeout = self.config.slot_wait_timeout_s if slot_timeout is None else slot_timeout
            waited = time.perf_counter()
            try:
                lease = self.slots.lease(
                    timeout,
                    project=fields.project_id,
                    cap=project_cap(self.config, project, fields.project_id),
                    priority=job.priority,
                    name=fields.job_id,
                    cancelled=lambda: record.cancel_requested,
                )
                record.take_slot(lease.release)
            except NoWorkerSlotError:
                self.metrics.slot_wait(time.perf_counter() - waited, acquired=False)
                raise
            self.metrics.slot_wait(time.perf_counter() - waited, acquired=True)
            if record.cancel_requested:  # cancelled just as the slot came
                raise WorkerCancelledError(fields.job_id, waiting=True)
            env = build_worker_env(
                fields, self.env_sources, snapshot_enabled=settings.snapshot_enabled
            )
            masker = worker_masker(env, fields)
            self.secrets.hold(fields.job_id, masker)
            snapshot = None
            if settings.snapshot_enabled and fields.project_id and fields.work_item_id:
                # The TTL resolved above: no second project lookup under the registry's lock.
                snapshot = self.snapshots.get(
                    fields.project_id, fields.work_item_id, ttl=settings.snapshot_ttl_s
                )
                self.metrics.snapshot_lookup(hit=snapshot is not None)
            project_policy = settings.project and settings.project.image_pull_policy
            pull_policy = project_policy or self.config.image_pull_policy
            # The deadline is fixed at start, after the slot wait and any pull.
            plan = LaunchPlan.for_job(
                fields,
                instance_id=self.config.router_instance_id,
                snapshot_enabled=settings.snapshot_enabled,
                base_image=settings.base_image,
                name=name,
                timeout_s=settings.timeout_s,
            )
            launch = WorkerContainerLaunchConfig(
                name=plan.name,
                base_image=settings.base_image,
                env=env,
                labels=plan.labels(self.launcher.labels),
                memory_mb=self.config.worker_memory_mb,
                network=self.config.docker_network,
                auto_remove=self.auto_remove and not settings.snapshot_enabled,
                timeout_s=settings.timeout_s,
                project_image=settings.project_image,
                snapshot=snapshot,
                command=job.command,
                pids_limit=self.config.pids_limit,
                no_new_privileges=self.config.no_new_privileges,
                container=container,
                masker=masker,
                pull_policy=pull_policy,
            )
            del env  # from here on only inside `launch`, whose repr shows no value
            context = WorkerContainerLaunchContext(
                snapshot_enabled=settings.snapshot_enabled,
                release_slot=lease.release,
                plan=plan,
                record=record,
                **job_ids(fields),
            )
            submitted = time.perf_counter()
            future = self.launch_executor.submit(
                launch_worker_container, launch, context, self.launcher
            )
        except BaseException:
            self._abandon_spawn(record, lease)
            raise
        try:
            worker = future.result()
        except BaseException as err:
            if isinstance(err, Exception):
                self.metrics.spawn_failed(err)
            # Failed, or interrupted (the launch may still succeed): the record and its
            # slot are given up only when no worker began; a started worker's record
            # releases the slot when it ends.
            future.add_done_callback(lambda done: self._abandon_unless_started(done, record))
            raise
        self.metrics.spawn_latency(time.perf_counter() - submitted)
        return worker  # a cancel that came while it launched was carried out as it began

    def _abandon_unless_started(self, done: Future[ActiveWorker], record: TrackedWorker) -> None:
        if done.cancelled() or done.exception() is not None:
            self.registry.unreserve(record)

    def _reserve(self, fields: JobFields, name: str) -> tuple[JobFields, str, TrackedWorker]:
        """Claim the job id and its container name; a made-up id taken already is made anew.

        Two jobs without an id arriving in one millisecond are two jobs, not a duplicate;
        two given ids that map to one container name are refused here, before Docker.
        """
        for _ in range(_GENERATED_ID_ATTEMPTS):
            try:
                record = self.registry.reserve(fields.job_id, name)
            except DuplicateJobError:
                if fields.job.id is not None:
                    raise
                job_id = generated_job_id(self.config.router_instance_id)
                fields = replace(fields, job_id=job_id)
                name = container_name(self.config.container_name_prefix, job_id)
            else:
                return fields, name, record
        raise DuplicateJobError(fields.job_id)

    def _abandon_spawn(self, record: TrackedWorker, lease: SlotLease | None) -> None:
        """Undo a spawn that began no worker: free its id, and its slot (held by the
        record; the lease itself too, should an interrupt have come before it was)."""
        self.registry.unreserve(record)
        if lease is not None:
            lease.release()

    def cancel(self, job_id: str) -> bool:
        """`ContainerManager.cancel_worker`'s work (see there); never blocks."""
        if self.slots.cancel(job_id):
            return True
        record = self.registry.record(job_id)
        if record is None or record.future.done():
            return False
        if not record.has_worker:
            # Spawning, not in the slot line: its spawn looks at the mark as it joins the
            # line and once it has its slot, and its tracking carries it out as it begins.
            # It may have joined the line or begun just now: then that is cancelled here
            # (twice does no harm).
            record.request_cancel()
            if self.slots.cancel(job_id) or not record.has_worker:
                return True
        return self.timeouts.cancel(record)

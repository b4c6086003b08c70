"""Launch: create and start one worker container, then register, time and watch it.

Its `LaunchPlan` (who the worker is, how long it may run) is built once per job and shared
with adoption, which reads it back from a running container's labels.

`launch_worker_container` takes its collaborators as a `WorkerContainerLauncherDependencies`
object, so tests substitute them and two managers never share state. It runs on the
manager's launch executor; the blocking wait is handed to the exit watcher's own executor.
What it does when a step fails (a missing image pulled, a leftover of the same job replaced,
a container that failed to start removed) is `_launch_failures`'s.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from ._docker_settings import name_refused_control
from ._driver import ContainerSpec, Driver, ExitTicket, WorkerState
from ._errors import (
    DuplicateJobError,
    EngineConflictError,
    ImageNotFoundError,
    WorkerImageResolutionError,
)
from ._launch_failures import (
    LaunchReports,
    as_spawn_error,
    discard,
    pull_base_image,
    replace_leftover,
)
from ._metrics import NO_METRICS, Metrics
from ._models import ActiveWorker
from ._naming import JobIdentity, LabelSchema, WorkerLabels, is_image_id, job_ids
from ._pull_policy import ALWAYS, IF_NOT_PRESENT, NEVER
from ._secrets import Masker, Secret, SecretEnv
from ._tracker import TrackedWorker, log_ids

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ._container_settings import ContainerSettings
    from ._exit_handling import ExitWatcher, TimeoutController
    from ._images import ImagePuller
    from ._listener import SafeListener
    from ._output import OutputPipe
    from ._output_hub import OutputHub
    from ._registry import WorkerRegistry
    from ._sentry import Reporter
    from ._snapshot_registry import SnapshotMetadata, SnapshotRegistry

__all__ = [
    "WorkerContainerLaunchConfig",
    "WorkerContainerLaunchContext",
    "WorkerContainerLauncherDependencies",
    "launch_worker_container",
]


log = logging.getLogger("dockyard.launcher")

MIB = 1024 * 1024


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class WorkerContainerLaunchConfig:
    """The resolved container settings of one launch.

    `env` is the fresh-run environment; when `snapshot` is set the container starts from
    that snapshot image with `CASCADE_SNAPSHOT_REUSE=true` added, falling back to
    `base_image` (and `env` as is) if the snapshot image has vanished. `env` values are
    `Secret`s (plain strings are accepted too); neither `env` nor `masker` (what the log
    tail hides) shows in a repr. `pull_policy` says when the base image is pulled
    (`if-not-present`, `always`, `never`; snapshot images are never pulled).
    """

    name: str
    base_image: str
    env: Mapping[str, str | Secret] = field(repr=False)
    labels: Mapping[str, str]
    memory_mb: int
    network: str
    auto_remove: bool
    timeout_s: float
    project_image: bool = False
    snapshot: SnapshotMetadata | None = None
    command: Sequence[str] | None = None
    pids_limit: int | None = None
    no_new_privileges: bool = False
    container: ContainerSettings | None = None  # the three layers merged
    masker: Masker = field(default_factory=lambda: Masker(frozenset()), repr=False)
    pull_policy: str = IF_NOT_PRESENT


@dataclass(frozen=True)
class WorkerContainerLaunchContext:
    """Who the container is for: the job's ids, and the slot it holds.

    `release_slot` gives the slot back; it must be idempotent (a `SlotLease.release`):
    the worker calls it when it ends, the caller when the launch is abandoned. `record` is
    the job's record from its reservation (`ContainerManager.spawn_worker` passes it, holding
    the slot); without one, the launch makes it.
    """

    job_id: str
    job_type: str
    project_id: str | None
    work_item_id: str | None
    agent_type: str | None
    snapshot_enabled: bool
    release_slot: Callable[[], object]
    plan: LaunchPlan | None = None  # the job's plan; else made from the fields above
    record: TrackedWorker | None = None


@dataclass(frozen=True)
class WorkerContainerLauncherDependencies:
    """The launcher's collaborators, all owned by one `ContainerManager`."""

    driver: Driver
    registry: WorkerRegistry
    timeouts: TimeoutController
    exits: ExitWatcher
    snapshots: SnapshotRegistry
    images: ImagePuller | None  # None: the driver has no images to pull into
    reporter: Reporter
    listener: SafeListener
    labels: LabelSchema
    instance_id: str
    clock: Callable[[], datetime] = _utc_now
    metrics: Metrics = NO_METRICS
    outputs: OutputHub | None = None  # reads each worker's output from before its start


def launch_worker_container(
    config: WorkerContainerLaunchConfig,
    context: WorkerContainerLaunchContext,
    deps: WorkerContainerLauncherDependencies,
) -> ActiveWorker:
    """Create → start → the job's record begins (timer, registry, listener, exit watch) → log.

    On failure nothing is registered and no created container is left behind; the caller
    releases the slot. Failures are reported to Sentry and re-raised (transport failures
    as `DockerUnavailableError`).
    """
    if context.plan is None:
        plan = LaunchPlan.for_job(
            context,
            instance_id=deps.instance_id,
            snapshot_enabled=context.snapshot_enabled,
            base_image=config.base_image,
            name=config.name,
            timeout_s=config.timeout_s,
        )
        context = replace(context, plan=plan)
    reports = LaunchReports(deps.reporter, context.job_id, context.job_type)
    try:
        started = _start_container(config, context, deps, reports)
    except Exception as err:  # every failure is reported and leaves as a DockyardError
        if not reports.covers(err) and not isinstance(err, DuplicateJobError):
            reports.send(err, "worker_spawn")
        typed = name_refused_control(as_spawn_error(err), config.container)
        if typed is err:
            raise
        raise typed from typed.__cause__
    # The run starts now: the timer and `ActiveWorker` count its whole timeout from here.
    # The deadline label, written at create and read only after a restart (adoption,
    # orphan scans), is earlier by the create and start latency, never later.
    started_at = deps.clock()
    plan = started.plan.stamp(started_at)
    worker = replace(
        plan.worker(container_id=started.container_id, image=started.image, started_at=started_at),
        settings=config.container,
    )
    record = context.record
    if record is None:  # a launch without a reservation: its record is made here
        record = TrackedWorker(context.job_id)
        record.take_slot(context.release_slot)
    # A spawn gives its record up only once this launch has ended, so it begins here; were
    # it ended already, it would be left untracked rather than registered half-made.
    began = record.begin(
        worker,
        exit_wait=started.exit_wait,
        env_keys=tuple(started.env),
        masker=config.masker,
        auto_remove=config.auto_remove,
        output=started.output,
    )
    remaining_s = (worker.deadline - deps.clock()).total_seconds()
    if began and deps.registry.begin_tracking(record, remaining_s, deps.timeouts, deps.exits):
        log.info(
            "worker started",
            extra=log_ids(
                worker, image=started.image, snapshot_reuse=started.image != config.base_image
            ),
        )
    return worker


def with_snapshot_reuse(env: Mapping[str, str | Secret]) -> SecretEnv:
    """The same environment, telling the worker it starts from a snapshot."""
    return SecretEnv({**env, "CASCADE_SNAPSHOT_REUSE": "true"})


@dataclass(frozen=True)
class _Started:
    image: str
    env: Mapping[str, str | Secret]
    container_id: str
    exit_wait: ExitTicket
    plan: LaunchPlan  # stamped with the deadline
    output: OutputPipe | None = None


def _start_container(
    config: WorkerContainerLaunchConfig,
    context: WorkerContainerLaunchContext,
    deps: WorkerContainerLauncherDependencies,
    reports: LaunchReports,
) -> _Started:
    """Create and start, with the snapshot and base-image fallbacks of the spec."""
    if config.snapshot is None:
        return _with_base_image_pull(config, context, deps, reports)
    reuse_env = with_snapshot_reuse(config.env)
    try:
        return _create_and_start(config, context, config.snapshot.image_name, reuse_env, deps)
    except ImageNotFoundError:
        stale = config.snapshot.image_name
    # The snapshot image vanished: forget it and start cold, once.
    deps.metrics.snapshot_fallback()
    if context.project_id is not None and context.work_item_id is not None:
        deps.snapshots.invalidate(context.project_id, context.work_item_id)
    log.warning(
        "snapshot image missing; falling back to the base image",
        extra={"job_id": context.job_id, "stale_image": stale},
    )
    try:
        return _with_base_image_pull(replace(config, snapshot=None), context, deps, reports)
    except Exception as err:  # whatever ends the fallback is reported under its source
        reports.send(err, "worker_spawn_fallback", staleImage=stale)
        raise


def _with_base_image_pull(
    config: WorkerContainerLaunchConfig,
    context: WorkerContainerLaunchContext,
    deps: WorkerContainerLauncherDependencies,
    reports: LaunchReports,
) -> _Started:
    image = config.base_image
    if config.pull_policy == ALWAYS and not is_image_id(image) and deps.images is not None:
        pull_base_image(
            image, deps.images, reports, project_image=config.project_image, always=True
        )
    else:
        try:
            return _create_and_start(config, context, image, config.env, deps)
        except ImageNotFoundError as err:
            missing = err
        if config.pull_policy == NEVER:
            raise WorkerImageResolutionError(
                f"image {image!r} is not on the engine and the image pull policy is 'never'"
            ) from None
        if deps.images is None:
            raise missing  # the driver has no images dockyard could pull into
        pull_base_image(
            image, deps.images, reports, project_image=config.project_image, always=False
        )
    try:
        return _create_and_start(config, context, image, config.env, deps)
    except ImageNotFoundError as err:
        if not config.project_image:
            raise
        # Pulled, yet still absent (say a digest the registry no longer serves): terminal.
        raise WorkerImageResolutionError(
            f"project image {image!r} is still missing after it was pulled"
        ) from err


def _create_and_start(
    config: WorkerContainerLaunchConfig,
    context: WorkerContainerLaunchContext,
    image: str,
    env: Mapping[str, str | Secret],
    deps: WorkerContainerLauncherDependencies,
) -> _Started:
    # The deadline is fixed now, after the slot wait and any pull: the whole timeout counts
    # from this start, and the label that adoption and orphan scans read says the same.
    assert context.plan is not None  # set by launch_worker_container
    plan = context.plan.stamp(deps.clock())
    spec = ContainerSpec(
        image=image,
        name=config.name,
        env=env,
        labels=deps.labels.with_deadline(config.labels, plan.deadline),
        memory_bytes=config.memory_mb * MIB,
        network=config.network,
        auto_remove=config.auto_remove,
        command=config.command,
        pids_limit=config.pids_limit,
        no_new_privileges=config.no_new_privileges,
        settings=config.container,
    )
    container_id = _create(spec, plan.job_id, deps)
    exit_wait: ExitTicket | None = None
    output: OutputPipe | None = None
    try:
        # Registered before start: an instant exit (and auto-removal) cannot be missed,
        # nor a byte of its output.
        exit_wait = deps.driver.open_exit_wait(container_id)
        if deps.outputs is not None:
            output = deps.outputs.open(container_id, plan.job_id, config.masker)
        deps.driver.start(container_id)
    except BaseException:
        if exit_wait is not None:
            exit_wait.close()
        if output is not None:
            output.cancel()
        discard(deps.driver, container_id, plan.job_id)
        raise
    return _Started(image, env, container_id, exit_wait, plan, output)


def _create(spec: ContainerSpec, job_id: str, deps: WorkerContainerLauncherDependencies) -> str:
    try:
        return deps.driver.create(spec)
    except EngineConflictError as err:
        conflict = err
    # A container already has this name: a stopped leftover of this very job goes.
    return replace_leftover(
        conflict, spec, job_id, driver=deps.driver, schema=deps.labels, instance_id=deps.instance_id
    )


# -- the launch plan: who a worker is and how long it may run --


@dataclass(frozen=True)
class LaunchPlan:
    """Built once per job (or read back from a running container's labels).

    The deadline is not part of the plan until the container starts: a job that waited
    for a slot or an image pull still gets its whole timeout. `stamp` fixes it just before
    the create of the container that runs (for its deadline label, which cannot change
    later) and again once it has started: the timer and `ActiveWorker` count from the start.
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
            snapshot_enabled=snapshot_enabled,
            deadline=None,
            base_image=base_image,
            **job_ids(job),
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
            container_id=container_id,
            container_name=self.name,
            image=image,
            started_at=started_at,
            deadline=self.deadline,
            snapshot_enabled=identity.snapshot_enabled,
            **job_ids(identity),
        )

    @classmethod
    def from_container(
        cls,
        schema: LabelSchema,
        state: WorkerState,
        started_at: datetime,
        default_timeout_s: float,
    ) -> LaunchPlan | None:
        """The plan of a running container (adoption); None when it names no managed job.

        An unlabelled deadline counts the global timeout from the container's start.
        """
        identity = schema.parse(dict(state.labels))
        if identity is None:
            return None
        plan = cls(identity, state.name, default_timeout_s)
        if identity.deadline is None:
            plan = plan.stamp(started_at)
        return plan

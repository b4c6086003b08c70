"""The `ContainerManager` facade, and the launcher's names re-exported for compatibility.

Each method delegates to the module that owns its concern. A job's path runs through:
- `_jobs`: the job's fields and ids, its project's spawn settings, names and labels;
- `_environment`: what the container is given, job data, and which of it is secret;
- `worker_container_launcher`: the launch plan, create and start, register, time, watch;
- `_tracker`: the worker's state machine and its slot;
- `_exit_handling`: how a run ends (the deadline kill, the exit wait, what follows);
- `_driver` and `_docker_driver`: the driver interface and the Docker driver (the Swarm
  driver, `_swarm`, instead when configured; `_drivers` is the table of both);
- `_docker` and `_exit_monitor`: the Docker client and its one events stream;
- `_loops` and `_metrics`: the pools `close()` waits for, and the Prometheus series.
Off that path: snapshot registry and mechanics (`_snapshot_registry`, `_snapshots`),
orphans and restarts (`_orphans`), dangling images (`_dangling`), Sentry (`_sentry`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Self

import docker

from ._adoption import WorkerAdopter
from ._config import ProjectConfig, RouterConfig
from ._container_checks import resolve_container_settings
from ._container_settings import NO_SETTINGS
from ._dangling import DEFAULT_DANGLING_INTERVAL_S, DanglingImageReaper
from ._docker_config import DockerConfigLogins
from ._driver import Driver
from ._drivers import check_projects, driver_factory, settings_check
from ._environment import (
    CredentialProvider,
    EnvSources,
    build_worker_env,
    check_job_data,
    router_environ,
    worker_masker,
)
from ._errors import (
    ConfigError,
    DockyardError,
    DuplicateJobError,
    NoWorkerSlotError,
    WorkerCancelledError,
)
from ._exit_handling import ExitWatcher, TimeoutController
from ._fork import fork_guarded
from ._images import ImagePuller
from ._job_data import JobDataStore, RedisOffloadStore
from ._jobs import (
    JobFields,
    ProjectDirectory,
    WorkerJob,
    generated_job_id,
    job_ids,
    resolve_job_fields,
)
from ._loops import ManagedPool, PeriodicTask
from ._metrics import build_metrics, lifecycle_listener
from ._models import ActiveWorker, WorkerLifecycleListener, WorkerOutcome
from ._naming import LabelSchema, container_name
from ._orphans import OrphanReaper
from ._output import OutputHub
from ._output_marks import MarkKeeper, RedisOutputMarks
from ._registry import WorkerRegistry
from ._registry_auth import RegistryAuthResolver, RegistryCredentialProvider
from ._retry import RetryPolicy
from ._secrets import Masker, SecretBook, router_secret_values
from ._sentry import Reporter, SentryReporter, scrub_for_host
from ._slots import SlotGate, SlotLease
from ._snapshot_registry import SnapshotRegistry
from ._snapshots import SnapshotManager
from ._spawn_settings import find_project, resolve_spawn_settings
from .worker_container_launcher import (
    LaunchPlan,
    WorkerContainerLaunchConfig,
    WorkerContainerLaunchContext,
    WorkerContainerLauncherDependencies,
    launch_worker_container,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "ContainerManager",
    "WorkerContainerLaunchConfig",
    "WorkerContainerLaunchContext",
    "WorkerContainerLauncherDependencies",
    "launch_worker_container",
]

log = logging.getLogger("dockyard.manager")

_WAIT_POOL_HEADROOM = 8  # adopted workers may briefly exceed max_workers
_GENERATED_ID_ATTEMPTS = 1000


@fork_guarded(quiet=("close",), also=("_outcome_future",), attributes=("snapshots",))
class ContainerManager:
    """Runs each job in its own container; all state lives on the instance.

    Create one per router, use it as a context manager or call `close()` when done. It
    belongs to the process that created it: in a child forked later, every method raises
    `ForkedManagerError` (create a manager in the child) and `close()` does nothing.
    """

    def __init__(
        self,
        config: RouterConfig,
        *,
        docker_client: docker.DockerClient | docker.APIClient | None = None,
        projects: ProjectDirectory | None = None,
        credentials: CredentialProvider | None = None,
        listener: WorkerLifecycleListener | None = None,
        job_data_store: JobDataStore | None = None,
        reporter: Reporter | None = None,
        metrics_registry: CollectorRegistry | None = None,
        registry_credentials: RegistryCredentialProvider | None = None,
        driver: Driver | None = None,
    ) -> None:
        self.config = config
        self._projects = projects
        self._closed = False
        self._close_lock = threading.Lock()
        wait_pool = config.max_workers + _WAIT_POOL_HEADROOM
        if projects is not None:
            check_projects(config.backend, projects.list_projects())
        self._settings_check = settings_check(config.backend)
        if driver is None:
            driver = driver_factory(config.backend)(
                config,
                docker_client,
                short_pool=config.launch_concurrency + 4,
                wait_pool=wait_pool + config.launch_concurrency,
            )
        elif config.snapshot_enabled and not driver.capabilities.snapshots:
            # A host's own driver (a test's fake, say): its capabilities decide.
            raise ConfigError("snapshot_enabled", "the driver given declares no snapshots")
        self._driver = driver
        images = driver.images
        self._auto_remove = config.auto_remove_workers and driver.capabilities.auto_remove
        environ = router_environ()
        self._secrets = SecretBook(
            Masker.of(router_secret_values(environ)), history=config.outcome_history
        )
        self._reporter = reporter or SentryReporter(self._secrets)
        try:
            # Gauges read the registry and slots at scrape time; they exist just below.
            self._metrics = build_metrics(
                metrics_registry,
                max_workers=config.max_workers,
                active=self.get_active_worker_count,
                waiting=lambda: self._slots.waiting,
                backend=config.backend,
            )
        except ConfigError:
            driver.close()
            raise
        if self._metrics.enabled:
            driver.observer = self._metrics.engine_call
        self._listener = lifecycle_listener(listener, self._metrics, self._reporter)
        # Each worker's output, attached before its start (drivers that declare live output);
        # an adopted worker's followed from the engine's log after the last manager's mark.
        follows = driver.capabilities.follow_output
        self._output_marks = RedisOutputMarks(config.redis_url, config.router_instance_id)
        self._outputs = OutputHub(
            attach=driver.attach_output if driver.capabilities.live_output else None,
            enabled=config.stream_output,
            listener=listener,
            sink=self._listener,
            counters=self._metrics,
            tail_lines=config.log_tail_lines,
            delivery_threads=config.max_workers,
            follow=driver.follow_output if follows else None,
            keep=MarkKeeper(self._output_marks, driver.output_mark) if follows else None,
        )
        self._labels = LabelSchema(config.label_prefix)
        self._slots = SlotGate(config.max_workers)
        # The runs (by their outcome future) cancelled while they spawned, out of the slot
        # line: a run's spawn cancels its worker once it runs. Weak: a run that never
        # looks (an adoption's) leaves nothing behind.
        self._cancels: weakref.WeakSet[Future[WorkerOutcome]] = weakref.WeakSet()
        self._registry = WorkerRegistry(self._listener, config.outcome_history)
        self._offload = RedisOffloadStore(config.redis_url)
        self._env_sources = EnvSources(
            config=config,
            router_environ=environ,
            credentials=credentials,
            # Without a store of the host's, large payloads go to Redis at redis_url.
            job_data_store=job_data_store if job_data_store is not None else self._offload,
            reporter=self._reporter,
        )
        self._launch_executor = ManagedPool(config.launch_concurrency, "dockyard-launch")
        self._wait_executor = ManagedPool(wait_pool, "dockyard-wait")
        self.snapshots = SnapshotRegistry(
            default_ttl_s=config.snapshot_default_ttl_s,
            max_count=config.snapshot_max_count,
            max_size_bytes=config.snapshot_max_size_bytes,
            project_ttl=self._project_snapshot_ttl,
        )
        # Snapshots and image pulls need the engine's images: drivers without them have none.
        self._snapshot_manager = (
            None
            if images is None
            else SnapshotManager(
                images,
                self.snapshots,
                self._reporter,
                config,
                self._labels,
                self._metrics,
                worker_env=lambda worker_id: driver.inspect(worker_id).env,
            )
        )
        # A stop keeps being retried at least as long as a broken wait is.
        kill_policy = RetryPolicy(
            retry_on=(DockyardError,),
            first_delay_s=1.0,
            max_delay_s=5.0,
            window_s=config.wait_retry_window_s + config.stop_grace_s,
        )
        self._timeouts = TimeoutController(driver, self._reporter, config.stop_grace_s, kill_policy)
        self._exits = ExitWatcher(
            driver=driver,
            registry=self._registry,
            reporter=self._reporter,
            snapshots=self._snapshot_manager,
            submit=self._wait_executor.submit,
            log_tail_lines=config.log_tail_lines,
            # Any engine failure but a 404 is ridden out for the window (the spec's rule).
            wait_policy=RetryPolicy(retry_on=(DockyardError,), window_s=config.wait_retry_window_s),
        )
        self._launcher = WorkerContainerLauncherDependencies(
            driver=driver,
            registry=self._registry,
            timeouts=self._timeouts,
            exits=self._exits,
            snapshots=self.snapshots,
            images=None
            if images is None
            else ImagePuller(
                images,
                config.image_pull_timeout_s,
                auth=RegistryAuthResolver(
                    config,
                    registry_credentials,
                    DockerConfigLogins(config.registry_helper_timeout_s),
                ).for_image,
                metrics=self._metrics,
                retries=config.image_pull_retries,
                reuse_s=config.image_pull_reuse_s,
            ),
            reporter=self._reporter,
            listener=self._listener,
            labels=self._labels,
            instance_id=config.router_instance_id,
            metrics=self._metrics,
            outputs=self._outputs,
        )
        self._reaper = OrphanReaper(
            driver, self._registry, self._labels, config, self._reporter, self._listener
        )
        self._adopter = WorkerAdopter(
            driver,
            self._registry,
            self._labels,
            config,
            self._slots,
            self._timeouts,
            self._exits,
            self._listener,
            project_cap=lambda project_id: self._project_cap(
                find_project(self._projects, project_id), project_id
            ),
            outputs=self._outputs,
            marks=self._output_marks,
        )
        self._snapshot_loop = PeriodicTask("dockyard-snapshot-cleanup", self.run_snapshot_cleanup)
        self._orphan_loop = PeriodicTask("dockyard-orphan-cleanup", self.scan_and_cleanup_orphans)
        self._dangling = (
            None
            if images is None
            else DanglingImageReaper(
                images, self._labels, config.router_instance_id, self._reporter
            )
        )
        self._dangling_loop = PeriodicTask(
            "dockyard-dangling-image-cleanup", self.run_dangling_image_cleanup
        )

    # -- workers ------------------------------------------------------------------------

    def spawn_worker(self, job: WorkerJob, *, slot_timeout: float | None = None) -> ActiveWorker:
        """Start a container for `job` and return once it runs; its exit is watched.

        Waits for a free slot up to `slot_timeout` seconds (default
        `config.slot_wait_timeout_s`): highest `job.priority` first, first come first served
        within one, within the cap of the job's project. Raises `InvalidJobError`,
        `WorkerImageResolutionError` or `DuplicateJobError` before any Docker call,
        `NoWorkerSlotError` when no slot frees up, `WorkerCancelledError` when
        `cancel_worker` ended the wait, and Docker errors from create/start.
        """
        try:
            return self._spawn(job, slot_timeout)
        except BaseException as err:
            # The host's Sentry records the locals of every frame of what we raise: the
            # frames below this one (and below the engine error chained to it) hold the
            # worker's environment. They are cut; this frame holds no plain secret.
            raise scrub_for_host(err)  # noqa: B904 - the same error, its chain kept

    def _spawn(self, job: WorkerJob, slot_timeout: float | None) -> ActiveWorker:
        self._check_open()
        fields = resolve_job_fields(job, self._projects, instance_id=self.config.router_instance_id)
        project = find_project(self._projects, fields.project_id)
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
                backend_check=self._settings_check,
            )
        check_job_data(fields, self._env_sources)
        name = container_name(self.config.container_name_prefix, fields.job_id)
        fields, name = self._reserve(fields, name)
        run = self._registry.future(fields.job_id)  # this run's: what a cancel marks
        lease: SlotLease | None = None
        try:
            timeout = self.config.slot_wait_timeout_s if slot_timeout is None else slot_timeout
            waited = time.perf_counter()
            try:
                lease = self._slots.lease(
                    timeout,
                    project=fields.project_id,
                    cap=self._project_cap(project, fields.project_id),
                    priority=job.priority,
                    name=fields.job_id,
                )
            except NoWorkerSlotError:
                self._metrics.slot_wait(time.perf_counter() - waited, acquired=False)
                raise
            self._metrics.slot_wait(time.perf_counter() - waited, acquired=True)
            if run in self._cancels:  # cancelled just as the slot came
                raise WorkerCancelledError(fields.job_id, waiting=True)
            env = build_worker_env(
                fields, self._env_sources, snapshot_enabled=settings.snapshot_enabled
            )
            masker = worker_masker(env, fields)
            self._secrets.hold(fields.job_id, masker)
            snapshot = None
            if settings.snapshot_enabled and fields.project_id and fields.work_item_id:
                # The TTL resolved above: no second project lookup under the registry's lock.
                snapshot = self.snapshots.get(
                    fields.project_id, fields.work_item_id, ttl=settings.snapshot_ttl_s
                )
                self._metrics.snapshot_lookup(hit=snapshot is not None)
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
                labels=plan.labels(self._labels),
                memory_mb=self.config.worker_memory_mb,
                network=self.config.docker_network,
                auto_remove=self._auto_remove and not settings.snapshot_enabled,
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
                **job_ids(fields),
            )
            submitted = time.perf_counter()
            future = self._launch_executor.submit(
                launch_worker_container, launch, context, self._launcher
            )
        except BaseException:
            self._cancels.discard(run)
            self._abandon_spawn(fields.job_id, lease)
            raise
        try:
            worker = future.result()
        except BaseException as err:
            self._cancels.discard(run)
            if isinstance(err, Exception):
                self._metrics.spawn_failed(err)
            # Failed, or interrupted (the launch may still succeed): the slot goes back only
            # when no worker took it over; a started worker releases it when it ends.
            future.add_done_callback(
                lambda done: self._abandon_unless_started(done, fields.job_id, lease)
            )
            raise
        self._metrics.spawn_latency(time.perf_counter() - submitted)
        if run in self._cancels:  # cancelled while it launched
            self._cancels.discard(run)
            self._cancel_started(fields.job_id)
        return worker

    def _project_cap(self, project: ProjectConfig | None, project_id: str | None) -> int | None:
        """The most workers of `project_id` at once: its own cap, else the router's."""
        if project_id is None:
            return None
        if project is not None and project.max_workers is not None:
            return project.max_workers
        return self.config.max_workers_per_project

    def _abandon_unless_started(
        self, done: Future[ActiveWorker], job_id: str, lease: SlotLease
    ) -> None:
        if done.cancelled() or done.exception() is not None:
            self._abandon_spawn(job_id, lease)

    def _reserve(self, fields: JobFields, name: str) -> tuple[JobFields, str]:
        """Claim the job id and its container name; a made-up id taken already is made anew.

        Two jobs without an id arriving in one millisecond are two jobs, not a duplicate;
        two given ids that map to one container name are refused here, before Docker.
        """
        for _ in range(_GENERATED_ID_ATTEMPTS):
            try:
                self._registry.reserve(fields.job_id, name)
            except DuplicateJobError:
                if fields.job.id is not None:
                    raise
                job_id = generated_job_id(self.config.router_instance_id)
                fields = replace(fields, job_id=job_id)
                name = container_name(self.config.container_name_prefix, job_id)
            else:
                return fields, name
        raise DuplicateJobError(fields.job_id)

    def _abandon_spawn(self, job_id: str, lease: SlotLease | None) -> None:
        """Undo a spawn that never registered a worker: free its id and slot."""
        self._registry.unreserve(job_id)
        if lease is not None:
            lease.release()

    def wait_for_worker(self, job_id: str, timeout: float | None = None) -> WorkerOutcome:
        """Block until `job_id`'s outcome is known (also after it finished).

        Raises `TimeoutError` on timeout and `KeyError` for a job id this manager never
        started (or forgot: it keeps the last `config.outcome_history` outcomes).
        """
        return self._outcome_future(job_id).result(timeout)

    def _outcome_future(self, job_id: str) -> Future[WorkerOutcome]:
        """What `wait_for_worker` blocks on; `dockyard.aio` awaits it without a thread."""
        return self._registry.future(job_id)

    def kill_worker(self, job_id: str) -> bool:
        """Stop a worker now (the timeout kill path); False when it is not tracked."""
        tracked = self._registry.get(job_id)
        if tracked is None:
            return False
        return self._timeouts.kill(tracked)

    def cancel_worker(self, job_id: str) -> bool:
        """Cancel a job: stop its worker, or end its spawn's wait for a slot; never blocks.

        A running worker is stopped as a timeout would (SIGTERM, SIGKILL after
        `stop_grace_s`) on dockyard's threads; its one outcome is `cancelled`, unless it
        exited on its own first (or its timeout kill began first). A spawn still waiting
        for a slot raises `WorkerCancelledError`; one that is launching has its worker
        cancelled as soon as it runs. False when the worker already exited (its outcome is
        its own), or the job is neither running nor spawning.
        """
        if self._slots.cancel(job_id):
            return True
        tracked = self._registry.get(job_id)
        if tracked is None:
            if job_id not in self._registry.tracked_job_ids():
                return False
            try:
                run = self._registry.future(job_id)
            except KeyError:
                return False
            if run.done():
                return False  # ended just now
            # Spawning, not in the slot line: the spawn looks at this mark once it has its
            # slot and once its worker runs. It may have joined the line or registered just
            # now: then the line or the worker is cancelled here (twice does no harm).
            self._cancels.add(run)
            if self._slots.cancel(job_id):
                return True
            tracked = self._registry.get(job_id)
            if tracked is None:
                return True
            self._cancels.discard(run)
        return self._timeouts.cancel(tracked)

    def _cancel_started(self, job_id: str) -> None:
        tracked = self._registry.get(job_id)
        if tracked is not None:
            self._timeouts.cancel(tracked)

    def get_active_worker_count(self) -> int:
        """How many started workers are tracked right now."""
        return self._registry.count()

    def get_active_workers(self) -> list[ActiveWorker]:
        """The started workers tracked right now, as a new list."""
        return self._registry.active_workers()

    # -- snapshots ----------------------------------------------------------------------

    def sync_snapshots_from_docker(self) -> None:
        """Register the snapshot images already in Docker, then run one cleanup."""
        if self._snapshot_manager is not None:  # no images: nothing to find
            self._snapshot_manager.sync_from_docker()

    def run_snapshot_cleanup(self) -> None:
        """Evict expired and surplus snapshots and remove their images."""
        if self._snapshot_manager is not None:
            self._snapshot_manager.run_cleanup()
        else:  # no images to remove: the registry alone
            self.snapshots.evict()

    def start_snapshot_cleanup(self, interval: float = 300.0) -> None:
        """Run `run_snapshot_cleanup` every `interval` seconds on a daemon thread."""
        self._start_loop(self._snapshot_loop, interval)

    def stop_snapshot_cleanup(self) -> None:
        """Stop the snapshot cleanup loop (waits for a run in progress)."""
        self._snapshot_loop.stop()

    # -- dangling images ----------------------------------------------------------------

    def run_dangling_image_cleanup(self) -> list[str]:
        """Remove dangling images labelled as dockyard's; returns the image ids removed."""
        removed = self._dangling.scan() if self._dangling is not None else []
        self._metrics.dangling_images_removed(len(removed))
        return removed

    def start_dangling_image_cleanup(self, interval: float = DEFAULT_DANGLING_INTERVAL_S) -> None:
        """Run `run_dangling_image_cleanup` every `interval` seconds on a daemon thread."""
        self._start_loop(self._dangling_loop, interval)

    def stop_dangling_image_cleanup(self) -> None:
        """Stop the dangling-image cleanup loop (waits for a pass in progress)."""
        self._dangling_loop.stop()

    # -- orphans and restarts -----------------------------------------------------------

    def scan_and_cleanup_orphans(self) -> list[str]:
        """Stop and remove this instance's untracked overdue or exited containers."""
        reaped = self._reaper.scan()
        self._metrics.orphans_reaped(len(reaped))
        return reaped

    def start_orphan_cleanup(self, interval: float = 300.0) -> None:
        """Run `scan_and_cleanup_orphans` every `interval` seconds on a daemon thread."""
        self._start_loop(self._orphan_loop, interval)

    def stop_orphan_cleanup(self) -> None:
        """Stop the orphan cleanup loop (waits for a scan in progress)."""
        self._orphan_loop.stop()

    def adopt_workers(self) -> list[ActiveWorker]:
        """Re-attach to this router instance's running workers after a restart."""
        self._check_open()
        return self._adopter.adopt()

    # -- shutdown -----------------------------------------------------------------------

    def detach_all(self) -> None:
        """Forget every worker without killing it; stop timers and loops."""
        self._stop_loops()
        detached = self._registry.detach_all()
        if detached:
            log.info("detached from running workers", extra={"count": len(detached)})

    def close(self) -> None:
        """Detach, stop the loops, shut the executors down and close connections.

        Safe from any thread, a listener callback included; idempotent. When it returns no
        dockyard thread calls the engine again (a launch or scan under way is waited for).
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        # Launches under way finish first, so that detaching also catches their workers.
        if self._launcher.images is not None:
            self._launcher.images.close()  # a pull's retry back-off ends now
        self._launch_executor.shutdown()
        detached = self._registry.close()  # later registrations (an adoption) are refused
        if detached:
            log.info("detached from running workers", extra={"count": len(detached)})
        self._reaper.close()
        self._stop_loops()
        self._timeouts.close()
        self._wait_executor.shutdown()
        self._outputs.close()  # the detached workers' readers end; their containers run on
        self._offload.close()
        self._driver.close()
        self._metrics.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this ContainerManager is closed")

    def _start_loop(self, loop: PeriodicTask, interval: float) -> None:
        self._check_open()
        loop.start(interval)

    def _stop_loops(self) -> None:
        """Stop every cleanup loop, each waiting for a pass in progress."""
        for loop in (self._snapshot_loop, self._orphan_loop, self._dangling_loop):
            loop.stop()

    def _project_snapshot_ttl(self, project_id: str) -> float | None:
        project = find_project(self._projects, project_id)
        return project.snapshot_ttl_s if project is not None else None

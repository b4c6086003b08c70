"""The `ContainerManager` facade, and the launcher's names re-exported for compatibility.

Each method delegates to the module that owns its concern; `_manager_parts` builds and wires
the parts once and closes them in order. A job's path runs through:
- `_spawn`: its project's spawn settings, its id, slot and launch config, a cancel on the way;
- `_jobs`: the job's fields; `_naming`: its ids, names and labels;
- `_environment`: what the container is given, job data, and which of it is secret;
- `worker_container_launcher`: the launch plan, create and start, register, time, watch;
- `_tracker`: the worker's state machine and its slot;
- `_exit_handling`: how a run ends (the deadline kill, the exit wait, what follows);
- `_driver` and `_docker_driver`: the driver interface and the Docker driver (the Swarm
  driver, `_swarm`, instead when configured; `_drivers` is the table of both);
- `_docker` and `_exit_monitor`: the Docker client and its one events stream;
- `_loops` and `_metrics`: the pools `close()` waits for, and what is counted.
Off that path: snapshot registry and mechanics (`_snapshot_registry`, `_snapshots`),
orphans and restarts (`_orphans`), dangling images (`_dangling`), Sentry (`_sentry`),
the Prometheus series (`_prometheus`), what a launch does when a step fails
(`_launch_failures`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Self

from ._dangling import DEFAULT_DANGLING_INTERVAL_S
from ._fork import fork_guarded
from ._manager_parts import Callbacks, ManagerParts
from ._sentry import Reporter, scrub_for_host
from .worker_container_launcher import (
    WorkerContainerLaunchConfig,
    WorkerContainerLaunchContext,
    WorkerContainerLauncherDependencies,
    launch_worker_container,
)

if TYPE_CHECKING:
    from concurrent.futures import Future
    from types import TracebackType

    import docker
    from prometheus_client import CollectorRegistry

    from ._config import RouterConfig
    from ._driver import Driver
    from ._environment import CredentialProvider
    from ._job_data import JobDataStore
    from ._jobs import ProjectDirectory, WorkerJob
    from ._loops import PeriodicTask
    from ._models import ActiveWorker, WorkerLifecycleListener, WorkerOutcome
    from ._registry_auth import RegistryCredentialProvider

__all__ = [
    "ContainerManager",
    "WorkerContainerLaunchConfig",
    "WorkerContainerLaunchContext",
    "WorkerContainerLauncherDependencies",
    "launch_worker_container",
]


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
        self._closed = False
        self._close_lock = threading.Lock()
        callbacks = Callbacks(
            snapshots=self.run_snapshot_cleanup,
            orphans=self.scan_and_cleanup_orphans,
            dangling_images=self.run_dangling_image_cleanup,
            active_workers=self.get_active_worker_count,
        )
        self._parts = ManagerParts(
            config,
            callbacks,
            docker_client=docker_client,
            projects=projects,
            credentials=credentials,
            listener=listener,
            job_data_store=job_data_store,
            reporter=reporter,
            metrics_registry=metrics_registry,
            registry_credentials=registry_credentials,
            driver=driver,
        )
        self.snapshots = self._parts.snapshots

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
            self._check_open()
            return self._parts.spawner.spawn(job, slot_timeout)
        except BaseException as err:
            # The host's Sentry records the locals of every frame of what we raise: the
            # frames below this one (and below the engine error chained to it) hold the
            # worker's environment. They are cut; this frame holds no plain secret.
            raise scrub_for_host(err)  # noqa: B904 - the same error, its chain kept

    def wait_for_worker(self, job_id: str, timeout: float | None = None) -> WorkerOutcome:
        """Block until `job_id`'s outcome is known (also after it finished).

        Raises `TimeoutError` on timeout and `KeyError` for a job id this manager never
        started (or forgot: it keeps the last `config.outcome_history` outcomes).
        """
        return self._outcome_future(job_id).result(timeout)

    def _outcome_future(self, job_id: str) -> Future[WorkerOutcome]:
        """What `wait_for_worker` blocks on; `dockyard.aio` awaits it without a thread."""
        return self._parts.registry.future(job_id)

    def kill_worker(self, job_id: str) -> bool:
        """Stop a worker now (the timeout kill path); False when it is not tracked."""
        tracked = self._parts.registry.get(job_id)
        return tracked is not None and self._parts.timeouts.kill(tracked)

    def cancel_worker(self, job_id: str) -> bool:
        """Cancel a job: stop its worker, or end its spawn's wait for a slot; never blocks.

        A running worker is stopped as a timeout would (SIGTERM, SIGKILL after
        `stop_grace_s`) on dockyard's threads; its one outcome is `cancelled`, unless it
        exited on its own first (or its timeout kill began first). A spawn still waiting
        for a slot raises `WorkerCancelledError`; one that is launching has its worker
        cancelled as soon as it runs. False when the worker already exited (its outcome is
        its own), or the job is neither running nor spawning.
        """
        return self._parts.spawner.cancel(job_id)

    def get_active_worker_count(self) -> int:
        """How many started workers are tracked right now."""
        return self._parts.registry.count()

    def get_active_workers(self) -> list[ActiveWorker]:
        """The started workers tracked right now, as a new list."""
        return self._parts.registry.active_workers()

    # -- snapshots ----------------------------------------------------------------------

    def sync_snapshots_from_docker(self) -> None:
        """Register the snapshot images already in Docker, then run one cleanup."""
        if self._parts.snapshot_manager is not None:  # no images: nothing to find
            self._parts.snapshot_manager.sync_from_docker()

    def run_snapshot_cleanup(self) -> None:
        """Evict expired and surplus snapshots and remove their images."""
        if self._parts.snapshot_manager is not None:
            self._parts.snapshot_manager.run_cleanup()
        else:  # no images to remove: the registry alone
            self.snapshots.evict()

    def start_snapshot_cleanup(self, interval: float = 300.0) -> None:
        """Run `run_snapshot_cleanup` every `interval` seconds on a daemon thread."""
        self._start_loop(self._parts.snapshot_loop, interval)

    def stop_snapshot_cleanup(self) -> None:
        """Stop the snapshot cleanup loop (waits for a run in progress)."""
        self._parts.snapshot_loop.stop()

    # -- dangling images ----------------------------------------------------------------

    def run_dangling_image_cleanup(self) -> list[str]:
        """Remove dangling images labelled as dockyard's; returns the image ids removed."""
        dangling = self._parts.dangling
        removed = dangling.scan() if dangling is not None else []
        self._parts.metrics.dangling_images_removed(len(removed))
        return removed

    def start_dangling_image_cleanup(self, interval: float = DEFAULT_DANGLING_INTERVAL_S) -> None:
        """Run `run_dangling_image_cleanup` every `interval` seconds on a daemon thread."""
        self._start_loop(self._parts.dangling_loop, interval)

    def stop_dangling_image_cleanup(self) -> None:
        """Stop the dangling-image cleanup loop (waits for a pass in progress)."""
        self._parts.dangling_loop.stop()

    # -- orphans and restarts -----------------------------------------------------------

    def scan_and_cleanup_orphans(self) -> list[str]:
        """Stop and remove this instance's untracked overdue or exited containers."""
        reaped = self._parts.reaper.scan()
        self._parts.metrics.orphans_reaped(len(reaped))
        return reaped

    def start_orphan_cleanup(self, interval: float = 300.0) -> None:
        """Run `scan_and_cleanup_orphans` every `interval` seconds on a daemon thread."""
        self._start_loop(self._parts.orphan_loop, interval)

    def stop_orphan_cleanup(self) -> None:
        """Stop the orphan cleanup loop (waits for a scan in progress)."""
        self._parts.orphan_loop.stop()

    def adopt_workers(self) -> list[ActiveWorker]:
        """Re-attach to this router instance's running workers after a restart."""
        self._check_open()
        return self._parts.adopter.adopt()

    # -- shutdown -----------------------------------------------------------------------

    def detach_all(self) -> None:
        """Forget every worker without killing it; stop timers and loops."""
        self._parts.detach_all()

    def close(self) -> None:
        """Detach, stop the loops, shut the executors down and close connections.

        Safe from any thread, a listener callback included; idempotent. When it returns no
        dockyard thread calls the engine again (a launch or scan under way is waited for).
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._parts.close()

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

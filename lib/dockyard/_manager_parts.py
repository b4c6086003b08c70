"""A manager's parts: its driver and all that is built around it, wired once, closed in order.

`ManagerParts` builds them for one `ContainerManager`: the driver (from the backend table,
or the host's own), the secrets and reporter, the metrics and listener, the output hub, the
registry and slots, the pools, the snapshot, exit, orphan and adoption machinery, the
spawner and the cleanup loops. `close()` takes them down in the order that lets each one
finish what the previous ones still hand it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._adoption import WorkerAdopter
from ._dangling import DanglingImageReaper
from ._docker_config import DockerConfigLogins
from ._drivers import check_projects, driver_factory, settings_check
from ._environment import CredentialProvider, EnvSources, router_environ
from ._errors import ConfigError, DockyardError
from ._exit_handling import ExitWatcher, TimeoutController
from ._images import ImagePuller
from ._job_data import JobDataStore, RedisOffloadStore
from ._listener import lifecycle_listener
from ._loops import ManagedPool, PeriodicTask
from ._naming import LabelSchema
from ._orphans import OrphanReaper
from ._output_hub import OutputHub
from ._output_marks import MarkKeeper, RedisOutputMarks, RunningMarks
from ._prometheus import build_metrics
from ._registry import WorkerRegistry
from ._registry_auth import RegistryAuthResolver, RegistryCredentialProvider
from ._retry import RetryPolicy
from ._secrets import Masker, SecretBook, router_secret_values
from ._sentry import Reporter, SentryReporter
from ._slots import SlotGate
from ._snapshot_registry import SnapshotRegistry
from ._snapshots import SnapshotManager
from ._spawn import Spawner, find_project, project_cap, project_snapshot_ttl
from .worker_container_launcher import WorkerContainerLauncherDependencies

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import docker
    from prometheus_client import CollectorRegistry

    from ._config import RouterConfig
    from ._driver import Driver
    from ._jobs import ProjectDirectory
    from ._models import WorkerLifecycleListener

__all__ = ["Callbacks", "ManagerParts"]

log = logging.getLogger("dockyard.manager")

_WAIT_POOL_HEADROOM = 8  # adopted workers may briefly exceed max_workers


@dataclass(frozen=True)
class Callbacks:
    """What the parts call back on their manager: its cleanup passes (its loops run them)
    and its worker count (the gauge reads it at scrape time)."""

    snapshots: Callable[[], object]
    orphans: Callable[[], object]
    dangling_images: Callable[[], object]
    active_workers: Callable[[], int]


class ManagerParts:
    """Everything one manager is made of (see the module)."""

    def __init__(
        self,
        config: RouterConfig,
        callbacks: Callbacks,
        *,
        docker_client: docker.DockerClient | docker.APIClient | None,
        projects: ProjectDirectory | None,
        credentials: CredentialProvider | None,
        listener: WorkerLifecycleListener | None,
        job_data_store: JobDataStore | None,
        reporter: Reporter | None,
        metrics_registry: CollectorRegistry | None,
        registry_credentials: RegistryCredentialProvider | None,
        driver: Driver | None,
    ) -> None:
        wait_pool = config.max_workers + _WAIT_POOL_HEADROOM
        if projects is not None:
            check_projects(config.backend, projects.list_projects())
        backend_check = settings_check(config.backend)
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
        self.driver = driver
        images = driver.images
        environ = router_environ()
        secrets = SecretBook(
            Masker.of(router_secret_values(environ)), history=config.outcome_history
        )
        reporter = reporter or SentryReporter(secrets)
        try:
            # Gauges read the registry and slots at scrape time; they exist just below.
            self.metrics = build_metrics(
                metrics_registry,
                max_workers=config.max_workers,
                active=callbacks.active_workers,
                waiting=lambda: self.slots.waiting,
                backend=config.backend,
            )
        except ConfigError:
            driver.close()
            raise
        if self.metrics.enabled:
            driver.observer = self.metrics.engine_call
        safe_listener = lifecycle_listener(listener, self.metrics, reporter)
        # Each worker's output, attached before its start (drivers that declare live output);
        # an adopted worker's followed from the engine's log after the last manager's mark,
        # left while its workers run (about once a second) and exactly at a clean close.
        follows = driver.capabilities.follow_output
        marks_kept = follows and bool(config.redis_url.strip())  # somewhere to keep them
        self.output_marks = RedisOutputMarks(config.redis_url, config.router_instance_id)
        self.outputs = OutputHub(
            attach=driver.attach_output if driver.capabilities.live_output else None,
            enabled=config.stream_output,
            listener=listener,
            sink=safe_listener,
            counters=self.metrics,
            tail_lines=config.log_tail_lines,
            delivery_threads=config.max_workers,
            follow=driver.follow_output if follows else None,
            keep=MarkKeeper(self.output_marks, driver.output_mark) if follows else None,
            marking=RunningMarks(self.output_marks) if marks_kept else None,
        )
        labels = LabelSchema(config.label_prefix)
        self.slots = SlotGate(config.max_workers)
        self.registry = WorkerRegistry(safe_listener, config.outcome_history)
        self.offload = RedisOffloadStore(config.redis_url)
        env_sources = EnvSources(
            config=config,
            router_environ=environ,
            credentials=credentials,
            # Without a store of the host's, large payloads go to Redis at redis_url.
            job_data_store=job_data_store if job_data_store is not None else self.offload,
            reporter=reporter,
        )
        self.launch_executor = ManagedPool(config.launch_concurrency, "dockyard-launch")
        self.wait_executor = ManagedPool(wait_pool, "dockyard-wait")
        self.snapshots = SnapshotRegistry(
            default_ttl_s=config.snapshot_default_ttl_s,
            max_count=config.snapshot_max_count,
            max_size_bytes=config.snapshot_max_size_bytes,
            project_ttl=functools.partial(project_snapshot_ttl, projects),
        )
        # Snapshots and image pulls need the engine's images: drivers without them have none.
        self.snapshot_manager = (
            None
            if images is None
            else SnapshotManager(
                images,
                self.snapshots,
                reporter,
                config,
                labels,
                self.metrics,
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
        self.timeouts = TimeoutController(driver, reporter, config.stop_grace_s, kill_policy)
        self.exits = ExitWatcher(
            driver=driver,
            registry=self.registry,
            reporter=reporter,
            snapshots=self.snapshot_manager,
            submit=self.wait_executor.submit,
            log_tail_lines=config.log_tail_lines,
            # Any engine failure but a 404 is ridden out for the window (the spec's rule).
            wait_policy=RetryPolicy(retry_on=(DockyardError,), window_s=config.wait_retry_window_s),
        )
        self.launcher = WorkerContainerLauncherDependencies(
            driver=driver,
            registry=self.registry,
            timeouts=self.timeouts,
            exits=self.exits,
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
                metrics=self.metrics,
                retries=config.image_pull_retries,
                reuse_s=config.image_pull_reuse_s,
            ),
            reporter=reporter,
            listener=safe_listener,
            labels=labels,
            instance_id=config.router_instance_id,
            metrics=self.metrics,
            outputs=self.outputs,
        )
        self.spawner = Spawner(
            config=config,
            projects=projects,
            settings_check=backend_check,
            registry=self.registry,
            slots=self.slots,
            secrets=secrets,
            env_sources=env_sources,
            snapshots=self.snapshots,
            timeouts=self.timeouts,
            launcher=self.launcher,
            launch_executor=self.launch_executor,
            metrics=self.metrics,
            auto_remove=config.auto_remove_workers and driver.capabilities.auto_remove,
        )
        self.reaper = OrphanReaper(driver, self.registry, labels, config, reporter, safe_listener)
        self.adopter = WorkerAdopter(
            driver,
            self.registry,
            labels,
            config,
            self.slots,
            self.timeouts,
            self.exits,
            safe_listener,
            project_cap=lambda project_id: project_cap(
                config, find_project(projects, project_id), project_id
            ),
            outputs=self.outputs,
            marks=self.output_marks,
        )
        self.dangling = (
            None
            if images is None
            else DanglingImageReaper(images, labels, config.router_instance_id, reporter)
        )
        self.snapshot_loop = PeriodicTask("dockyard-snapshot-cleanup", callbacks.snapshots)
        self.orphan_loop = PeriodicTask("dockyard-orphan-cleanup", callbacks.orphans)
        self.dangling_loop = PeriodicTask(
            "dockyard-dangling-image-cleanup", callbacks.dangling_images
        )

    def stop_loops(self) -> None:
        """Stop every cleanup loop, each waiting for a pass in progress."""
        for loop in (self.snapshot_loop, self.orphan_loop, self.dangling_loop):
            loop.stop()

    def detach_all(self) -> None:
        """Forget every worker without killing it; stop timers and loops."""
        self.stop_loops()
        _log_detached(self.registry.detach_all())

    def close(self) -> None:
        """Take everything down; when it returns no part calls the engine again."""
        # Launches under way finish first, so that detaching also catches their workers.
        if self.launcher.images is not None:
            self.launcher.images.close()  # a pull's retry back-off ends now
        self.launch_executor.shutdown()
        _log_detached(self.registry.close())  # later registrations (an adoption) are refused
        self.reaper.close()
        self.stop_loops()
        self.timeouts.close()
        self.wait_executor.shutdown()
        self.outputs.close()  # the detached workers' readers end; their containers run on
        self.output_marks.close()
        self.offload.close()
        self.driver.close()
        self.metrics.close()


def _log_detached(detached: Sequence[object]) -> None:
    if detached:
        log.info("detached from running workers", extra={"count": len(detached)})

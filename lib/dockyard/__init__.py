"""dockyard: run each job of a job router in its own Docker container.

`ContainerManager` launches a container per job, watches it, kills it when it overruns,
snapshots clean finishes for warm reuse, reaps orphans and reports failures to Sentry.
"""

from __future__ import annotations

import logging

from ._config import ProjectConfig, RouterConfig
from ._errors import (
    ConfigError,
    DockerUnavailableError,
    DockyardError,
    DuplicateJobError,
    InvalidJobError,
    NoWorkerSlotError,
    WorkerImageResolutionError,
)
from ._job_data import JobDataOffloadError
from ._jobs import WorkerJob
from ._models import ActiveWorker, WorkerLifecycleListener, WorkerOutcome
from ._redis_store import RedisJobDataStore
from ._snapshot_registry import SnapshotMetadata, SnapshotRegistry
from .container_manager import ContainerManager
from .worker_container_launcher import (
    WorkerContainerLaunchConfig,
    WorkerContainerLaunchContext,
    WorkerContainerLauncherDependencies,
    launch_worker_container,
)

__all__ = [
    "ActiveWorker",
    "ConfigError",
    "ContainerManager",
    "DockerUnavailableError",
    "DockyardError",
    "DuplicateJobError",
    "InvalidJobError",
    "JobDataOffloadError",
    "NoWorkerSlotError",
    "ProjectConfig",
    "RedisJobDataStore",
    "RouterConfig",
    "SnapshotMetadata",
    "SnapshotRegistry",
    "WorkerContainerLaunchConfig",
    "WorkerContainerLaunchContext",
    "WorkerContainerLauncherDependencies",
    "WorkerImageResolutionError",
    "WorkerJob",
    "WorkerLifecycleListener",
    "WorkerOutcome",
    "launch_worker_container",
]

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

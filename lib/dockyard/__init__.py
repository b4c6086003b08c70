"""dockyard: run each job of a job router in its own Docker container.

`ContainerManager` launches a container per job, watches it, kills it when it overruns,
snapshots clean finishes for warm reuse, reaps orphans and reports failures to Sentry.
The host hooks are small protocols (`ProjectDirectory`, `CredentialProvider`,
`JobDataStore`, `Reporter`, `RegistryCredentialProvider`); `dockyard.testing` has a fake
engine for a router's own tests.
"""

from __future__ import annotations

import logging

from ._config import ProjectConfig, RouterConfig
from ._environment import CredentialProvider
from ._errors import (
    ConfigError,
    DockerUnavailableError,
    DockyardError,
    DuplicateJobError,
    ForkedManagerError,
    InvalidJobError,
    JobDataOffloadError,
    NoWorkerSlotError,
    WorkerCancelledError,
    WorkerImageResolutionError,
    WorkerSpawnError,
)
from ._job_data import JobDataStore
from ._jobs import ProjectDirectory, WorkerJob
from ._models import ActiveWorker, WorkerLifecycleListener, WorkerOutcome
from ._redis_store import RedisJobDataStore
from ._registry_auth import RegistryCredentialProvider
from ._sentry import Reporter
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
    "CredentialProvider",
    "DockerUnavailableError",
    "DockyardError",
    "DuplicateJobError",
    "ForkedManagerError",
    "InvalidJobError",
    "JobDataOffloadError",
    "JobDataStore",
    "NoWorkerSlotError",
    "ProjectConfig",
    "ProjectDirectory",
    "RedisJobDataStore",
    "RegistryCredentialProvider",
    "Reporter",
    "RouterConfig",
    "SnapshotMetadata",
    "SnapshotRegistry",
    "WorkerCancelledError",
    "WorkerContainerLaunchConfig",
    "WorkerContainerLaunchContext",
    "WorkerContainerLauncherDependencies",
    "WorkerImageResolutionError",
    "WorkerJob",
    "WorkerLifecycleListener",
    "WorkerOutcome",
    "WorkerSpawnError",
    "launch_worker_container",
]

__version__ = "0.2.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

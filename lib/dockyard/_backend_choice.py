"""Which engine backend a manager runs its workers on, chosen once from `RouterConfig.backend`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import docker

from ._backend import EngineBackend
from ._config import SWARM_SNAPSHOTS_REFUSED, ProjectConfig, RouterConfig
from ._container_settings import ContainerSettings, Layer, project_layer
from ._docker import DockerGateway
from ._errors import ConfigError
from ._swarm import SwarmGateway
from ._swarm_settings import check_swarm_expressible

__all__ = ["backend_settings_check", "check_backend_projects", "open_backend"]


def open_backend(
    config: RouterConfig,
    docker_client: docker.DockerClient | docker.APIClient | None,
    *,
    short_pool: int,
    wait_pool: int,
) -> EngineBackend:
    """The gateway for `config.backend`, over the caller's client or a new connection.

    Its exit stream carries only this router instance's containers: the engine filters, so
    two routers on one engine never read each other's exits.
    """
    own = [f"{config.label_prefix}.router.instance={config.router_instance_id}"]
    gateway = (
        DockerGateway.connect(
            short_pool=short_pool,
            wait_pool=wait_pool,
            timeout_s=config.docker_timeout_s,
            event_labels=own,
        )
        if docker_client is None
        else DockerGateway.from_client(docker_client, event_labels=own)
    )
    gateway.image_write_timeout_s = config.image_write_timeout_s
    if config.backend != "swarm":
        return gateway
    # Swarm runs workers as services, over the same node engine for images and containers.
    return SwarmGateway.over(
        gateway,
        stop_grace_s=config.stop_grace_s,
        pending_timeout_s=config.swarm_pending_timeout_s,
        unreachable_window_s=config.wait_retry_window_s,
    )


def backend_settings_check(
    config: RouterConfig,
) -> Callable[[ContainerSettings, Layer], None] | None:
    """What refuses container settings the backend cannot express (None: it takes all)."""
    return check_swarm_expressible if config.backend == "swarm" else None


def check_backend_projects(config: RouterConfig, projects: Sequence[ProjectConfig]) -> None:
    """Refuse per-project snapshots, and container settings, that the backend cannot
    honour (before any launch)."""
    if config.backend != "swarm":
        return
    for project in projects:
        check_swarm_expressible(project.container, project_layer(project.id))
        if project.snapshot_enabled:
            raise ConfigError(
                f"ProjectConfig.snapshot_enabled ({project.id})", SWARM_SNAPSHOTS_REFUSED
            )

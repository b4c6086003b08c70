"""Spawn settings: the effective image, timeout and snapshot policy of a job's project."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import InvalidJobError, WorkerImageResolutionError
from ._jobs import ProjectDirectory
from ._naming import is_valid_image_reference

if TYPE_CHECKING:
    from ._config import ProjectConfig, RouterConfig

__all__ = ["SpawnSettings", "find_project", "resolve_spawn_settings"]


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

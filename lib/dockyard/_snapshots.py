"""Snapshot mechanics: scrubbed commits of clean exits, start-up sync, and image cleanup."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from ._config import RouterConfig
from ._docker import DockerGateway, is_conflict, is_not_found
from ._environment import SCRUBBED_ENV_KEYS
from ._models import ActiveWorker
from ._naming import LabelSchema, snapshot_image_name
from ._sentry import Reporter
from ._snapshot_registry import SnapshotMetadata, SnapshotRegistry

__all__ = ["SnapshotManager", "scrub_changes"]

log = logging.getLogger("dockyard.snapshots")

SNAPSHOT_TAG = "latest"


def scrub_changes(env_keys: Iterable[str], credential_keys: Iterable[str]) -> list[str]:
    """Docker `changes` blanking every deny-listed and credential key among `env_keys`.

    A scrubbed `Env` in the commit body does not work (the daemon re-adds missing keys);
    `ENV KEY=` blanks the value and keeps Cmd, Entrypoint and the rest.
    """
    present = set(env_keys)
    deny = [*SCRUBBED_ENV_KEYS, *credential_keys]
    ordered = list(dict.fromkeys(key for key in deny if key in present))
    return [f"ENV {key}=" for key in ordered]


def _env_keys(env: Iterable[str]) -> dict[str, str]:
    pairs = (item.partition("=") for item in env)
    return {key: value for key, _, value in pairs}


def _credential_keys(env: Mapping[str, str]) -> list[str]:
    listed = env.get("CASCADE_CREDENTIAL_KEYS", "")
    return [key.strip() for key in listed.split(",") if key.strip()]


@dataclass
class SnapshotManager:
    """Commits, registers, syncs and removes snapshot images for one manager."""

    docker: DockerGateway
    registry: SnapshotRegistry
    reporter: Reporter
    config: RouterConfig
    labels: LabelSchema

    def image_for(self, project_id: str, work_item_id: str) -> str:
        repository = snapshot_image_name(
            self.config.snapshot_image_prefix, project_id, work_item_id
        )
        return f"{repository}:{SNAPSHOT_TAG}"

    def commit(
        self, worker: ActiveWorker, launch_env_keys: Iterable[str]
    ) -> SnapshotMetadata | None:
        """Commit a cleanly finished worker; never raises (a failed commit only loses warmth)."""
        if worker.project_id is None or worker.work_item_id is None:
            return None
        image = self.image_for(worker.project_id, worker.work_item_id)
        repository = image.rsplit(":", 1)[0]
        try:
            changes = self._changes(worker, launch_env_keys)
            self.docker.commit(worker.container_id, repository, SNAPSHOT_TAG, changes)
        except Exception as err:
            log.warning(
                "snapshot commit failed",
                extra={"job_id": worker.job_id, "container_id": worker.short_id},
            )
            self.reporter.report(
                err,
                "snapshot_commit",
                level="warning",
                tags={"jobType": worker.job_type},
                extras={"jobId": worker.job_id, "image": image},
            )
            return None
        size = self._image_size(image)
        meta = self.registry.register(worker.project_id, worker.work_item_id, image, size)
        log.info(
            "snapshot committed",
            extra={"job_id": worker.job_id, "image": image, "image_size_bytes": size},
        )
        return meta

    def _changes(self, worker: ActiveWorker, launch_env_keys: Iterable[str]) -> list[str]:
        launched = list(launch_env_keys)
        try:
            info = self.docker.inspect(worker.container_id)
            env = _env_keys((info.get("Config") or {}).get("Env") or [])
        except Exception as err:
            # Still blank every key dockyard itself set: no secret may reach an image.
            log.warning("snapshot env inspect failed", extra={"job_id": worker.job_id})
            self.reporter.report(
                err,
                "snapshot_env_scrub_inspect_failed",
                level="warning",
                tags={"jobType": worker.job_type},
                extras={"jobId": worker.job_id},
            )
            return scrub_changes([*launched, *SCRUBBED_ENV_KEYS], launched)
        return scrub_changes(env, _credential_keys(env))

    def _image_size(self, image: str) -> int | None:
        try:
            size = self.docker.image_inspect(image).get("Size")
        except Exception:
            log.debug("snapshot size unknown", extra={"image": image}, exc_info=True)
            return None
        return int(size) if isinstance(size, int | float) else None

    def remove_images(self, evicted: Iterable[SnapshotMetadata]) -> list[SnapshotMetadata]:
        """Remove evicted images; 404/409 (gone, or in use) are quietly skipped."""
        removed = []
        for meta in evicted:
            try:
                self.docker.remove_image(meta.image_name)
            except Exception as err:
                if is_not_found(err) or is_conflict(err):
                    continue
                self.reporter.report(
                    err, "snapshot_image_remove", level="warning", extras={"image": meta.image_name}
                )
                continue
            removed.append(meta)
            log.info("snapshot image removed", extra={"image": meta.image_name})
        return removed

    def run_cleanup(self) -> list[SnapshotMetadata]:
        """Evict by TTL, count and size, and remove the evicted images from Docker."""
        try:
            evicted = self.registry.evict()
        except Exception as err:
            self.reporter.report(err, "snapshot_cleanup_scan")
            return []
        self.remove_images(evicted)
        return evicted

    def sync_from_docker(self) -> list[SnapshotMetadata]:
        """Register the snapshot images already in Docker (after a restart), then clean up."""
        registered: list[SnapshotMetadata] = []
        try:
            images = self.docker.list_images(self.config.snapshot_image_prefix)
        except Exception as err:
            self.reporter.report(err, "snapshot_startup_sync")
            return registered
        for image in images:
            labels = image.get("Labels") or {}
            project_id = labels.get(self.labels.project_id)
            work_item_id = labels.get(self.labels.work_item_id)
            if not project_id or not work_item_id:
                continue  # not one of ours, or from an older scheme
            name = self.image_for(project_id, work_item_id)
            if name not in (image.get("RepoTags") or []):
                continue
            created = datetime.fromtimestamp(int(image.get("Created") or 0), UTC)
            existing = self.registry.get(project_id, work_item_id)
            if existing is not None and existing.created_at >= created:
                continue
            size = image.get("Size")
            registered.append(
                self.registry.register(
                    project_id,
                    work_item_id,
                    name,
                    int(size) if isinstance(size, int) else None,
                    created_at=created,
                )
            )
        self.run_cleanup()
        return registered

"""Snapshot mechanics: scrubbed commits of clean exits, start-up sync, and image cleanup.

A snapshot carries no secret and owns no worker (`_snapshot_scrub`: what a commit blanks
and how the image is checked before it gets its name).

A snapshot chain stays within the storage driver's layer limit: each commit adds a layer
on top of the previous snapshot, and a commit that holds more than
`RouterConfig.snapshot_max_layers` is written flattened instead (`_flatten`: one layer with
the container's whole filesystem, the same config, no parent), so every run starts from the
previous run's filesystem however long a work item lives. A commit that still fails
invalidates the pair's snapshot: the registry entry is dropped and the image retired, so the
next run starts from the base image, never from an older snapshot.

A superseded or invalidated snapshot is retired (`_snapshot_retirement`): removed now, in a
later cleanup round while a container still holds it, or with its child image.

Sync and cleanup touch only this instance's snapshots, plus legacy images of the name prefix
that carry no dockyard label at all (evicted, never reused).
"""

from __future__ import annotations

import logging
import threading
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._errors import (
    SnapshotScrubError,
)
from ._flatten import flatten, layer_count
from ._image_rewrite import record_without_container_config
from ._metrics import NO_METRICS, Metrics
from ._naming import LabelSchema, format_deadline, snapshot_image_name
from ._snapshot_retirement import ImageRetirement, image_id_of, snapshot_owner
from ._snapshot_scrub import (
    SCRUBBED_ENV_KEYS,
    blanked_keys,
    credential_keys,
    env_pairs,
    env_values_left,
    label_changes,
    worker_labels_left,
)
from ._tracker import log_ids

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from ._config import RouterConfig
    from ._driver import ImageStore
    from ._models import ActiveWorker
    from ._sentry import Reporter
    from ._snapshot_registry import SnapshotMetadata, SnapshotRegistry

__all__ = ["DISCOVERED_PROJECT", "SnapshotManager"]

log = logging.getLogger("dockyard.snapshots")

SNAPSHOT_TAG = "latest"
_LOCK_STRIPES = 16


# The project id of legacy images found at start-up: no job has an empty project id, so
# such an entry can never serve a warm start; the next cleanup evicts it.
DISCOVERED_PROJECT = ""


@dataclass
class SnapshotManager:
    """Commits, registers, syncs and removes snapshot images for one manager."""

    images: ImageStore
    registry: SnapshotRegistry
    reporter: Reporter
    config: RouterConfig
    labels: LabelSchema
    metrics: Metrics = NO_METRICS
    # A worker's `KEY=value` env by its id (the driver's inspect), for a commit whose exit
    # inspect failed; None: unknown, every key dockyard set is blanked.
    worker_env: Callable[[str], Sequence[str]] | None = None
    _locks: tuple[threading.Lock, ...] = field(
        init=False, default_factory=lambda: tuple(threading.Lock() for _ in range(_LOCK_STRIPES))
    )
    retirement: ImageRetirement = field(init=False)
    _discovered_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    # Legacy images registered by the start-up sync, evicted by the next cleanup: name -> entry.
    _discovered: dict[str, SnapshotMetadata] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.retirement = ImageRetirement(
            self.images, self.reporter, self.labels, self.config.router_instance_id, self._live_ids
        )

    def _live_ids(self) -> list[str | None]:
        return [self._image_id(meta.image_name) for meta in self.registry.entries()]

    def image_for(self, project_id: str, work_item_id: str) -> str:
        repository = snapshot_image_name(
            self.config.snapshot_image_prefix, project_id, work_item_id
        )
        return f"{repository}:{SNAPSHOT_TAG}"

    # -- commit -------------------------------------------------------------------------

    def commit(
        self,
        worker: ActiveWorker,
        launch_env_keys: Iterable[str],
        *,
        container_env: Sequence[str] | None = None,
        base_image: str | None = None,
    ) -> SnapshotMetadata | None:
        """Commit a cleanly finished worker; never raises (a failed commit only loses warmth).

        `container_env` is the container's `Config.Env` when the caller has already inspected
        it; otherwise it is inspected here. `base_image` (the worker's base image label) is
        recorded on the snapshot; without it the launch image is, unless that was a snapshot.
        """
        if worker.project_id is None or worker.work_item_id is None:
            return None
        project_id, work_item_id = worker.project_id, worker.work_item_id
        image = self.image_for(project_id, work_item_id)
        # Two runs of one work item finishing together must not interleave on one name.
        with self._lock_for(image):
            return self._commit(
                worker,
                launch_env_keys,
                container_env,
                image,
                (project_id, work_item_id),
                base_image=base_image,
            )

    def _lock_for(self, image: str) -> threading.Lock:
        return self._locks[zlib.crc32(image.encode("utf-8")) % _LOCK_STRIPES]

    def _commit(
        self,
        worker: ActiveWorker,
        launch_env_keys: Iterable[str],
        container_env: Sequence[str] | None,
        image: str,
        pair: tuple[str, str],
        *,
        base_image: str | None,
    ) -> SnapshotMetadata | None:
        previous = self._image_id(image)
        created: list[str] = []
        try:
            changes, blanked = self._changes(worker, launch_env_keys, container_env)
            changes += label_changes(self.labels, self._snapshot_labels(worker, base_image))
            # Untagged until checked: the name only ever points at a scrubbed image, so a
            # crash half-way never leaves one for `sync_from_docker` to pick up.
            created.append(self.images.commit(worker.container_id, "", "", changes))
            final, info = self._scrubbed_and_named(worker, created, image, blanked)
        except Exception as err:  # a snapshot is best effort: any failure is reported, never raised
            log.warning(
                "snapshot commit failed",
                extra=log_ids(worker),
            )
            self.reporter.report(
                err,
                "snapshot_commit",
                level="warning",
                tags={"jobType": worker.job_type},
                extras={  # the original's names
                    "jobId": worker.job_id,
                    "containerId": worker.container_id,
                    "imageName": image,
                    "projectId": pair[0],
                    "workItemId": pair[1],
                },
            )
            self._invalidate(created, pair, image, previous)
            self.metrics.snapshot_commit(ok=False)
            return None
        size = info.get("Size")
        size = int(size) if isinstance(size, int | float) and size >= 0 else None
        try:
            # The registry asks the host's project directory for the TTL: a hook that
            # fails must not escape commit(); the next start-up sync finds the image.
            meta = self.registry.register(*pair, image, size)
        except Exception as err:
            log.warning(
                "snapshot committed but not registered; the project lookup for its TTL failed",
                extra={"job_id": worker.job_id, "image": image, "error_type": type(err).__name__},
            )
            self.reporter.report(
                err,
                "snapshot_commit",
                level="warning",
                tags={"jobType": worker.job_type},
                extras={"jobId": worker.job_id, "imageName": image},
            )
            return None
        self.metrics.snapshot_commit(ok=True)
        if previous is not None and previous != final:
            self.retirement.retire(previous)  # the name moved on; the old image is garbage now
        log.info(
            "snapshot committed",
            extra={"job_id": worker.job_id, "image": image, "image_size_bytes": size},
        )
        return meta

    def _snapshot_labels(self, worker: ActiveWorker, base_image: str | None) -> dict[str, str]:
        if not base_image:
            launched_warm = worker.image.startswith(self.config.snapshot_image_prefix)
            base_image = "" if launched_warm else worker.image
        return {
            self.labels.snapshot_instance: self.config.router_instance_id,
            self.labels.snapshot_project_id: worker.project_id or "",
            self.labels.snapshot_work_item_id: worker.work_item_id or "",
            self.labels.snapshot_base_image: base_image,
            self.labels.snapshot_created: format_deadline(datetime.now(UTC)),
        }

    def _changes(
        self,
        worker: ActiveWorker,
        launch_env_keys: Iterable[str],
        container_env: Sequence[str] | None,
    ) -> tuple[list[str], list[str]]:
        launched = list(launch_env_keys)
        try:
            if container_env is None:
                if self.worker_env is None:
                    raise LookupError("no way to read the worker's environment")
                container_env = self.worker_env(worker.container_id)
            env = env_pairs(container_env)
        except Exception as err:  # a failed inspect (or a bug): blank the most, report
            # Still blank every key dockyard itself set: no secret may reach an image.
            log.warning("snapshot env inspect failed", extra={"job_id": worker.job_id})
            self.reporter.report(
                err,
                "snapshot_env_scrub_inspect_failed",
                level="warning",
                tags={"jobType": worker.job_type},
                extras={"jobId": worker.job_id},
            )
            keys = blanked_keys([*launched, *SCRUBBED_ENV_KEYS], launched)
        else:
            keys = blanked_keys(env, credential_keys(env))
        return [f"ENV {key}=" for key in keys], keys

    def _scrubbed_and_named(
        self, worker: ActiveWorker, created: list[str], image: str, blanked: list[str]
    ) -> tuple[str, dict[str, Any]]:
        """Check the committed image, write it again flattened when it has more layers than
        allowed or when the engine kept the container's config, and give the result the
        snapshot name.

        Returns the final image id and its inspect data; raises `SnapshotScrubError` when
        a blanked key still has a value. `created` collects every image id made here.
        """
        committed = created[-1]
        info = self.images.image_inspect(committed)
        if layer_count(info) > self.config.snapshot_max_layers:
            return self._flattened_and_named(worker, created, info, image, blanked)
        if not env_values_left(info, blanked) and not worker_labels_left(self.labels, info):
            repository, _, tag = image.rpartition(":")
            self.images.tag(committed, repository, tag, force=True)
            return committed, info
        rewritten = record_without_container_config(self.images, committed, image)
        created.append(rewritten)
        self.retirement.retire(committed)  # holds the container's whole environment
        created.remove(committed)
        info = self.images.image_inspect(rewritten)
        left = env_values_left(info, blanked) + worker_labels_left(self.labels, info)
        if left:
            raise SnapshotScrubError(f"snapshot image still holds values of {', '.join(left)}")
        return rewritten, info

    def _flattened_and_named(
        self,
        worker: ActiveWorker,
        created: list[str],
        committed: dict[str, Any],
        image: str,
        blanked: list[str],
    ) -> tuple[str, dict[str, Any]]:
        """Write the worker's filesystem as a one-layer image with the commit's config, in
        place of the commit, check it as a commit is checked, and name it."""
        committed_id = created[-1]
        flat, info, seconds = flatten(self.images, worker.container_id, committed)
        created.append(flat)
        created.remove(committed_id)
        self.retirement.retire(committed_id)
        left = env_values_left(info, blanked) + worker_labels_left(self.labels, info)
        if left:
            raise SnapshotScrubError(f"snapshot image still holds values of {', '.join(left)}")
        repository, _, tag = image.rpartition(":")
        self.images.tag(flat, repository, tag, force=True)
        log.info(
            "snapshot flattened",
            extra={
                "job_id": worker.job_id,
                "image": image,
                "layers_before": layer_count(committed),
                "duration_ms": round(seconds * 1000),
            },
        )
        return flat, info

    def _invalidate(
        self, created: list[str], pair: tuple[str, str], image: str, previous: str | None
    ) -> None:
        """After a failed commit: remove what was made, and drop the pair's snapshot.

        The previous snapshot holds an older filesystem than the run that just ended: the
        next run must start from the base image, so its entry goes, its name goes (a
        start-up sync would register it again otherwise) and the image is retired.
        """
        for image_id in created:
            self.retirement.retire(image_id)
        try:
            self.registry.invalidate(*pair)
        except Exception:  # a host hook (the project TTL) or a bug: the entry stays
            log.warning("could not drop the snapshot entry", extra={"image": image})
        current = self._image_id(image)
        if current is not None:
            self.retirement.unname(image, current)
        if previous is not None:
            self.retirement.retire(previous)
        if current is not None and current != previous:
            self.retirement.retire(current)

    def _image_id(self, image: str) -> str | None:
        return image_id_of(self.images, image)

    def kept_parents(self) -> set[str]:
        """The retired snapshot image ids kept until their child image goes."""
        return self.retirement.kept_parents()

    # -- removal ------------------------------------------------------------------------

    def remove_images(self, evicted: Iterable[SnapshotMetadata]) -> list[SnapshotMetadata]:
        """Remove evicted images; 404 (gone) is skipped, 409 (in use) retried in later rounds."""
        removed = []
        for meta in evicted:
            with self._lock_for(meta.image_name):
                if not self._remove_evicted(meta):
                    continue
            removed.append(meta)
            log.info("snapshot image removed", extra={"image": meta.image_name})
        return removed

    def _remove_evicted(self, meta: SnapshotMetadata) -> bool:
        current = self.registry.get(meta.project_id, meta.work_item_id)
        if current is not None and current.image_name == meta.image_name:
            return False  # committed anew since the eviction: the name is live again
        return self.retirement.remove_name(meta.image_name)

    def run_cleanup(self) -> list[SnapshotMetadata]:
        """Evict by TTL, count and size, and remove the evicted images from Docker."""
        try:
            evicted = self.registry.evict()
        except (
            Exception
        ) as err:  # a host hook (the project TTL) or a bug: reported, the loop goes on
            self.reporter.report(err, "snapshot_cleanup_scan")
            return []
        evicted += self._take_discovered(evicted)
        self.metrics.snapshots_evicted(len(evicted))
        self.remove_images(evicted)
        self.retirement.run_round()
        return evicted

    def _take_discovered(self, evicted: Sequence[SnapshotMetadata]) -> list[SnapshotMetadata]:
        """The legacy images found at start-up that `evicted` does not hold yet."""
        with self._discovered_lock:
            discovered, self._discovered = self._discovered, {}
        taken = {meta.image_name for meta in evicted}
        extra = []
        for name, meta in discovered.items():
            self.registry.invalidate(DISCOVERED_PROJECT, name)
            if name not in taken:
                extra.append(meta)
        return extra

    # -- start-up -----------------------------------------------------------------------

    def sync_from_docker(self) -> list[SnapshotMetadata]:
        """Register this instance's snapshot images already in Docker, then clean up.

        Only images whose snapshot labels name this instance are registered for reuse.
        Legacy images of the name prefix with no dockyard label at all, and this
        instance's images from before snapshots had labels of their own (they still carry
        the worker labels), are registered as discovered: the cleanup that follows evicts
        them and no job ever starts from one. Images of other instances are left alone.
        """
        registered: list[SnapshotMetadata] = []
        try:
            images = self.images.list_images(self.config.snapshot_image_prefix)
        except Exception as err:  # a start-up step: reported, never raised
            self.reporter.report(err, "snapshot_startup_sync", level="warning")
            return registered
        mine = self.config.router_instance_id
        for image in images:
            labels = image.get("Labels") or {}
            owner = snapshot_owner(self.labels, labels)
            created = datetime.fromtimestamp(int(image.get("Created") or 0), UTC)
            size = image.get("Size")
            size = int(size) if isinstance(size, int) and size >= 0 else None
            if owner == mine:
                meta = self._register_found(image, labels, created, size)
            elif owner == "" or (owner is None and self.labels.owned_by(labels, mine)):
                meta = self._register_discovered(image, created, size)
            else:
                meta = None  # another instance's, or not a snapshot of ours
            if meta is not None:
                registered.append(meta)
        self.run_cleanup()
        return registered

    def _register_found(
        self, image: dict[str, Any], labels: Mapping[str, str], created: datetime, size: int | None
    ) -> SnapshotMetadata | None:
        project_id = labels.get(self.labels.snapshot_project_id)
        work_item_id = labels.get(self.labels.snapshot_work_item_id)
        if not project_id or not work_item_id:
            return None
        name = self.image_for(project_id, work_item_id)
        if name not in (image.get("RepoTags") or []):
            # Only a retired name left (a failed commit took the snapshot name off it while
            # a container held it): never reused, removed by the next cleanup.
            return self._register_discovered(image, created, size)
        existing = self.registry.get(project_id, work_item_id)
        if existing is not None and existing.created_at >= created:
            return None
        return self.registry.register(project_id, work_item_id, name, size, created_at=created)

    def _register_discovered(
        self, image: dict[str, Any], created: datetime, size: int | None
    ) -> SnapshotMetadata | None:
        prefix = self.config.snapshot_image_prefix
        names = [tag for tag in image.get("RepoTags") or [] if tag.startswith(prefix)]
        if not names:
            return None
        name = names[0]
        meta = self.registry.register(DISCOVERED_PROJECT, name, name, size, created_at=created)
        with self._discovered_lock:
            self._discovered[name] = meta
        log.info("legacy snapshot image found; the next cleanup removes it", extra={"image": name})
        return meta

"""Snapshot mechanics: scrubbed commits of clean exits, start-up sync, and image cleanup.

A snapshot must carry no secret. `docker commit` with `changes` of `ENV KEY=` blanks the
keys in the image's `Config` (a scrubbed `Env` in the commit body does not: the daemon
re-adds the missing keys), but engines that keep the legacy `container_config` (Docker
20.10 among them) also copy the container's full configuration, every environment value
included, into the image. Such an image is written again without it (see
`_image_rewrite.record_without_container_config`) and checked before it is registered; an image
that still carries a value is removed and nothing is registered.

A snapshot chain stays within the storage driver's layer limit: each commit adds a layer
on top of the previous snapshot, and a commit that holds more than
`RouterConfig.snapshot_max_layers` is written flattened instead (`_flatten`: one layer with
the container's whole filesystem, the same config, no parent), so every run starts from the
previous run's filesystem however long a work item lives. A commit that still fails
invalidates the pair's snapshot: the registry entry is dropped and the image retired, so the
next run starts from the base image, never from an older snapshot.

An image that is another image's parent cannot be removed before its children (the
engine's 409 "dependent child images", `EngineImageHasChildrenError`; Docker 25 and later
record the previous snapshot as the parent of a commit). Such a retired snapshot is not
retried: it is removed when its child is (the engine prunes untagged parents with their
child; dockyard walks up the chain after every removal for engines or moments that do not).

A snapshot owns no worker: Docker copies an image's labels into every container made from
it, so the commit blanks every worker label (`managed`, `router.instance`, `job.id`,
`deadline`, ...) and records the pair, the instance and the base image under snapshot
labels of their own. Sync and cleanup touch only this instance's snapshots, plus legacy
images of the name prefix that carry no dockyard label at all (evicted, never reused).
"""

from __future__ import annotations

import json
import logging
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._config import RouterConfig
from ._driver import ImageStore
from ._environment import SCRUBBED_ENV_KEYS
from ._errors import (
    DockyardError,
    EngineConflictError,
    EngineImageHasChildrenError,
    EngineNotFoundError,
    SnapshotScrubError,
)
from ._flatten import flatten, layer_count
from ._image_rewrite import record_without_container_config
from ._listener import log_ids
from ._metrics import NO_METRICS, Metrics
from ._models import ActiveWorker
from ._naming import LabelSchema, format_deadline, snapshot_image_name
from ._sentry import Reporter
from ._snapshot_registry import SnapshotMetadata, SnapshotRegistry

__all__ = [
    "DISCOVERED_PROJECT",
    "SnapshotManager",
    "blanked_keys",
    "label_changes",
    "scrub_changes",
    "snapshot_owner",
]

log = logging.getLogger("dockyard.snapshots")

SNAPSHOT_TAG = "latest"
# Blanked beyond the spec's deny-list: the router's Sentry DSN is a credential too.
EXTRA_SCRUBBED_KEYS = ("SENTRY_DSN",)
_LOCK_STRIPES = 16
# Cleanup rounds in which a superseded image may still be in use before it is given up on.
_MAX_RETIRE_ATTEMPTS = 12
# The tag a snapshot's name is moved to when it must stop naming the snapshot while a
# container still holds the image (an untag of an image in use needs force otherwise).
_RETIRED_TAG = "retired-"
# How far up a chain of parents one removal walks (a chain never gets longer than
# `snapshot_max_layers` commits).
_MAX_CHAIN_WALK = 256


# The project id of legacy images found at start-up: no job has an empty project id, so
# such an entry can never serve a warm start; the next cleanup evicts it.
DISCOVERED_PROJECT = ""


def label_changes(labels: LabelSchema, snapshot: Mapping[str, str]) -> list[str]:
    """Commit `changes` that blank every worker label and set the snapshot labels.

    An empty value is the only way to drop an inherited label in a commit; it never matches
    the `managed=true` / `router.instance=<id>` filters that reaping and adoption use.
    """
    worker_keys = (
        labels.managed,
        labels.instance,
        labels.job_id,
        labels.job_type,
        labels.deadline,
        labels.project_id,
        labels.work_item_id,
        labels.agent_type,
        labels.snapshot_enabled,
        labels.base_image,
    )
    pairs = [(key, "") for key in worker_keys] + list(snapshot.items())
    return [f"LABEL {json.dumps(key)}={json.dumps(value)}" for key, value in pairs]


def snapshot_owner(labels: LabelSchema, image_labels: Mapping[str, str]) -> str | None:
    """Whose snapshot an image is: an instance id, `""` for a legacy image that carries no
    dockyard label at all, None for anything else (never to be touched)."""
    instance = image_labels.get(labels.snapshot_instance)
    if instance:
        return instance
    if any(image_labels.get(key) for key in (labels.managed, labels.instance)):
        return None
    return ""


def blanked_keys(env_keys: Iterable[str], credential_keys: Iterable[str]) -> list[str]:
    """The deny-listed and credential keys among `env_keys`, deny-list order first."""
    present = set(env_keys)
    deny = [*SCRUBBED_ENV_KEYS, *EXTRA_SCRUBBED_KEYS, *credential_keys]
    return list(dict.fromkeys(key for key in deny if key in present))


def scrub_changes(env_keys: Iterable[str], credential_keys: Iterable[str]) -> list[str]:
    """Docker `changes` blanking every deny-listed and credential key among `env_keys`.

    A scrubbed `Env` in the commit body does not work (the daemon re-adds missing keys);
    `ENV KEY=` blanks the value and keeps Cmd, Entrypoint and the rest.
    """
    return [f"ENV {key}=" for key in blanked_keys(env_keys, credential_keys)]


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def _env_pairs(env: Iterable[str]) -> dict[str, str]:
    pairs = (item.partition("=") for item in env)
    return {key: value for key, _, value in pairs}


def _credential_keys(env: Mapping[str, str]) -> list[str]:
    listed = env.get("CASCADE_CREDENTIAL_KEYS", "")
    return [key.strip() for key in listed.split(",") if key.strip()]


def env_values_left(info: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """The keys among `keys` that still have a value anywhere in an inspected image."""
    wanted = set(keys)
    left: set[str] = set()
    for section in ("Config", "ContainerConfig"):
        for item in (info.get(section) or {}).get("Env") or []:
            key, _, value = str(item).partition("=")
            if key in wanted and value:
                left.add(key)
    return sorted(left)


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
    _retired_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    # Image ids that lost their name (or registry entry) but were still in use: id -> attempts.
    _retired: dict[str, int] = field(init=False, default_factory=dict)
    # Retired image ids that are another image's parent: removed when their child goes.
    _parents: set[str] = field(init=False, default_factory=set)
    # Legacy images registered by the start-up sync, evicted by the next cleanup: name -> entry.
    _discovered: dict[str, SnapshotMetadata] = field(init=False, default_factory=dict)

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
            self._retire(previous)  # the name moved on; the old image is garbage now
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
            env = _env_pairs(container_env)
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
            keys = blanked_keys(env, _credential_keys(env))
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
        if not env_values_left(info, blanked) and not self._worker_labels_left(info):
            repository, _, tag = image.rpartition(":")
            self.images.tag(committed, repository, tag, force=True)
            return committed, info
        rewritten = record_without_container_config(self.images, committed, image)
        created.append(rewritten)
        self._remove_now_or_later(committed)  # holds the container's whole environment
        created.remove(committed)
        info = self.images.image_inspect(rewritten)
        left = env_values_left(info, blanked) + self._worker_labels_left(info)
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
        self._remove_now_or_later(committed_id)
        left = env_values_left(info, blanked) + self._worker_labels_left(info)
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

    def _worker_labels_left(self, info: Mapping[str, Any]) -> list[str]:
        """Ownership labels that still have a value anywhere in an inspected image (the
        legacy `container_config` keeps the container's labels, as it keeps its env)."""
        owning = (self.labels.managed, self.labels.instance, self.labels.job_id)
        left: set[str] = set()
        for section in ("Config", "ContainerConfig"):
            labels = (info.get(section) or {}).get("Labels") or {}
            left.update(key for key in owning if labels.get(key))
        return sorted(left)

    def _invalidate(
        self, created: list[str], pair: tuple[str, str], image: str, previous: str | None
    ) -> None:
        """After a failed commit: remove what was made, and drop the pair's snapshot.

        The previous snapshot holds an older filesystem than the run that just ended: the
        next run must start from the base image, so its entry goes, its name goes (a
        start-up sync would register it again otherwise) and the image is retired.
        """
        for image_id in created:
            self._remove_now_or_later(image_id)
        try:
            self.registry.invalidate(*pair)
        except Exception:  # a host hook (the project TTL) or a bug: the entry stays
            log.warning("could not drop the snapshot entry", extra={"image": image})
        current = self._image_id(image)
        if current is not None:
            self._unname(image, current)
        if previous is not None:
            self._retire(previous)
        if current is not None and current != previous:
            self._retire(current)

    def _unname(self, image: str, image_id: str) -> None:
        """Take the snapshot name off `image_id` (now, even while a container holds it)."""
        try:
            self._remove_snapshot_image(image)  # the only name of an unused image: removes it
            return
        except EngineNotFoundError:
            return
        except EngineImageHasChildrenError:
            log.warning("could not remove a stale snapshot name", extra={"image": image})
            return
        except EngineConflictError:
            pass  # in use: see below
        except DockyardError:
            log.warning("could not remove a stale snapshot name", extra={"image": image})
            return
        # In use (the container that just ended was made from it): a second name lets the
        # snapshot name go without force; the retired name goes with the image.
        repository, _, _ = image.rpartition(":")
        try:
            self.images.tag(image_id, repository, _RETIRED_TAG + _short(image_id), force=True)
            self.images.remove_image(image)
        except EngineNotFoundError:
            pass
        except DockyardError:
            log.warning("could not remove a stale snapshot name", extra={"image": image})

    def _image_id(self, image: str) -> str | None:
        try:
            image_id = self.images.image_inspect(image).get("Id")
        except Exception:  # unknown: treated as no image
            return None
        return str(image_id) if image_id else None

    # -- removal ------------------------------------------------------------------------

    def _remove_now_or_later(self, image_id: str) -> None:
        try:
            self._remove_snapshot_image(image_id)
        except EngineNotFoundError:
            return
        except EngineImageHasChildrenError:
            self._keep_for_child(image_id)
        except DockyardError as err:
            log.warning("image removal deferred", extra={"image": image_id, "error": str(err)})
            with self._retired_lock:
                self._retired.setdefault(image_id, 0)

    def _retire(self, image_id: str) -> None:
        """Remove an image nothing refers to any more, now or in a later cleanup round.

        It may still be in use (the worker that was just committed was created from it,
        and its container is removed only after the commit): 409 keeps it for later. An
        image that is another image's parent is kept until that child goes.
        """
        try:
            self._remove_snapshot_image(image_id)
        except EngineNotFoundError:
            return
        except EngineImageHasChildrenError:
            self._keep_for_child(image_id)
            return
        except DockyardError as err:
            with self._retired_lock:
                self._retired.setdefault(image_id, 0)
            if not isinstance(err, EngineConflictError):
                log.warning("image removal deferred", extra={"image": image_id, "error": str(err)})
            return
        log.debug("superseded snapshot image removed", extra={"image": image_id})

    def _keep_for_child(self, image_id: str) -> None:
        with self._retired_lock:
            self._retired.pop(image_id, None)
            self._parents.add(image_id)
        log.debug(
            "superseded snapshot image kept until its child image goes", extra={"image": image_id}
        )

    def _remove_snapshot_image(self, image: str) -> None:
        """Remove `image` (force=False), then the retired snapshots up its parent chain.

        Raises what the removal of `image` itself raised.
        """
        try:
            parent = self.images.image_inspect(image).get("Parent") or None
        except DockyardError:
            parent = None  # the removal below says what is wrong
        self.images.remove_image(image)
        with self._retired_lock:
            self._parents.discard(image)
        self._remove_parents(str(parent) if parent else None)

    def _remove_parents(self, parent: str | None) -> None:
        """Remove the untagged snapshots of this instance up a chain of parents, from
        `parent` on, stopping at the first that is named, not ours, or still has a child.

        The engine usually pruned them already with their child (404 then ends the walk).
        """
        for _ in range(_MAX_CHAIN_WALK):
            if parent is None:
                return
            try:
                info = self.images.image_inspect(parent)
            except DockyardError:
                with self._retired_lock:
                    self._parents.discard(parent)
                return  # gone (pruned with its child, and its own parents with it)
            named = [tag for tag in info.get("RepoTags") or [] if tag != "<none>:<none>"]
            labels = (info.get("Config") or {}).get("Labels") or {}
            mine = snapshot_owner(self.labels, labels) == self.config.router_instance_id
            if named or not mine:
                return
            grandparent = info.get("Parent") or None
            try:
                self.images.remove_image(parent)
            except EngineImageHasChildrenError:
                self._keep_for_child(parent)  # another child still holds it
                return
            except EngineNotFoundError:
                return
            except DockyardError:
                with self._retired_lock:
                    self._parents.discard(parent)
                    self._retired.setdefault(parent, 0)
                return
            with self._retired_lock:
                self._parents.discard(parent)
            log.debug("snapshot image removed with its child", extra={"image": parent})
            parent = str(grandparent) if grandparent else None

    def _remove_retired(self) -> None:
        self._remove_pending()
        self._forget_gone_parents()  # after the removals: they may have pruned some

    def _remove_pending(self) -> None:
        with self._retired_lock:
            pending = dict(self._retired)
        if not pending:
            return
        # An image registered again meanwhile (say by a start-up sync) is live: keep it.
        live = {self._image_id(meta.image_name) for meta in self.registry.entries()}
        for image_id, attempts in pending.items():
            keep = False
            if image_id in live:
                with self._retired_lock:
                    self._retired.pop(image_id, None)
                continue
            try:
                self._remove_snapshot_image(image_id)
            except EngineImageHasChildrenError:
                self._keep_for_child(image_id)  # no more attempts: its child decides
                continue
            except EngineNotFoundError:
                pass  # gone already
            except EngineConflictError:
                keep = attempts + 1 < _MAX_RETIRE_ATTEMPTS  # still in use
            except DockyardError as err:
                keep = attempts + 1 < _MAX_RETIRE_ATTEMPTS
                self.reporter.report(
                    err, "snapshot_image_remove", level="warning", extras={"imageName": image_id}
                )
            with self._retired_lock:
                if keep:
                    self._retired[image_id] = attempts + 1
                else:
                    self._retired.pop(image_id, None)

    def _forget_gone_parents(self) -> None:
        """Drop the kept parents that are gone (removed with a child outside dockyard's
        sight); the others wait for their child, with no removal attempt."""
        with self._retired_lock:
            parents = list(self._parents)
        for image_id in parents:
            if self._image_id(image_id) is None:
                with self._retired_lock:
                    self._parents.discard(image_id)

    def kept_parents(self) -> set[str]:
        """The retired snapshot image ids kept until their child image goes."""
        with self._retired_lock:
            return set(self._parents)

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
        image_id = self._image_id(meta.image_name)
        try:
            self._remove_snapshot_image(meta.image_name)
        except EngineImageHasChildrenError:
            if image_id is not None:
                self._keep_for_child(image_id)  # it goes with its child
            return False
        except EngineConflictError:
            if image_id is not None:
                # Still in use: retry by id later (a newer image under the name stays).
                with self._retired_lock:
                    self._retired.setdefault(image_id, 0)
            return False
        except EngineNotFoundError:
            return False
        except DockyardError as err:
            self.reporter.report(
                err, "snapshot_image_remove", level="warning", extras={"imageName": meta.image_name}
            )
            return False
        return True

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
        self._remove_retired()
        return evicted

    def _take_discovered(self, evicted: Sequence[SnapshotMetadata]) -> list[SnapshotMetadata]:
        """The legacy images found at start-up that `evicted` does not hold yet."""
        with self._retired_lock:
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
        with self._retired_lock:
            self._discovered[name] = meta
        log.info("legacy snapshot image found; the next cleanup removes it", extra={"image": name})
        return meta

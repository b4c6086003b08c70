"""Retiring snapshot images: removal now, in a later cleanup round, or with their child.

A snapshot image that lost its name (a newer commit took it, or a failed commit invalidated
it) is garbage, but may not be removable yet: a container made from it may still exist
(409, tried again for a few cleanup rounds), or it may be another image's parent (the
engine's 409 "dependent child images", `EngineImageHasChildrenError`; Docker 25 and later
record the previous snapshot as a commit's parent). Such a parent is never tried again: it
is removed when its child is (the engine prunes untagged parents with their child;
`remove` walks up the chain after every removal for engines or moments that do not).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._errors import (
    DockyardError,
    EngineConflictError,
    EngineImageHasChildrenError,
    EngineNotFoundError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

    from ._driver import ImageStore
    from ._naming import LabelSchema
    from ._sentry import Reporter

__all__ = ["ImageRetirement", "image_id_of", "snapshot_owner"]

log = logging.getLogger("dockyard.snapshots")

# Cleanup rounds in which a superseded image may still be in use before it is given up on.
_MAX_RETIRE_ATTEMPTS = 12
# How far up a chain of parents one removal walks (a chain never gets longer than
# `snapshot_max_layers` commits).
_MAX_CHAIN_WALK = 256
# The tag a snapshot's name is moved to when it must stop naming the snapshot while a
# container still holds the image (an untag of an image in use needs force otherwise).
_RETIRED_TAG = "retired-"


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def image_id_of(images: ImageStore, image: str) -> str | None:
    """The id of `image`, or None when it is gone or cannot be told."""
    try:
        image_id = images.image_inspect(image).get("Id")
    except Exception:  # unknown: treated as no image
        return None
    return str(image_id) if image_id else None


def snapshot_owner(labels: LabelSchema, image_labels: Mapping[str, str]) -> str | None:
    """Whose snapshot an image is: an instance id, `""` for a legacy image that carries no
    dockyard label at all, None for anything else (never to be touched)."""
    instance = image_labels.get(labels.snapshot_instance)
    if instance:
        return instance
    if any(image_labels.get(key) for key in (labels.managed, labels.instance)):
        return None
    return ""


@dataclass
class ImageRetirement:
    """The snapshot images of one manager waiting to be removed, and their removal."""

    images: ImageStore
    reporter: Reporter
    labels: LabelSchema
    instance_id: str
    # The ids of the images registered as snapshots now: a pending id among them is live
    # again (registered anew, say by a start-up sync) and is kept.
    live_ids: Callable[[], Collection[str | None]]
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    # Image ids that lost their name (or registry entry) but were still in use: id -> attempts.
    _pending: dict[str, int] = field(init=False, default_factory=dict)
    # Retired image ids that are another image's parent: removed when their child goes.
    _parents: set[str] = field(init=False, default_factory=set)

    def kept_parents(self) -> set[str]:
        """The retired snapshot image ids kept until their child image goes."""
        with self._lock:
            return set(self._parents)

    def defer(self, image_id: str) -> None:
        """Try `image_id` again in the next cleanup rounds (it is still in use)."""
        with self._lock:
            self._pending.setdefault(image_id, 0)

    def retire(self, image_id: str) -> None:
        """Remove an image nothing refers to any more, now or in a later cleanup round.

        It may still be in use (the worker that was just committed was created from it,
        and its container is removed only after the commit): 409 keeps it for later. An
        image that is another image's parent is kept until that child goes.
        """
        try:
            self.remove(image_id)
        except EngineNotFoundError:
            return
        except EngineImageHasChildrenError:
            self.keep_for_child(image_id)
            return
        except EngineConflictError:
            self.defer(image_id)
            return
        except DockyardError as err:
            self.defer(image_id)
            log.warning("image removal deferred", extra={"image": image_id, "error": str(err)})
            return
        log.debug("superseded snapshot image removed", extra={"image": image_id})

    def keep_for_child(self, image_id: str) -> None:
        with self._lock:
            self._pending.pop(image_id, None)
            self._parents.add(image_id)
        log.debug(
            "superseded snapshot image kept until its child image goes", extra={"image": image_id}
        )

    def remove(self, image: str) -> None:
        """Remove `image` (force=False), then the retired snapshots up its parent chain.

        Raises what the removal of `image` itself raised.
        """
        try:
            parent = self.images.image_inspect(image).get("Parent") or None
        except DockyardError:
            parent = None  # the removal below says what is wrong
        self.images.remove_image(image)
        with self._lock:
            self._parents.discard(image)
        self._remove_parents(str(parent) if parent else None)

    def unname(self, image: str, image_id: str) -> None:
        """Take the snapshot name off `image_id` (now, even while a container holds it)."""
        try:
            self.remove(image)  # the only name of an unused image: removes it
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

    def remove_name(self, image: str) -> bool:
        """Remove an evicted snapshot by name; False when it stays (gone already, in use:
        retried by id later, a parent: it goes with its child, or the engine failed)."""
        image_id = image_id_of(self.images, image)
        try:
            self.remove(image)
        except EngineImageHasChildrenError:
            if image_id is not None:
                self.keep_for_child(image_id)
            return False
        except EngineConflictError:
            if image_id is not None:
                # Still in use: retry by id later (a newer image under the name stays).
                self.defer(image_id)
            return False
        except EngineNotFoundError:
            return False
        except DockyardError as err:
            self.reporter.report(
                err, "snapshot_image_remove", level="warning", extras={"imageName": image}
            )
            return False
        return True

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
                with self._lock:
                    self._parents.discard(parent)
                return  # gone (pruned with its child, and its own parents with it)
            named = [tag for tag in info.get("RepoTags") or [] if tag != "<none>:<none>"]
            labels = (info.get("Config") or {}).get("Labels") or {}
            mine = snapshot_owner(self.labels, labels) == self.instance_id
            if named or not mine:
                return
            grandparent = info.get("Parent") or None
            try:
                self.images.remove_image(parent)
            except EngineImageHasChildrenError:
                self.keep_for_child(parent)  # another child still holds it
                return
            except EngineNotFoundError:
                return
            except DockyardError:
                with self._lock:
                    self._parents.discard(parent)
                    self._pending.setdefault(parent, 0)
                return
            with self._lock:
                self._parents.discard(parent)
            log.debug("snapshot image removed with its child", extra={"image": parent})
            parent = str(grandparent) if grandparent else None

    def run_round(self) -> None:
        """One cleanup round: try the pending removals, forget the parents that went."""
        self._remove_pending()
        self._forget_gone_parents()  # after the removals: they may have pruned some

    def _remove_pending(self) -> None:
        with self._lock:
            pending = dict(self._pending)
        if not pending:
            return
        live = set(self.live_ids())
        for image_id, attempts in pending.items():
            keep = False
            if image_id in live:
                with self._lock:
                    self._pending.pop(image_id, None)
                continue
            try:
                self.remove(image_id)
            except EngineImageHasChildrenError:
                self.keep_for_child(image_id)  # no more attempts: its child decides
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
            with self._lock:
                if keep:
                    self._pending[image_id] = attempts + 1
                else:
                    self._pending.pop(image_id, None)

    def _forget_gone_parents(self) -> None:
        """Drop the kept parents that are gone (removed with a child outside dockyard's
        sight); the others wait for their child, with no removal attempt."""
        with self._lock:
            parents = list(self._parents)
        for image_id in parents:
            if image_id_of(self.images, image_id) is None:
                with self._lock:
                    self._parents.discard(image_id)

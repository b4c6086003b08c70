"""Dangling-image cleanup: untagged images dockyard made, removed on a slow loop.

Re-tagged snapshots and rewritten images leave their previous image behind without a
tag; nothing refers to it by name any more, so only a label can find it. Two filters,
each AND-ed by the engine and never wider: `dangling=true` with `<prefix>.managed=true`
(the original's), and `dangling=true` with this instance's snapshot label. No other
image on the host is ever touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import EngineConflictError, EngineNotFoundError

if TYPE_CHECKING:
    from ._driver import ImageStore
    from ._naming import LabelSchema
    from ._sentry import Reporter

__all__ = ["DEFAULT_DANGLING_INTERVAL_S", "DanglingImageReaper"]

log = logging.getLogger("dockyard.dangling")

DEFAULT_DANGLING_INTERVAL_S = 1800.0  # accumulation is slow; a force=False rmi is cheap


@dataclass
class DanglingImageReaper:
    """Removes dangling images labelled as dockyard's (force=False; 404/409 left quietly)."""

    images: ImageStore
    labels: LabelSchema
    instance_id: str
    reporter: Reporter

    def filters(self) -> list[list[str]]:
        """The label filters of one pass, each with `dangling=true`: AND-ed, never wider."""
        return [
            [f"{self.labels.managed}=true"],
            [f"{self.labels.snapshot_instance}={self.instance_id}"],
        ]

    def scan(self) -> list[str]:
        """One pass; returns the ids of the images removed. Never raises."""
        images: dict[str, int] = {}
        for labels in self.filters():
            try:
                listed = self.images.dangling_images(labels)
            except Exception as err:  # a background pass never raises: report, stop
                log.warning("dangling image scan could not list images", extra={"error": str(err)})
                self.reporter.report(err, "dangling_image_cleanup_scan", level="error")
                return []
            for image in listed:
                size = image.get("Size")
                images[str(image["Id"])] = int(size) if isinstance(size, int) else 0
        removed: list[str] = []
        for image_id in images:
            try:
                self.images.remove_image(image_id)
            except (EngineConflictError, EngineNotFoundError):
                # In use (a container still runs from it) or gone already: next pass.
                log.debug("dangling image left for now", extra={"image_id": image_id})
                continue
            except Exception as err:  # a background pass never raises: report, move on
                log.warning(
                    "could not remove a dangling image",
                    extra={"image_id": image_id, "error": str(err)},
                )
                self.reporter.report(
                    err, "dangling_image_remove", level="warning", extras={"imageId": image_id}
                )
                continue
            removed.append(image_id)
        if removed:
            log.info(
                "dangling images removed",
                extra={
                    "removed_count": len(removed),
                    "reclaimed_bytes": sum(images[i] for i in removed),
                },
            )
        return removed

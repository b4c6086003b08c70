"""Orphans: stop and remove this instance's containers that no worker tracks any more."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from ._errors import DockyardError, EngineConflictError, EngineNotFoundError
from ._loops import Activity
from ._naming import LabelSchema, parse_deadline

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from ._config import RouterConfig
    from ._driver import Driver, WorkerEntry
    from ._listener import SafeListener
    from ._registry import WorkerRegistry
    from ._sentry import Reporter

__all__ = ["OrphanReaper", "untracked"]

log = logging.getLogger("dockyard.orphans")

_RUNNING_STATES = frozenset({"running", "restarting", "paused"})


def untracked(
    entries: Iterable[WorkerEntry],
    schema: LabelSchema,
    instance_id: str,
    registry: WorkerRegistry,
) -> Iterator[tuple[WorkerEntry, str, dict[str, str]]]:
    """The listed workers that `instance_id` owns by their labels and no worker tracks.

    Ownership is checked again: a list filter is not a guarantee to bet containers on.
    """
    for entry in entries:
        labels = dict(entry.labels)
        if schema.owned_by(labels, instance_id) and not registry.is_tracked_container(entry.id):
            yield entry, entry.id, labels


@dataclass
class OrphanReaper:
    """Stops and removes this instance's containers that no manager tracks any more."""

    driver: Driver
    registry: WorkerRegistry
    labels: LabelSchema
    config: RouterConfig
    reporter: Reporter
    listener: SafeListener
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    activity: Activity = field(default_factory=Activity)

    def close(self) -> None:
        """No scan starts any more; waits for one under way to reach its next check."""
        self.activity.close()

    def scan(self) -> list[str]:
        """One scan; returns the ids of the containers stopped or removed."""
        with self.activity.enter() as allowed:
            return self._scan() if allowed else []

    def _scan(self) -> list[str]:
        try:
            containers = self.driver.list_workers(
                self.labels.ownership_filter(self.config.router_instance_id), all=True
            )
        except Exception as err:  # a background scan: reported, never raised
            log.warning("orphan scan could not list containers", extra={"error": str(err)})
            self.reporter.report(err, "orphan_cleanup_scan", level="error")  # the original's
            return []
        handled: list[str] = []
        now = self.clock()
        owned = untracked(containers, self.labels, self.config.router_instance_id, self.registry)
        for container, container_id, labels in owned:
            if self.activity.closed:
                break  # the manager is closing: no engine call after close() returns
            if not container_id:
                continue
            if labels.get(self.labels.job_id) in self.registry.tracked_job_ids():
                continue  # being launched right now
            try:
                if self._reap_one(container, labels, now):
                    handled.append(container_id)
            except Exception as err:  # one container's failure must not end the scan
                log.warning(
                    "orphan cleanup of one container failed",
                    extra={"container_id": container_id[:12], "error": str(err)},
                )
        return handled

    def _reap_one(self, container: WorkerEntry, labels: dict[str, str], now: datetime) -> bool:
        container_id = container.id
        state = container.status
        if state == "removing":
            return False  # the engine is removing it already (AutoRemove)
        if state in _RUNNING_STATES:
            if not self._overdue(container, labels, now):
                return False
            log.warning(
                "stopping an orphaned worker past its deadline",
                extra={"container_id": container_id[:12], "job_id": labels.get(self.labels.job_id)},
            )
            try:
                self.driver.stop(container_id, self.config.stop_grace_s)
            except EngineNotFoundError:
                pass  # gone already; the removal below finds nothing either
            except DockyardError as err:
                # The forced removal below kills it anyway; only a failure there counts.
                log.warning(
                    "stopping an orphaned worker failed; removing it by force",
                    extra={"container_id": container_id[:12], "error": str(err)},
                )
            if not self.activity.closed:  # else the next scan removes it as exited
                self._remove(container_id)
            self.listener.orphan_stopped(container_id, labels)
            return True
        if state == "created" and not self._overdue(container, labels, now, created_only=True):
            return False  # possibly mid-launch in another thread of an older manager
        log.info("removing an exited leftover container", extra={"container_id": container_id[:12]})
        self._remove(container_id)
        return True

    def _remove(self, container_id: str) -> None:
        # Gone already, or the engine is removing it (AutoRemove after the stop).
        with contextlib.suppress(EngineNotFoundError, EngineConflictError):
            self.driver.remove(container_id, force=True)

    def _overdue(
        self,
        container: WorkerEntry,
        labels: dict[str, str],
        now: datetime,
        *,
        created_only: bool = False,
    ) -> bool:
        deadline = parse_deadline(labels.get(self.labels.deadline))
        if deadline is None or created_only:
            created = container.created_at or datetime.fromtimestamp(0, UTC)
            limit = 60.0 if created_only else self.config.worker_timeout_s
            deadline = created + timedelta(seconds=limit)
        return now >= deadline

"""Adoption: after a router restart, re-attach to this instance's still-running workers.

An adopted worker's output is followed from the engine's log, after the last line the
previous manager delivered (its mark, `_output_marks`; a mark of line counts is found in
the log first), or from the start without one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ._environment import worker_masker
from ._errors import DuplicateJobError, ManagerClosedError
from ._naming import LabelSchema, familiar, same_image
from ._orphans import untracked
from ._output_marks import OutputMarks, after_mark
from .worker_container_launcher import LaunchPlan

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._config import RouterConfig
    from ._driver import Driver
    from ._exit_handling import ExitWatcher, TimeoutController
    from ._listener import SafeListener
    from ._models import ActiveWorker
    from ._output import OutputPipe
    from ._output_hub import OutputHub
    from ._registry import WorkerRegistry
    from ._secrets import Masker
    from ._slots import SlotGate
    from ._tracker import TrackedWorker

__all__ = ["WorkerAdopter", "launched_image"]

log = logging.getLogger("dockyard.orphans")


def launched_image(engine_image: str, base_image: str | None) -> str:
    """The image a running worker was launched with, as the router named it: its base
    image label when that is the image the engine names (Podman answers it normalised,
    `docker.io/library/NAME:TAG`), else the engine's name as the Docker CLI writes it
    (a snapshot: the router's own name, `localhost/` dropped)."""
    if base_image and same_image(base_image, engine_image):
        return base_image
    return familiar(engine_image)


@dataclass
class WorkerAdopter:
    """Re-attaches to this instance's running workers after a router restart."""

    driver: Driver
    registry: WorkerRegistry
    labels: LabelSchema
    config: RouterConfig
    slots: SlotGate
    timeouts: TimeoutController
    exits: ExitWatcher
    listener: SafeListener
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    project_cap: Callable[[str | None], int | None] = lambda _project_id: None
    outputs: OutputHub | None = None  # follows each adopted worker's output
    marks: OutputMarks | None = None  # where the previous manager's delivery stopped

    def adopt(self) -> list[ActiveWorker]:
        containers = self.driver.list_workers(
            self.labels.ownership_filter(self.config.router_instance_id), all=False
        )
        adopted: list[ActiveWorker] = []
        owned = untracked(containers, self.labels, self.config.router_instance_id, self.registry)
        for _container, container_id, labels in owned:
            job_id = labels.get(self.labels.job_id)
            if not job_id:
                continue
            try:
                record = self.registry.reserve(job_id)
            except DuplicateJobError:
                log.info("not adopting: job already tracked", extra={"job_id": job_id})
                continue
            try:
                worker = self._adopt_one(record, container_id, labels)
            except ManagerClosedError:
                break
            except Exception as err:  # one worker's failure must not end the adoption
                self.registry.unreserve(record)
                log.warning(
                    "could not adopt a worker",
                    extra={"container_id": container_id[:12], "job_id": job_id, "error": str(err)},
                )
                continue
            if worker is not None:
                adopted.append(worker)
            else:
                self.registry.unreserve(record)
        return adopted

    def _adopt_one(
        self, record: TrackedWorker, container_id: str, labels: dict[str, str]
    ) -> ActiveWorker | None:
        job_id = record.job_id
        state = self.driver.inspect(container_id)
        if not state.running:
            return None  # exited meanwhile: the orphan scan removes it
        started_at = state.exit.started_at or self.clock()
        plan = LaunchPlan.from_container(
            self.labels, state, started_at, self.config.worker_timeout_s
        )
        if plan is None or plan.job_id != job_id:
            return None
        image = launched_image(state.image, plan.identity.base_image)
        worker = plan.worker(container_id=container_id, image=image, started_at=started_at)
        # The wait is in place before the timer can fire, so the exit a kill causes (and
        # the engine's auto-removal after it) is never missed; it answers at once when
        # the container stopped since the inspect above.
        exit_wait = self.driver.open_wait(container_id)
        env = dict(item.partition("=")[::2] for item in state.env)
        masker = worker_masker(env)
        # It already runs: it takes a slot, even over capacity (the record gives it back).
        lease = self.slots.lease_over_capacity(
            worker.project_id, self.project_cap(worker.project_id)
        )
        record.take_slot(lease.release)
        output = self._follow(container_id, job_id, masker)
        record.begin(
            worker,
            exit_wait=exit_wait,
            env_keys=tuple(env),
            masker=masker,
            auto_remove=state.auto_remove,
            output=output,
        )
        remaining = (worker.deadline - self.clock()).total_seconds()
        if not self.registry.begin_tracking(record, remaining, self.timeouts, self.exits):
            if output is not None:
                output.cancel()  # closed meanwhile: leave it running, as close() does
            raise ManagerClosedError
        log.info(
            "adopted running worker",
            extra={"job_id": job_id, "container_id": container_id[:12], "remaining_s": remaining},
        )
        return worker

    def _follow(self, container_id: str, job_id: str, masker: Masker) -> OutputPipe | None:
        """Follow the worker's output after the previous manager's mark (from its start
        without one)."""
        if self.outputs is None or not self.outputs.enabled:
            return None
        after = None
        if self.marks is not None and self.outputs.delivers:
            mark = self.marks.take(container_id)
            try:
                after = None if mark is None else after_mark(container_id, mark, self._mark_of)
            except Exception as err:  # the log not readable: from the start, as without
                log.warning(
                    "could not find the previous manager's mark in the worker's log",
                    extra={"job_id": job_id, "error_type": type(err).__name__, "error": str(err)},
                )
        if after is None and self.outputs.delivers:
            log.info(
                "no mark of where this worker's output was delivered to; delivering it "
                "from the worker's start",
                extra={"job_id": job_id},
            )
        return self.outputs.follow(container_id, job_id, masker, after)

    def _mark_of(self, worker_id: str, lines: Mapping[str, int]) -> Mapping[str, int]:
        return self.driver.output_mark(worker_id, lines)

"""Launch failures: what a launch does when a step of its create and start fails.

Each Sentry report sent once (`LaunchReports`), the base image pulled when it is missing
(`pull_base_image`), a stopped leftover of the same job replaced when the name is taken
(`replace_leftover`), a container that failed to start removed (`discard`), and the
public error `spawn_worker` raises for the failure (`as_spawn_error`). A launch that goes
well never comes here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._errors import (
    DockyardError,
    DuplicateJobError,
    EngineConflictError,
    EngineError,
    EngineNotFoundError,
    RemovalInProgressError,
    WorkerImageResolutionError,
    WorkerSpawnError,
)

if TYPE_CHECKING:
    from ._driver import ContainerSpec, Driver
    from ._images import ImagePuller
    from ._naming import LabelSchema
    from ._sentry import ExtraValue, Reporter

__all__ = [
    "LaunchReports",
    "as_spawn_error",
    "discard",
    "pull_base_image",
    "replace_leftover",
]

log = logging.getLogger("dockyard.launcher")

_DISCARD_REMOVAL_WAIT_S = 10.0


@dataclass
class LaunchReports:
    """The Sentry reports of one launch: an error a fallback path reported is not sent twice."""

    reporter: Reporter
    job_id: str
    job_type: str
    covered: list[BaseException] = field(default_factory=list)

    def send(self, err: BaseException, source: str, **extras: ExtraValue) -> None:
        self.reporter.report(
            err,
            source,
            tags={"jobType": self.job_type},
            extras={"jobId": self.job_id, **extras},
        )
        self.covered.append(err)

    def covers(self, err: BaseException) -> bool:
        return any(err is seen for seen in self.covered)


def pull_base_image(
    image: str,
    puller: ImagePuller,
    reports: LaunchReports,
    *,
    project_image: bool,
    always: bool,
) -> None:
    """Pull `image` (`always`: refresh it); a project's own image that fails is terminal."""
    try:
        if always:
            puller.refresh(image)
        else:
            puller.pull(image)
    except Exception as pull_err:  # whatever ends the pull is reported under its source
        reports.send(
            pull_err,
            "worker_image_pull_fallback",
            imageName=image,
            isCustomBase=project_image,
        )
        if project_image:
            # Never run a project that configured its own image on another one.
            state = "could not be pulled" if always else "is missing and could not be pulled"
            failure = WorkerImageResolutionError(f"project image {image!r} {state}: {pull_err}")
            reports.covered.append(failure)  # its cause is reported already
            raise failure from pull_err
        raise


def replace_leftover(
    conflict: EngineConflictError,
    spec: ContainerSpec,
    job_id: str,
    *,
    driver: Driver,
    schema: LabelSchema,
    instance_id: str,
) -> str:
    """Create `spec` once more after its name met `conflict`, if a stopped leftover of this
    very job held the name (it goes); else a clear refusal, or the conflict itself."""
    try:
        leftover = driver.inspect(spec.name)
    except DockyardError:
        raise conflict from None
    labels = leftover.labels
    holder = labels.get(schema.job_id)
    same_job = schema.owned_by(labels, instance_id) and holder == job_id
    if not same_job:
        if holder and holder != job_id:
            # Another job id with the same container name (`a:b` and `a/b`), of another
            # manager or router: a clear refusal, not the engine's bare 409.
            raise DuplicateJobError(job_id, other_job_id=holder, container_name=spec.name) from None
        raise conflict
    if leftover.status in ("running", "restarting"):  # a paused leftover goes, as ever
        raise DuplicateJobError(job_id)
    log.info(
        "removing a stopped leftover container of the same job",
        extra={"job_id": job_id, "container_id": leftover.id[:12]},
    )
    driver.remove(leftover.id, force=True)
    return driver.create(spec)


def discard(driver: Driver, container_id: str, job_id: str) -> None:
    """Remove a container that failed to start; what cannot be removed is logged."""
    try:
        try:
            driver.remove(container_id, force=True)
        except RemovalInProgressError:
            # The engine removes it already (Docker 26+ cancels a start whose answer was
            # lost and AutoRemove takes the container): wait until it is gone.
            driver.wait_removed(container_id, _DISCARD_REMOVAL_WAIT_S)
    except EngineNotFoundError:
        return  # gone already
    except DockyardError:
        log.warning(
            "could not remove a container that failed to start",
            extra={"job_id": job_id, "container_id": container_id[:12]},
        )


def as_spawn_error(err: BaseException) -> BaseException:
    """What `spawn_worker` raises for `err` (already translated): public `DockyardError`s only.

    Engine refusals become `WorkerSpawnError` with the engine's status and the layer
    below's error as the cause; public typed errors stay as they are.
    """
    if isinstance(err, EngineError):
        spawn = WorkerSpawnError(str(err), err.status_code)
        spawn.__cause__ = err.__cause__ if err.__cause__ is not None else err
        return spawn
    if isinstance(err, DockyardError):
        return err
    if isinstance(err, Exception):
        spawn = WorkerSpawnError(f"launch failed: {err}")
        spawn.__cause__ = err
        return spawn
    return err  # KeyboardInterrupt, SystemExit: never disguised

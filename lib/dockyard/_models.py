"""The values a caller sees: active workers, their outcomes, and the lifecycle listener."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from dataclasses_json import DataClassJsonMixin

from ._container_settings import ContainerSettings

__all__ = ["ActiveWorker", "OutcomeStatus", "WorkerLifecycleListener", "WorkerOutcome"]

OutcomeStatus = Literal["succeeded", "failed", "timed_out", "lost", "cancelled"]

BOOT_FAILURE_EXIT_CODE = 2


@dataclass(frozen=True)
class ActiveWorker(DataClassJsonMixin):
    """A started worker container tracked by a `ContainerManager`."""

    job_id: str
    container_id: str
    container_name: str
    image: str
    started_at: datetime
    deadline: datetime
    project_id: str | None = None
    work_item_id: str | None = None
    agent_type: str | None = None
    job_type: str = ""
    snapshot_enabled: bool = False
    # The container controls this worker got: its three layers merged (None: unknown, as
    # for a worker adopted after a restart).
    settings: ContainerSettings | None = None

    @property
    def short_id(self) -> str:
        """The 12-character container id Docker shows."""
        return self.container_id[:12]


@dataclass(frozen=True)
class WorkerOutcome(DataClassJsonMixin):
    """How a started worker ended; every started worker gets exactly one.

    `status` is ``"succeeded"`` (exit 0), ``"failed"`` (non-zero exit), ``"timed_out"``
    (killed at its deadline or by `kill_worker`), ``"cancelled"`` (stopped by
    `cancel_worker`) or ``"lost"`` (the container vanished or the engine stayed
    unreachable). Fields the engine could not tell are ``None``.
    """

    job_id: str
    status: OutcomeStatus
    exit_code: int | None = None
    oom_killed: bool | None = None
    exit_reason: str | None = None
    duration_s: float | None = None
    error: str | None = None
    # The worker's last output lines (`RouterConfig.log_tail_lines`), masked, oldest first.
    log_tail: tuple[str, ...] = ()

    @property
    def succeeded(self) -> bool:
        """True for a worker that exited with status 0 on its own."""
        return self.status == "succeeded"

    def describe(self) -> str:
        """The run-record reason, e.g. ``Worker crashed with exit code 1 · OOMKilled=true``."""
        if self.status == "lost":
            head = "Worker lost" + (f": {self.error}" if self.error else "")
        elif self.status == "timed_out" and self.exit_code is None:
            head = "Worker timed out"
        elif self.status == "cancelled":
            code = "" if self.exit_code is None else f" (exit code {self.exit_code})"
            head = f"Worker cancelled{code}"
        elif self.exit_code is None:
            head = "Worker exited"
        elif self.status == "timed_out":
            head = f"Worker timed out (exit code {self.exit_code})"
        elif self.exit_code == 0:
            head = "Worker completed (exit code 0)"
        elif self.exit_code == BOOT_FAILURE_EXIT_CODE:
            head = f"Worker boot failed (exit code {self.exit_code})"
        else:
            head = f"Worker crashed with exit code {self.exit_code}"
        parts = [head]
        if self.oom_killed is not None:
            parts.append(f"OOMKilled={'true' if self.oom_killed else 'false'}")
        if self.exit_reason:
            parts.append(f'reason="{self.exit_reason}"')
        return " · ".join(parts)


class WorkerLifecycleListener:
    """Receives lifecycle events; override what you need, the defaults do nothing.

    Methods run on dockyard's threads. An exception raised here is logged and never breaks
    the lifecycle.
    """

    def on_worker_started(self, worker: ActiveWorker) -> None:
        """A worker's container has started."""

    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        """A worker ended; called exactly once per started worker (unless detached)."""

    def on_orphan_stopped(self, container_id: str, labels: dict[str, str]) -> None:
        """An orphaned container of this router instance was stopped and removed."""

    def on_worker_output(self, worker: ActiveWorker, stream: str, line: str) -> None:
        """One line the worker printed: `stream` is ``"stdout"`` or ``"stderr"``, `line` the
        text without its newline (UTF-8, undecodable bytes replaced; lines over 64 KiB come
        in pieces), secrets masked. Called in order per worker, on a dockyard thread that
        is neither a launch's nor an exit's; a listener slower than its workers loses lines
        (counted in `dockyard_log_lines_dropped_total`) rather than slowing them."""

"""The driver interface: what the core asks of an engine, in task verbs over typed models.

As Nomad's task drivers (`plugins/drivers/driver.go`): a driver creates a worker from a
`ContainerSpec` and starts it, opens waits for its exit (an `ExitResult`), stops, kills and
removes it, inspects it (a `WorkerState`), lists the ones carrying given labels
(`WorkerEntry`s) and reads its log tail. Its failures are the typed errors of `_errors`.
It declares its `Capabilities` (in the driver table, `_drivers`); the core checks those,
never a driver's name. Image work (pull, commit, tag, list, remove) is an `ImageStore`,
which only a driver whose workers run from the connected engine's local images provides
(`driver.images`, else None).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from datetime import datetime

    from ._container_settings import ContainerSettings
    from ._drivers import Capabilities
    from ._output import AttachedOutput
    from ._registry_auth import RegistryAuth
    from ._secrets import Secret

__all__ = [
    "CallObserver",
    "ContainerSpec",
    "Driver",
    "ExitResult",
    "ExitTicket",
    "ImageStore",
    "WorkerEntry",
    "WorkerState",
]

CallObserver = Callable[[str, str, float], None]
"""`(operation, result, seconds)`: told about every engine call once it ended."""


@dataclass(frozen=True)
class ContainerSpec:
    """Everything one `create` needs; built by the launcher, sent as-is."""

    image: str
    name: str
    env: Mapping[str, str | Secret] = field(repr=False)  # revealed only by the driver
    labels: Mapping[str, str]
    memory_bytes: int
    network: str
    auto_remove: bool
    command: Sequence[str] | None = None
    pids_limit: int | None = None
    no_new_privileges: bool = False
    settings: ContainerSettings | None = None  # the merged container controls


@dataclass(frozen=True)
class ExitResult:
    """How a worker ended, as far as the engine told; None where it did not say."""

    exit_code: int | None
    oom_killed: bool | None = None
    error: str | None = None  # the engine's reason, when it gave one
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def duration_s(self) -> float | None:
        """The run's length; None unless both times are known and it is finite and ≥ 0."""
        if self.started_at is None or self.finished_at is None:
            return None
        seconds = (self.finished_at - self.started_at).total_seconds()
        return seconds if math.isfinite(seconds) and seconds >= 0 else None


@dataclass(frozen=True)
class WorkerState:
    """One worker as an inspect found it."""

    id: str
    name: str
    image: str
    labels: Mapping[str, str]
    env: tuple[str, ...] = field(repr=False)  # `KEY=value` items, as the worker got them
    status: str  # `created`, `running`, `exited`, ... (the engine's word)
    running: bool  # running, restarting or paused: it still holds its slot
    exit: ExitResult  # its start time; once it ended, the exit's facts too
    auto_remove: bool = False  # the engine removes it after its exit


@dataclass(frozen=True)
class WorkerEntry:
    """One worker as a listing shows it."""

    id: str
    name: str
    labels: Mapping[str, str]
    status: str  # `created`, `running`, `exited`, `removing`, ... (the engine's word)
    created_at: datetime | None


class ExitTicket(Protocol):
    """A registered wait for one worker's exit."""

    def result(self) -> ExitResult:
        """Block until the exit; raises a typed error when the wait broke or was closed."""
        ...

    @property
    def closed(self) -> bool: ...

    def close(self) -> None:
        """Drop the wait from any thread; a blocked `result()` then raises."""
        ...


class ImageStore(Protocol):
    """Image work on the engine the workers run on (answers in the engine's image dicts)."""

    image_write_timeout_s: float

    def commit(
        self, container_id: str, repository: str, tag: str, changes: Sequence[str]
    ) -> str: ...
    def image_inspect(self, image: str) -> dict[str, Any]: ...
    def tag(self, image: str, repository: str, tag: str, *, force: bool = True) -> None: ...
    def dangling_images(self, labels: Sequence[str]) -> list[dict[str, Any]]: ...
    def list_images(self, name_filter: str | None = None) -> list[dict[str, Any]]: ...
    def image_history(self, image: str) -> list[dict[str, Any]]: ...
    def load_image_archive(self, archive: bytes, reference: str) -> None: ...
    def import_container_filesystem(self, container_id: str, changes: Sequence[str]) -> str: ...
    def remove_image(self, image: str) -> None: ...
    def pull(
        self, image: str, timeout_s: float, auth_config: RegistryAuth | None = None
    ) -> None: ...


class Driver(Protocol):
    """The engine calls the core makes; `DockerDriver` documents each one's contract."""

    capabilities: Capabilities
    images: ImageStore | None
    observer: CallObserver | None

    def close(self) -> None: ...
    def create(self, spec: ContainerSpec) -> str:
        """Create (not start) the worker; its id."""
        ...

    def open_exit_wait(self, worker_id: str) -> ExitTicket:
        """A wait for the next exit; opened before `start`, so none is missed."""
        ...

    def open_wait(self, worker_id: str) -> ExitTicket:
        """A wait that answers at once when the worker is not running (resumed waits)."""
        ...

    def start(self, worker_id: str) -> None: ...
    def attach_output(self, worker_id: str) -> AttachedOutput:
        """The worker's stdout and stderr from its first byte: opened after `create`,
        before `start`; the stream ends at the exit. Only with `capabilities.live_output`."""
        ...

    def follow_output(self, worker_id: str, after: Mapping[str, int] | None) -> AttachedOutput:
        """A running worker's output from the engine's log, each piece with the engine's
        time (ns): per stream the lines stamped after `after[stream]` (all without one),
        then the new ones until the exit. Only with `capabilities.follow_output`."""
        ...

    def output_mark(self, worker_id: str, positions: Mapping[str, int]) -> dict[str, int]:
        """Per stream, the engine's time (ns) of its line at `positions[stream]` (1-based):
        how far output read without times got. Only with `capabilities.follow_output`."""
        ...

    def inspect(self, worker_id: str) -> WorkerState:
        """The worker by id or name; `EngineNotFoundError` when there is none."""
        ...

    def list_workers(self, labels: Sequence[str], *, all: bool = True) -> list[WorkerEntry]:
        """The workers carrying every label (`key=value`); `all=False`: running ones."""
        ...

    def log_tail(self, worker_id: str, lines: int) -> str: ...
    def stop(self, worker_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after `grace_s`."""
        ...

    def kill(self, worker_id: str) -> None: ...
    def remove(self, worker_id: str, *, force: bool = True) -> None: ...
    def wait_removed(self, worker_id: str, timeout_s: float) -> None:
        """Return once the worker is gone (an auto-removed one, say)."""
        ...

"""The fake engine's state: its containers and images, events, calls and scripted failures.

`FakeEngine` holds what a test reads and scripts (`calls`, `failures`, `image_names`, ...)
and what a test makes happen (an exit, output, a broken events stream, a container that
vanishes); its image calls and its docker-py surface build on it (see `dockyard.testing`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._fake_answers import FakeEventStream, not_found

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Mapping

__all__ = ["DEFAULT_IMAGE", "FakeContainer", "FakeEngine"]

DEFAULT_IMAGE = "registry.example/cascade/worker:1"


@dataclass
class FakeContainer:
    """One container of the fake engine."""

    id: str
    name: str
    image: str
    labels: dict[str, str]
    env: list[str]
    host_config: dict[str, Any]
    command: list[str] | None
    config: dict[str, Any] = field(default_factory=dict)  # WorkingDir, User when set
    status: str = "created"
    exit_code: int = 0
    oom_killed: bool = False
    output: bytes = b""  # what `logs` answers (and an attach sends at the exit)
    # The engine's ends of attached output streams (a `socketpair` each).
    attached: list[socket.socket] = field(default_factory=list, repr=False)
    started_at: str = "2024-05-01T10:00:00.000000000Z"
    finished_at: str = "2024-05-01T10:00:01.500000000Z"

    def env_map(self) -> dict[str, str]:
        return dict(item.partition("=")[::2] for item in self.env)


class FakeEngine:
    """The state of one fake engine, and what a test does to it."""

    def __init__(self, images: set[str] | None = None) -> None:
        self.image_names: set[str] = {DEFAULT_IMAGE} if images is None else set(images)
        self.image_info: dict[str, dict[str, Any]] = {}  # committed images, by id and name
        self.containers_by_id: dict[str, FakeContainer] = {}
        self.failures: dict[str, list[BaseException]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.pull_error: str | None = None
        self.exit_on_start: int | None = None  # exit code the next started containers exit with
        self.stop_exits = True  # `stop` makes the container exit (137)
        # Answer as Podman does (its `_ping` names `Libpod-Api-Version`): dockyard then
        # counts a stop's grace itself.
        self.podman = False
        # A stop signal (`kill` with a signal but SIGKILL) makes the container exit (143);
        # False: it is ignored, as `sleep` as PID 1 ignores SIGTERM.
        self.signal_exits = False
        self.before_create: Callable[[], None] | None = None
        self.before_stop: Callable[[str], None] | None = None
        # `docker info` SecurityOptions: the security modules the engine has.
        self.security_options: list[str] = ["name=seccomp,profile=default"]
        self.lock = threading.RLock()
        self.streams: list[FakeEventStream] = []
        self._events: list[dict[str, Any]] = []  # every event sent, for `since` replays
        self._ids = itertools.count(1)

    # -- helpers for tests --------------------------------------------------------------

    def call_names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.calls]

    def calls_of(self, method: str) -> list[Any]:
        with self.lock:
            return [detail for name, detail in self.calls if name == method]

    def add_container(self, name: str, labels: Mapping[str, str], status: str) -> FakeContainer:
        """A container made outside dockyard (a leftover, another router's)."""
        container = FakeContainer(
            id=self._new_id(), name=name, image=DEFAULT_IMAGE, labels=dict(labels), env=[],
            host_config={}, command=None, status=status,
        )  # fmt: skip
        with self.lock:
            self.containers_by_id[container.id] = container
        return container

    def only_container(self) -> FakeContainer:
        with self.lock:
            (container,) = self.containers_by_id.values()
            return container

    def exit(self, container_id: str, code: int, *, oom: bool = False) -> None:
        """The running container exits with `code` (an `oom` then `die` event).

        Attached output streams get `output` (as stdout) and end before the `die` event.
        """
        with self.lock:
            container = self.containers_by_id[container_id]
            if container.status != "running":
                return
            container.status = "exited"
            container.exit_code = code
            container.oom_killed = oom
            if container.output:
                self.write_output(container_id, container.output)
            self._end_output(container)
            if oom:
                self._emit(container, "oom", {})
            self._emit(container, "die", {"exitCode": str(code)})

    def write_output(self, container_id: str, data: bytes, stream: int = 1) -> None:
        """The container writes `data` on stdout (1) or stderr (2): attached streams get it."""
        header = struct.pack(">BxxxL", stream, len(data))
        with self.lock:
            attached = list(self.containers_by_id[container_id].attached)
        for end in attached:
            with contextlib.suppress(OSError):  # the reader went away
                end.sendall(header + data)

    def _end_output(self, container: FakeContainer) -> None:
        with self.lock:
            attached, container.attached = container.attached, []
        for end in attached:
            end.close()

    def break_event_streams(self) -> None:
        """Every connected events stream breaks (its exit waits fail and are resumed)."""
        with self.lock:
            streams, self.streams = self.streams, []
        for stream in streams:
            stream.break_stream()

    def vanish(self, container_id: str) -> None:
        """The container disappears behind dockyard's back (and the exit waits break)."""
        with self.lock:
            del self.containers_by_id[container_id]
        self.break_event_streams()

    def _emit(self, container: FakeContainer, action: str, attributes: dict[str, str]) -> None:
        event = {
            "Type": "container",
            "Action": action,
            "status": action,
            "id": container.id,
            "Actor": {
                "ID": container.id,
                "Attributes": {**container.labels, **attributes, "name": container.name},
            },
            "timeNano": time.time_ns(),
        }
        with self.lock:
            self._events.append(event)
            streams = [s for s in self.streams if not s.closed and s.wants(event)]
        for stream in streams:
            stream.push(event)

    def _fail(self, method: str) -> None:
        with self.lock:
            pending = self.failures.get(method)
            err = pending.pop(0) if pending else None
        if err is not None:
            raise err

    def _record(self, method: str, detail: Any = None) -> None:
        with self.lock:
            self.calls.append((method, detail))

    def _find(self, ref: str) -> FakeContainer:
        with self.lock:
            if ref in self.containers_by_id:
                return self.containers_by_id[ref]
            for container in self.containers_by_id.values():
                if container.name == ref:
                    return container
        raise not_found(ref)

    def _new_id(self) -> str:
        return hashlib.sha256(f"{id(self)}-{next(self._ids)}".encode()).hexdigest()

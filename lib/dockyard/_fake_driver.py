"""A fake engine at the driver interface, for tests: workers in memory, exits on demand.

`FakeDriver` answers the core's task verbs with the typed models and errors a real driver
gives; its `capabilities` are the caller's choice, so one fake stands in for a Docker-like
engine (the default: auto-removal, images, snapshots) and a Swarm-like one
(`SWARM_LIKE`: none of those). Offered to hosts by `dockyard.testing`.
"""

from __future__ import annotations

import hashlib
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._driver import CallObserver, ContainerSpec, ExitResult, WorkerEntry, WorkerState
from ._drivers import DRIVERS, Capabilities
from ._errors import (
    ContainerNotFoundError,
    EngineTimeoutError,
    ExitWaitClosedError,
    ImageNotFoundError,
    NameInUseError,
)
from ._output import AttachedOutput, Frame

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from ._registry_auth import RegistryAuth

__all__ = ["DOCKER_LIKE", "SWARM_LIKE", "FakeDriver", "FakeImageStore"]

DOCKER_LIKE = DRIVERS["docker"].capabilities
SWARM_LIKE = DRIVERS["swarm"].capabilities


class _Ticket:
    """A wait for one worker's exit."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._answer: ExitResult | None = None
        self.closed = False

    def result(self) -> ExitResult:
        self._done.wait()
        if self.closed or self._answer is None:
            raise ExitWaitClosedError("the fake exit wait was closed")
        return self._answer

    def done(self) -> bool:
        return self._done.is_set()

    def close(self) -> None:
        self.closed = True
        self._done.set()

    def answer(self, result: ExitResult) -> None:
        if not self._done.is_set():
            self._answer = result
            self._done.set()


@dataclass
class _Worker:
    spec: ContainerSpec
    id: str
    created_at: datetime
    status: str = "created"
    exit: ExitResult = field(default_factory=lambda: ExitResult(None))
    tickets: list[_Ticket] = field(default_factory=list)
    # Attached streams get `(stream, bytes)`, followed ones the log's stamped entries.
    outputs: list[queue.SimpleQueue[Frame | None]] = field(default_factory=list)
    follows: list[queue.SimpleQueue[Frame | None]] = field(default_factory=list)
    log: list[tuple[int, bytes, int]] = field(default_factory=list)  # one entry per line


def _frames(stream: queue.SimpleQueue[Frame | None]) -> Iterator[Frame]:
    while (piece := stream.get()) is not None:
        yield piece


class FakeImageStore:
    """Images by name in a set; commits make new ones. Failures as in `FakeDriver`."""

    def __init__(self, images: Iterable[str] = ()) -> None:
        self.image_write_timeout_s = 1800.0
        self.names: set[str] = set(images)
        self.pulls: list[str] = []

    def _need(self, image: str) -> None:
        if image not in self.names:
            raise ImageNotFoundError("image_inspect", 404, f"No such image: {image}")

    def commit(self, container_id: str, repository: str, tag: str, changes: Sequence[str]) -> str:
        image_id = "sha256:" + hashlib.sha256(f"{container_id}{changes}".encode()).hexdigest()
        self.names.add(image_id)
        if repository:
            self.names.add(f"{repository}:{tag or 'latest'}")
        return image_id

    def image_inspect(self, image: str) -> dict[str, Any]:
        self._need(image)
        return {"Id": image, "Size": 0, "Config": {"Env": []}}

    def tag(self, image: str, repository: str, tag: str, *, force: bool = True) -> None:
        self._need(image)
        self.names.add(f"{repository}:{tag}")

    def dangling_images(self, labels: Sequence[str]) -> list[dict[str, Any]]:
        return []

    def list_images(self, name_filter: str | None = None) -> list[dict[str, Any]]:
        names = sorted(n for n in self.names if name_filter is None or n.startswith(name_filter))
        return [{"Id": name, "RepoTags": [name], "Labels": {}, "Created": 0} for name in names]

    def image_history(self, image: str) -> list[dict[str, Any]]:
        self._need(image)
        return []

    def load_image_archive(self, archive: bytes, reference: str) -> None:
        self.names.add(reference)

    def import_container_filesystem(self, container_id: str, changes: Sequence[str]) -> str:
        image_id = "sha256:" + hashlib.sha256(f"flat{container_id}{changes}".encode()).hexdigest()
        self.names.add(image_id)
        return image_id

    def remove_image(self, image: str) -> None:
        self._need(image)
        self.names.discard(image)

    def pull(self, image: str, timeout_s: float, auth_config: RegistryAuth | None = None) -> None:
        self.pulls.append(image)
        self.names.add(image)


class FakeDriver:
    """Workers in memory behind the driver interface; `exit()` ends one.

    `failures[verb]` holds typed errors raised, in order, by the next calls of that verb;
    `calls` records every verb as `(verb, worker id or name)`. With images (the
    capability), a create of an image the store lacks raises `ImageNotFoundError`.
    """

    def __init__(
        self,
        *,
        capabilities: Capabilities = DOCKER_LIKE,
        images: Iterable[str] = (),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.capabilities = capabilities
        self.images: FakeImageStore | None = FakeImageStore(images) if capabilities.images else None
        self.observer: CallObserver | None = None
        self.failures: dict[str, list[BaseException]] = {}
        self.calls: list[tuple[str, str]] = []
        self.closed = False
        self._now = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._ids = itertools.count(1)

    # -- the test's controls ------------------------------------------------------------

    def exit(self, worker_id: str, code: int, *, oom: bool = False) -> None:
        """The worker exits with `code` (auto-removed when it asked and the engine can)."""
        with self._lock:
            worker = self._workers[worker_id]
            worker.status = "exited"
            worker.exit = replace(
                worker.exit, exit_code=code, oom_killed=oom, finished_at=self._now()
            )
            tickets, worker.tickets = worker.tickets, []
            outputs, worker.outputs = worker.outputs + worker.follows, []
            worker.follows = []
            if worker.spec.auto_remove and self.capabilities.auto_remove:
                del self._workers[worker_id]
        for stream in outputs:  # the output ends before the exit is known, as the engine's
            stream.put(None)
        for ticket in tickets:
            ticket.answer(worker.exit)

    def write_output(self, worker_id: str, data: bytes, stream: int = 1) -> None:
        """The worker writes `data` on stdout (1) or stderr (2); its log keeps each line
        stamped with a time of its own (ns), as an engine's log does."""
        with self._lock:
            worker = self._workers[worker_id]
            outputs, follows = list(worker.outputs), list(worker.follows)
            entries = []
            for line in data.splitlines(keepends=True):
                stamp = max(time.time_ns(), worker.log[-1][2] + 1 if worker.log else 0)
                worker.log.append((stream, line, stamp))
                entries.append((stream, line, stamp))
        for output in outputs:
            output.put((stream, data))
        for follow in follows:
            for entry in entries:
                follow.put(entry)

    def running(self) -> list[str]:
        with self._lock:
            return [w.id for w in self._workers.values() if w.status == "running"]

    # -- the driver's verbs -------------------------------------------------------------

    def _call(self, verb: str, subject: str) -> None:
        self.calls.append((verb, subject))
        queued = self.failures.get(verb)
        if queued:
            raise queued.pop(0)

    def _worker(self, worker_id: str) -> _Worker:
        worker = self._workers.get(worker_id) or next(
            (w for w in self._workers.values() if w.spec.name == worker_id), None
        )
        if worker is None:
            raise ContainerNotFoundError("inspect", 404, f"No such container: {worker_id}")
        return worker

    def close(self) -> None:
        self.closed = True
        with self._lock:
            tickets = [t for w in self._workers.values() for t in w.tickets]
        for ticket in tickets:
            ticket.close()

    def create(self, spec: ContainerSpec) -> str:
        self._call("create", spec.name)
        if self.images is not None and spec.image not in self.images.names:
            raise ImageNotFoundError("create", 404, f"No such image: {spec.image}")
        with self._lock:
            if any(w.spec.name == spec.name for w in self._workers.values()):
                raise NameInUseError("create", 409, f'The name "/{spec.name}" is already in use')
            worker_id = f"{next(self._ids):064x}"
            self._workers[worker_id] = _Worker(spec, worker_id, self._now())
        return worker_id

    def open_exit_wait(self, worker_id: str) -> _Ticket:
        self._call("open_exit_wait", worker_id)
        ticket = _Ticket()
        with self._lock:
            self._worker(worker_id).tickets.append(ticket)
        return ticket

    def open_wait(self, worker_id: str) -> _Ticket:
        self._call("open_wait", worker_id)
        ticket = _Ticket()
        with self._lock:
            worker = self._worker(worker_id)
            if worker.status == "running":
                worker.tickets.append(ticket)
                return ticket
        ticket.answer(worker.exit)
        return ticket

    def attach_output(self, worker_id: str) -> AttachedOutput:
        self._call("attach", worker_id)
        stream: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()
        with self._lock:
            self._worker(worker_id).outputs.append(stream)
        return AttachedOutput(_frames(stream), lambda: stream.put(None))

    def follow_output(self, worker_id: str, after: Mapping[str, int] | None) -> AttachedOutput:
        self._call("follow_output", worker_id)
        stream: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()
        skip = {1: (after or {}).get("stdout", -1), 2: (after or {}).get("stderr", -1)}
        with self._lock:
            worker = self._worker(worker_id)
            for entry in worker.log:
                if entry[2] > skip.get(entry[0], -1):
                    stream.put(entry)
            if worker.status == "running":
                worker.follows.append(stream)
            else:
                stream.put(None)
        return AttachedOutput(_frames(stream), lambda: stream.put(None))

    def output_mark(self, worker_id: str, positions: Mapping[str, int]) -> dict[str, int]:
        self._call("output_mark", worker_id)
        names = {1: "stdout", 2: "stderr"}
        counted = {1: 0, 2: 0}
        found = {}
        with self._lock:
            for stream, line, stamp in self._worker(worker_id).log:
                if line.endswith(b"\n") and stream in counted:
                    counted[stream] += 1
                    if counted[stream] == positions.get(names[stream], 0):
                        found[names[stream]] = stamp
        return found

    def start(self, worker_id: str) -> None:
        self._call("start", worker_id)
        with self._lock:
            worker = self._worker(worker_id)
            worker.status = "running"
            worker.exit = ExitResult(None, started_at=self._now())

    def inspect(self, worker_id: str) -> WorkerState:
        self._call("inspect", worker_id)
        with self._lock:
            worker = self._worker(worker_id)
            return WorkerState(
                id=worker.id,
                name=worker.spec.name,
                image=worker.spec.image,
                labels=dict(worker.spec.labels),
                env=tuple(f"{key}=" for key in worker.spec.env),  # keys only: no secrets
                status=worker.status,
                running=worker.status == "running",
                exit=worker.exit,
                auto_remove=worker.spec.auto_remove and self.capabilities.auto_remove,
            )

    def list_workers(self, labels: Sequence[str], *, all: bool = True) -> list[WorkerEntry]:
        self._call("list_workers", ",".join(labels))
        wanted = [label.partition("=")[::2] for label in labels]
        with self._lock:
            return [
                WorkerEntry(w.id, w.spec.name, dict(w.spec.labels), w.status, w.created_at)
                for w in self._workers.values()
                if all or w.status == "running"
                if _all_match(w.spec.labels, wanted)
            ]

    def log_tail(self, worker_id: str, lines: int) -> str:
        self._call("log_tail", worker_id)
        return ""

    def stop(self, worker_id: str, grace_s: float) -> None:
        self._call("stop", worker_id)
        with self._lock:
            running = self._worker(worker_id).status == "running"
        if running:
            self.exit(worker_id, 143)

    def kill(self, worker_id: str) -> None:
        self._call("kill", worker_id)
        with self._lock:
            running = self._worker(worker_id).status == "running"
        if running:
            self.exit(worker_id, 137)

    def remove(self, worker_id: str, *, force: bool = True) -> None:
        self._call("remove", worker_id)
        with self._lock:
            worker = self._worker(worker_id)
            del self._workers[worker.id]
            tickets, worker.tickets = worker.tickets, []
            outputs, worker.outputs = worker.outputs + worker.follows, []
            worker.follows = []
        for stream in outputs:
            stream.put(None)
        for ticket in tickets:
            ticket.answer(replace(worker.exit, exit_code=137))

    def wait_removed(self, worker_id: str, timeout_s: float) -> None:
        self._call("wait_removed", worker_id)
        with self._lock:
            self._worker(worker_id)
        # Still there: this engine removes nothing later by itself.
        raise EngineTimeoutError(f"{worker_id[:12]} was not removed within {timeout_s:g}s")


def _all_match(labels: Mapping[str, str], wanted: Sequence[tuple[str, str]]) -> bool:
    return all(labels.get(key) == value for key, value in wanted)

"""The Docker driver: the core's task verbs on one Docker engine, each worker a container.

A thin layer over the Docker client (`DockerGateway`): the verbs pass through, and inspect
and list answers become the core's `WorkerState` and `WorkerEntry` here, the one place
that reads Docker's container JSON for the core.
Its image store is the client itself. On Podman a stop's grace is counted here (below),
and an auto-removed worker is removed by the driver, not the engine (`create`).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache, TTLCache
from docker.utils.socket import frames_iter

from ._docker import DockerGateway
from ._docker_settings import unhonoured_security_options
from ._driver import (
    CallObserver,
    ContainerSpec,
    ExitTicket,
    ImageStore,
    WorkerEntry,
    WorkerState,
)
from ._drivers import DRIVERS, Capabilities
from ._errors import (
    DockerUnavailableError,
    EngineConflictError,
    EngineNotFoundError,
    EngineTimeoutError,
    WorkerSpawnError,
)
from ._exit_monitor import exit_result_of
from ._output import AttachedOutput
from ._times import parse_docker_time

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    import docker

    from ._config import RouterConfig

__all__ = [
    "DockerDriver",
    "StopSignals",
    "attach_output",
    "connect",
    "engine_is_podman",
    "open_driver",
    "parse_docker_time",
    "poll_removed",
    "stop_counting_grace",
    "worker_entry",
    "worker_state",
]


class DockerDriver:
    """Workers as containers of one engine (see `_driver.Driver` for the verbs)."""

    capabilities: Capabilities = DRIVERS["docker"].capabilities

    def __init__(self, client: DockerGateway) -> None:
        self.client = client
        self.images: ImageStore | None = client
        self._security_modules: list[str] | None = None  # `docker info` SecurityOptions
        self._podman: bool | None = None
        self._stop_signals = StopSignals(client)

    @property
    def observer(self) -> CallObserver | None:
        return self.client.observer

    @observer.setter
    def observer(self, observer: CallObserver | None) -> None:
        self.client.observer = observer

    def close(self) -> None:
        self.client.close()

    def create(self, spec: ContainerSpec) -> str:
        """Create the container (recovering from a create whose answer got lost).

        An AppArmor profile or SELinux label the engine has no module for is refused first:
        the engine would start the worker without it, and say nothing."""
        if spec.settings is not None and spec.settings.security_opt:
            self._check_security_options(spec.settings.security_opt)
        if spec.auto_remove and self._on_podman():
            # Podman's AutoRemove takes the log with the container at once: a worker's
            # adopter, which reads the log, lost the lines of its last half second or so.
            # Here the driver removes it (`wait_removed`), after its output was read.
            spec = replace(spec, auto_remove=False)
        worker_id = self.client.create(spec)
        self._stop_signals.created(worker_id, spec.image)
        return worker_id

    def _check_security_options(self, options: tuple[str, ...]) -> None:
        if self._security_modules is None:  # asked once: an engine's modules do not change
            self._security_modules = self.client.security_modules()
        reason = unhonoured_security_options(options, self._security_modules)
        if reason is not None:
            raise WorkerSpawnError(
                f"the engine refused the security options (security_opt={options!r}): {reason}"
            )

    def open_exit_wait(self, worker_id: str) -> ExitTicket:
        return self.client.open_exit_wait(worker_id)

    def open_wait(self, worker_id: str) -> ExitTicket:
        return self.client.open_wait(worker_id)

    def start(self, worker_id: str) -> None:
        self.client.start(worker_id)

    def attach_output(self, worker_id: str) -> AttachedOutput:
        """The container's stdout and stderr from its first byte (attached before `start`)."""
        return self.client.calls.run("attach", lambda: attach_output(self.client.api, worker_id))

    def follow_output(self, worker_id: str, after: Mapping[str, int] | None) -> AttachedOutput:
        """The container's log, followed: each entry stamped by the engine (ns)."""
        return self.client.follow_logs(worker_id, after)

    def output_mark(self, worker_id: str, positions: Mapping[str, int]) -> dict[str, int]:
        return self.client.log_mark(worker_id, positions)

    def inspect(self, worker_id: str) -> WorkerState:
        return worker_state(self.client.inspect(worker_id))

    def list_workers(self, labels: Sequence[str], *, all: bool = True) -> list[WorkerEntry]:
        return [worker_entry(c) for c in self.client.list_containers(labels, all=all)]

    def log_tail(self, worker_id: str, lines: int) -> str:
        return self.client.logs_tail(worker_id, lines)

    def stop(self, worker_id: str, grace_s: float) -> None:
        """The worker's stop signal, SIGKILL after `grace_s`. On an engine that takes its
        stop calls in turns (Podman), the grace is counted here (below)."""
        if self._on_podman():
            signal = self._stop_signals.of(worker_id)
            stop_counting_grace(self.client, worker_id, grace_s, signal)
        else:
            self.client.stop(worker_id, grace_s)

    def kill(self, worker_id: str) -> None:
        self.client.kill(worker_id)

    def remove(self, worker_id: str, *, force: bool = True) -> None:
        self.client.remove(worker_id, force=force)

    def wait_removed(self, worker_id: str, timeout_s: float) -> None:
        """Returns once an auto-removed worker is gone. On Docker, the engine's removal is
        waited for. On Podman, the driver made it without AutoRemove (`create`) and removes
        it here; a worker Podman removes itself (made with AutoRemove elsewhere) is looked
        for with inspects: Podman's waits poll the container's state, and a removal wait per
        dying container made 100 teardowns take three to four times as long (40-55 s
        against 14 s)."""
        if not self._on_podman():
            self.client.wait_removed(worker_id, timeout_s)
            return
        try:
            self.client.remove(worker_id, force=True)
        except EngineConflictError:  # its own AutoRemove is at it
            poll_removed(self.client, worker_id, timeout_s)

    def _on_podman(self) -> bool:
        if self._podman is None:  # asked once: an engine does not change
            self._podman = engine_is_podman(self.client)
        return self._podman


def worker_state(info: dict[str, Any]) -> WorkerState:
    """A container inspect as the core's `WorkerState`."""
    state = info.get("State") or {}
    config = info.get("Config") or {}
    return WorkerState(
        id=str(info.get("Id", "")),
        name=str(info.get("Name", "")).lstrip("/"),
        image=str(config.get("Image", "")),
        labels=dict(config.get("Labels") or {}),
        env=tuple(config.get("Env") or ()),
        status=str(state.get("Status") or ""),
        running=bool(state.get("Running") or state.get("Restarting") or state.get("Paused")),
        exit=exit_result_of(state),
        auto_remove=bool((info.get("HostConfig") or {}).get("AutoRemove")),
    )


def worker_entry(container: dict[str, Any]) -> WorkerEntry:
    """A `docker ps` entry as the core's `WorkerEntry`."""
    names = container.get("Names") or []
    created = container.get("Created")
    return WorkerEntry(
        id=str(container.get("Id", "")),
        name=str(names[0]).lstrip("/") if names else "",
        labels=dict(container.get("Labels") or {}),
        status=str(container.get("State", "")).lower(),
        created_at=datetime.fromtimestamp(int(created), UTC) if created else None,
    )


def open_driver(
    config: RouterConfig,
    docker_client: docker.DockerClient | docker.APIClient | None,
    *,
    short_pool: int,
    wait_pool: int,
) -> DockerDriver:
    """The Docker driver over the caller's client, or over a new connection to the engine
    the environment names.

    Its exit stream carries only this router instance's containers: the engine filters, so
    two routers on one engine never read each other's exits.
    """
    return DockerDriver(connect(config, docker_client, short_pool=short_pool, wait_pool=wait_pool))


def connect(
    config: RouterConfig,
    docker_client: docker.DockerClient | docker.APIClient | None,
    *,
    short_pool: int,
    wait_pool: int,
) -> DockerGateway:
    """The Docker client a driver runs on (the Swarm driver too: a manager node's engine)."""
    own = [f"{config.label_prefix}.router.instance={config.router_instance_id}"]
    client = (
        DockerGateway.connect(
            short_pool=short_pool,
            wait_pool=wait_pool,
            timeout_s=config.docker_timeout_s,
            event_labels=own,
        )
        if docker_client is None
        else DockerGateway.from_client(docker_client, event_labels=own)
    )
    client.image_write_timeout_s = config.image_write_timeout_s
    return client


# -- a container's output stream --

# No `logs=1`: the engine subscribes the attach to the live output before it replays the
# log file, so a worker that starts during the replay has its first lines sent twice. Attached
# before start, the live stream alone has every byte.
_ATTACH_PARAMS = {"stdout": 1, "stderr": 1, "stream": 1}


def attach_output(api: docker.APIClient, container_id: str) -> AttachedOutput:
    """Attach to the container's stdout and stderr; raises the client's error on refusal.

    `POST /containers/{id}/attach?stream=1&stdout=1&stderr=1` on a created container
    not started yet, as `docker run` does: the engine sends every byte from the first one and
    ends the stream (EOF) at the exit, also when it removes the container after (AutoRemove).
    Workers run without a TTY: the stream is in frames, read by docker-py's `frames_iter`.
    """
    sock: Any = api.attach_socket(container_id, params=_ATTACH_PARAMS)
    # The OS socket under docker-py's answer (a `SocketIO` on a unix socket): closing the
    # `SocketIO` alone leaves it open, held by the HTTP connection.
    raw: Any = getattr(sock, "_sock", sock)
    return AttachedOutput(frames=_frames(sock, raw), close=lambda: _shut(sock, raw))


def _frames(sock: Any, raw: Any) -> Iterator[tuple[int, bytes]]:
    try:
        for stream, data in frames_iter(sock, tty=False):  # type: ignore[no-untyped-call]
            yield stream, bytes(data)
    finally:
        _close(sock, raw)


def _shut(sock: Any, raw: Any) -> None:
    """Wake a read blocked on the stream (from another thread): the reader then ends."""
    shutdown = getattr(raw, "shutdown", None)
    if callable(shutdown):
        with contextlib.suppress(OSError):
            shutdown(socket.SHUT_RDWR)
    else:  # a transport without shutdown (ssh channel): closing is all there is
        _close(sock, raw)


def _close(sock: Any, raw: Any) -> None:
    response = getattr(sock, "_response", None)
    for closable in (sock, raw, response):
        if closable is not None:
            with contextlib.suppress(Exception):
                closable.close()


# -- a stop whose grace dockyard counts, for an engine that takes stop calls in turns -----
#
# Podman runs its API's stop calls in a process-wide pool of parallel jobs (3 per core, plus
# 1), each holding its place for the whole grace of a worker that ignores its stop signal:
# 200 stops on two cores ended about 7 a grace, over 90 s, and the last ones outran the
# call's timeout. Here every engine call takes milliseconds: the container's stop signal, a
# wait for its exit event, and SIGKILL when the grace ran out first. Docker runs all its stop
# calls at once and keeps its own stop.
#
# Which engine it is, is asked once: Podman's `_ping` answer carries `Libpod-Api-Version`
# (its `version` is slow: a quarter second idle, far more under load).

PODMAN_PING_HEADER = "Libpod-Api-Version"
_REMEMBERED_WORKERS = 4096  # workers whose image is known; an older one's is inspected
_SIGNAL_TTL_S = 60.0  # an image name may be given to another image
# Podman: a removal is looked for at once, then after pauses from 0.25 s doubling to 2 s
# (the engine removes an auto-removed container within 0.2 s when idle; a mass teardown
# takes longer, and every look is work for the engine).
_REMOVAL_POLL_FIRST_S = 0.25
_REMOVAL_POLL_MAX_S = 2.0


def engine_is_podman(client: DockerGateway) -> bool:
    """Whether the engine is Podman: its stop calls take turns, its waits poll."""

    def ping() -> bool:
        response = client.api.get(f"{client.api.base_url}/_ping", timeout=client.api.timeout)
        try:
            response.raise_for_status()
            return PODMAN_PING_HEADER in response.headers
        finally:
            response.close()

    return client.calls.run("ping", ping)


class StopSignals:
    """Each worker's stop signal, read from its image once: a container inspect per stop
    cost Podman more than the stop (200 stops' SIGTERMs spread over 10 s, 4 s without)."""

    def __init__(self, client: DockerGateway) -> None:
        self._client = client
        self._lock = threading.Lock()  # cachetools caches are not thread-safe
        self._image_of: LRUCache[str, str] = LRUCache(maxsize=_REMEMBERED_WORKERS)
        self._of_image: TTLCache[str, str] = TTLCache(maxsize=256, ttl=_SIGNAL_TTL_S)

    def created(self, worker_id: str, image: str) -> None:
        with self._lock:
            self._image_of[worker_id] = image

    def of(self, worker_id: str) -> str:
        """The worker's stop signal (its image's `STOPSIGNAL`, else SIGTERM)."""
        with self._lock:
            image = self._image_of.get(worker_id)
            known = None if image is None else self._of_image.get(image)
        if known is not None:
            return known
        if image is not None:
            try:
                signal = _stop_signal(self._client.image_inspect(image))
            except EngineNotFoundError:  # the image went since: the container still knows
                return _stop_signal(self._client.inspect(worker_id))
            with self._lock:
                self._of_image[image] = signal
            return signal
        return _stop_signal(self._client.inspect(worker_id))  # not made here (adopted)


def _stop_signal(info: Mapping[str, Any]) -> str:
    return str((info.get("Config") or {}).get("StopSignal") or "SIGTERM")


def stop_counting_grace(
    client: DockerGateway, container_id: str, grace_s: float, signal: str
) -> None:
    """The container's stop `signal`, then SIGKILL unless its exit came within `grace_s`.

    The exit is read from the client's events stream, which carries this router's
    containers: any other's gets its SIGKILL when the grace ran out, as the engine's own
    stop would give it. A container that is not running is left as it is.
    """
    ticket = client.open_exit_wait(container_id)  # before the signal: no exit slips by
    try:
        deadline = time.monotonic() + grace_s
        if grace_s > 0:
            try:
                client.kill(container_id, signal)
            except EngineConflictError:
                return  # not running
            if ticket.exited_within(grace_s):
                return
            # A broken events stream ends the wait early: the grace still runs out.
            client.closing.wait(max(0.0, deadline - time.monotonic()))
        try:
            client.kill(container_id)
        except EngineConflictError:
            return  # it exited meanwhile
    finally:
        ticket.close()


def poll_removed(client: DockerGateway, container_id: str, timeout_s: float) -> None:
    """Returns once an inspect finds the container gone, as a removal wait would; raises
    the timeout error a wait that ran out raises after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    pause = _REMOVAL_POLL_FIRST_S
    while True:
        try:
            client.inspect(container_id)
        except EngineNotFoundError:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise EngineTimeoutError("Docker wait_removed: the container is still there")
        if client.closing.wait(min(pause, left)):
            raise DockerUnavailableError("Docker wait_removed: the gateway is closed")
        pause = min(pause * 2, _REMOVAL_POLL_MAX_S)

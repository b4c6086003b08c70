"""The Docker client: one sized API client and the handful of calls the drivers make.

It answers in Docker's own dicts and typed errors; the drivers above it (`_docker_driver`,
`_swarm`) turn those into the core's models, and nothing above it builds URLs or knows
about connection pools. Every call runs through one wrapper
(`EngineCalls`) that times it and translates its errors, and every call has a timeout. Exit
waits are tickets on one events stream per gateway (`_exit_monitor`), not a connection each.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, TypeVar

import docker
import requests
from docker.errors import DockerException
from requests.adapters import HTTPAdapter

from ._create_recovery import LOST_ANSWERS, created_container, recover_lost_create
from ._docker_images import ImageCalls
from ._docker_settings import docker_create_args
from ._docker_streams import ResponseEvents, following, log_mark, open_log, raise_for_status
from ._errors import (
    TRANSIENT_ERRORS,
    DockerUnavailableError,
    EngineError,
    result_of,
    translate,
)
from ._exit_monitor import ExitMonitor, ExitWait, exit_result_of
from ._retry import RetryPolicy, RetryState, call_with_retry
from ._secrets import reveal

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ._driver import CallObserver, ContainerSpec
    from ._output import AttachedOutput

__all__ = [
    "REMOVE_RETRY",
    "DockerGateway",
    "EngineCalls",
    "ExitWait",
    "ObservedEngine",
]

log = logging.getLogger("dockyard.docker")

T = TypeVar("T")

_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    DockerException,
    requests.exceptions.RequestException,
    ConnectionError,
    TimeoutError,
)

DEFAULT_HEARTBEAT_S = 2.0  # idle read timeout of the events stream; bounds `close()`
# Removal is idempotent: two more tries after 0.2 s and 0.4 s.
REMOVE_RETRY = RetryPolicy(retry_on=TRANSIENT_ERRORS, attempts=2, first_delay_s=0.2)


class EngineCalls:
    """Runs engine calls: timed for the observer, errors translated. One choke point."""

    def __init__(self, observer: CallObserver | None = None) -> None:
        self.observer = observer

    def run(self, operation: str, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        try:
            result = fn()
        except BaseException as err:
            typed = translate(operation, err)
            self._observe(operation, result_of(typed), started)
            if typed is err:
                raise
            raise typed from err
        self._observe(operation, "ok", started)
        return result

    def _observe(self, operation: str, result: str, started: float) -> None:
        if self.observer is None:
            return
        try:
            self.observer(operation, result, time.monotonic() - started)
        except Exception:  # a broken metrics hook must never break an engine call
            log.debug("engine call observer failed", exc_info=True)


class ObservedEngine(ABC):
    """A gateway whose engine calls all run through one `EngineCalls`, `calls`.

    Its `create` is both drivers': each says how it creates once, how it finds what a create
    whose answer got lost made (by this spec's name and labels) and how it removes that.
    """

    calls: EngineCalls

    def create(self, spec: ContainerSpec) -> str:
        """Create the worker, recovering a create whose answer got lost.

        What such a create made is taken, or the create is retried once (`recover_lost_create`).
        """
        try:
            return self._create_once(spec)
        except LOST_ANSWERS as lost:
            return recover_lost_create(
                spec.name,
                lost,
                lambda: self._create_once(spec),
                lambda: self._created_for(spec),
                self.remove,
            )

    @abstractmethod
    def _create_once(self, spec: ContainerSpec) -> str: ...

    @abstractmethod
    def _created_for(self, spec: ContainerSpec) -> str | None: ...

    @abstractmethod
    def remove(self, container_id: str, *, force: bool = True) -> None: ...

    @property
    def observer(self) -> CallObserver | None:
        """Told of every engine call that runs through `calls`."""
        return self.calls.observer

    @observer.setter
    def observer(self, observer: CallObserver | None) -> None:
        self.calls.observer = observer


class DockerGateway(ObservedEngine, ImageCalls):
    """The Docker calls dockyard makes, over one API client with a timeout on every call."""

    def __init__(
        self,
        api: docker.APIClient,
        *,
        owns_clients: bool = False,
        timeout_s: float = 60.0,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        observer: CallObserver | None = None,
        event_labels: Sequence[str] = (),
    ) -> None:
        self.api = api
        self.owns_clients = owns_clients
        # Commits and image rewrites of multi-GB images: far beyond a short call's timeout.
        self.image_write_timeout_s = 1800.0
        self._timeout_s = timeout_s
        self._heartbeat_s = heartbeat_s
        self._event_labels = list(event_labels)
        self.calls = EngineCalls(observer)
        self._closed = False
        self.closing = threading.Event()  # set by close(): retries and waits stop waiting
        self._exits = ExitMonitor(self._open_events, connect_timeout_s=max(1.0, timeout_s))

    @classmethod
    def connect(
        cls,
        *,
        short_pool: int,
        wait_pool: int,
        timeout_s: float,
        environment: Mapping[str, str] | None = None,
        observer: CallObserver | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        event_labels: Sequence[str] = (),
    ) -> DockerGateway:
        """Connect to the engine named by the environment (DOCKER_HOST or the CLI context).

        The pool holds `short_pool + wait_pool` connections on every transport.
        """
        pool = short_pool + wait_pool
        try:
            client = docker.from_env(
                timeout=int(max(1, timeout_s)), max_pool_size=pool, environment=environment
            )
            api = client.api
            _size_tcp_pool(api, pool)
            api.ping()
        except _CONNECT_ERRORS as err:
            raise DockerUnavailableError(f"Docker engine unreachable: {err}") from err
        if api.base_url.startswith("http+docker://"):
            # A local socket (unix, npipe, ssh): requests' per-call lookups of proxies
            # and ~/.netrc in the environment cannot apply, yet cost a third of a call's CPU.
            api.trust_env = False
        return cls(
            api,
            owns_clients=True,
            timeout_s=timeout_s,
            heartbeat_s=heartbeat_s,
            observer=observer,
            event_labels=event_labels,
        )

    @classmethod
    def from_client(
        cls,
        client: docker.DockerClient | docker.APIClient,
        *,
        observer: CallObserver | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        event_labels: Sequence[str] = (),
    ) -> DockerGateway:
        """Use a caller's client for every call (size its pool to max_workers + launches)."""
        api = client.api if isinstance(client, docker.DockerClient) else client
        timeout = getattr(api, "timeout", None)
        return cls(
            api,
            owns_clients=False,
            timeout_s=float(timeout) if isinstance(timeout, int | float) else 60.0,
            heartbeat_s=heartbeat_s,
            observer=observer,
            event_labels=event_labels,
        )

    def close(self) -> None:
        """Stop the events reader (joined within the heartbeat) and close owned clients.

        Later calls raise `DockerUnavailableError`.
        """
        if self._closed:
            return
        self._closed = True
        self.closing.set()
        self._exits.close(join_s=self._heartbeat_s + max(1.0, self._timeout_s / 10))
        if self.owns_clients:
            self.api.close()

    def _run(self, operation: str, fn: Callable[[], T]) -> T:
        if self._closed:
            raise DockerUnavailableError(f"Docker {operation}: the gateway is closed")
        return self.calls.run(operation, fn)

    def _check(self, response: requests.Response) -> None:
        raise_for_status(response)

    def _endpoint(self, path: str) -> str:
        return f"{self.api.base_url}/v{self.api.api_version}{path}"

    # -- containers ---------------------------------------------------------------------

    def _created_for(self, spec: ContainerSpec) -> str | None:
        """The id of a container of this name, state `created`, with exactly these labels."""
        return created_container(spec.labels, lambda: self.inspect(spec.name))

    def _create_once(self, spec: ContainerSpec) -> str:
        args = docker_create_args(
            spec.settings,
            memory_bytes=spec.memory_bytes,  # unless the settings set memory_mb
            network=spec.network,
            auto_remove=spec.auto_remove,
            pids_limit=spec.pids_limit,
            no_new_privileges=spec.no_new_privileges,
        )

        def create() -> str:
            host_config = self.api.create_host_config(**args.host_config)
            created = self.api.create_container(
                image=spec.image,
                name=spec.name,
                command=list(spec.command) if spec.command is not None else None,
                # The one place secret values become plain strings: the engine needs them so.
                environment=[f"{k}={reveal(v)}" for k, v in spec.env.items()],
                labels=dict(spec.labels),
                host_config=host_config,
                detach=True,
                **args.container,  # working_dir, user
            )
            return str(created["Id"])

        container_id = self._run("create", create)
        if args.host_config.get("device_requests"):
            self._check_device_requests(container_id)
        return container_id

    def _check_device_requests(self, container_id: str) -> None:
        """Refuse a container whose engine dropped its device (GPU) requests: Podman's
        Docker API creates it without them and it would run without its GPU, unnoticed."""
        kept = (self.inspect(container_id).get("HostConfig") or {}).get("DeviceRequests")
        if kept:
            return
        self.remove(container_id, force=True)
        raise EngineError(
            "create", None, "the engine dropped the device request: it cannot give GPUs"
        )

    def open_exit_wait(self, container_id: str) -> ExitWait:
        """Register a wait for the container's next exit; call before `start`.

        Returns once the events stream is connected, so an instant exit (and auto-removal)
        right after `start` cannot slip past unseen.
        """
        return self.open_wait(container_id, "next-exit")

    def open_wait(self, container_id: str, condition: str = "not-running") -> ExitWait:
        """Register a wait that another thread can `close()`; returns once it is in place.

        `not-running` answers at once for a container that already stopped (an inspect
        after the registration), so a resumed wait cannot miss an exit that happened while
        no wait was open; a container that is gone raises the not-found error.
        """
        if self._closed:
            raise DockerUnavailableError("Docker exit wait: the gateway is closed")
        ticket = self._run("open_wait", lambda: self._exits.register(container_id))
        if condition == "next-exit" or ticket.done():
            return ticket
        try:
            info = self.inspect(container_id)
        except BaseException:
            if ticket.done() and not ticket.closed:
                return ticket  # its exit event arrived meanwhile
            ticket.close()
            raise
        state = info.get("State") or {}
        facts = exit_result_of(state)
        if state.get("Running"):
            self._exits.note_start(container_id, facts.started_at)  # for the run's duration
        else:
            self._exits.resolve(container_id, facts)
        return ticket

    def _open_events(self, since: str | None) -> ResponseEvents:
        filters: dict[str, list[str]] = {"type": ["container"], "event": ["start", "oom", "die"]}
        if self._event_labels:
            filters["label"] = list(self._event_labels)
        params = {"filters": json.dumps(filters)}
        if since is not None:
            params["since"] = since

        def connect() -> ResponseEvents:
            response = self.api.get(
                self._endpoint("/events"),
                params=params,
                stream=True,
                timeout=(self._timeout_s, self._heartbeat_s),
            )
            raise_for_status(response)
            return ResponseEvents(response)

        return self._run("events", connect)

    def wait_removed(self, container_id: str, timeout_s: float) -> None:
        self._run(
            "wait_removed",
            lambda: self.api.wait(
                container_id, timeout=max(1, round(timeout_s)), condition="removed"
            ),
        )

    def start(self, container_id: str) -> None:
        self._run("start", lambda: self.api.start(container_id))

    def inspect(self, container_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._run(
            "inspect", lambda: self.api.inspect_container(container_id)
        )
        return result

    def security_modules(self) -> list[str]:
        """The engine's security options (`docker info` SecurityOptions: `name=apparmor`,
        `name=seccomp,profile=default`, ...)."""
        info: dict[str, Any] = self._run("info", self.api.info)
        return [str(option) for option in info.get("SecurityOptions") or []]

    def logs_tail(self, container_id: str, lines: int) -> str:
        raw = self._run(
            "logs_tail",
            lambda: self.api.logs(
                container_id, stdout=True, stderr=True, tail=lines, timestamps=False
            ),
        )
        return bytes(raw).decode("utf-8", errors="replace")

    def follow_logs(self, container_id: str, after: Mapping[str, int] | None) -> AttachedOutput:
        """The container's output from its log, stamped, after `after`, until its exit."""

        def follow() -> AttachedOutput:
            url = self._endpoint(f"/containers/{container_id}/logs")
            since = min(after.values(), default=None) if after else None
            response = open_log(
                self.api, url, follow=True, since_ns=since, timeout_s=self._timeout_s
            )
            return following(response, after)

        return self._run("follow_output", follow)

    def log_mark(self, container_id: str, positions: Mapping[str, int]) -> dict[str, int]:
        """Per stream, the engine time of its line at `positions[stream]`."""

        def mark() -> dict[str, int]:
            url = self._endpoint(f"/containers/{container_id}/logs")
            response = open_log(
                self.api, url, follow=False, since_ns=None, timeout_s=self._timeout_s
            )
            return log_mark(response, positions)

        return self._run("output_mark", mark)

    def stop(self, container_id: str, grace_s: float) -> None:
        self._run("stop", lambda: self.api.stop(container_id, timeout=max(0, round(grace_s))))

    def kill(self, container_id: str, signal: str | None = None) -> None:
        """Send `signal` (SIGKILL by default)."""
        self._run("kill", lambda: self.api.kill(container_id, signal=signal))

    def remove(self, container_id: str, *, force: bool = True) -> None:
        """Remove a container, retrying briefly on engine blips (removal is idempotent).

        404 (already gone) and 409 (removal under way) are raised at once for the caller
        to judge; a container left behind by a blip would otherwise leak until a scan.
        Running out raises the last blip's error.
        """

        def remove() -> None:
            # v: its anonymous volumes go with it, as with AutoRemove (named ones stay).
            self._run(
                "remove", lambda: self.api.remove_container(container_id, force=force, v=True)
            )

        def retrying(err: BaseException, _: RetryState) -> None:
            log.info(
                "removing a container failed; retrying",
                extra={"container_id": container_id[:12], "error": str(err)},
            )

        call_with_retry(REMOVE_RETRY, remove, stop=self.closing, on_retry=retrying, raise_last=True)

    def list_containers(self, labels: Sequence[str], *, all: bool = True) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._run(
            "list_containers", lambda: self.api.containers(all=all, filters={"label": list(labels)})
        )
        return result


def _size_tcp_pool(api: docker.APIClient, pool: int) -> None:
    """docker-py sizes pools only for unix/npipe/ssh: give tcp and TLS engines one too."""
    base = str(api.base_url)
    if base.startswith(("http://", "https://")):
        api.mount(base, HTTPAdapter(pool_connections=1, pool_maxsize=pool))

"""The low-level Docker gateway: two sized API clients and the handful of calls dockyard makes.

Everything above this module speaks in container ids, plain dicts and typed errors; nothing
above it builds URLs or knows about connection pools. Short calls use a client with a read
timeout; waits use one without (a wait lasts as long as the container runs).
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import docker
import requests
from docker.errors import APIError, DockerException, NotFound

from ._errors import DockerUnavailableError
from ._registry_auth import RegistryAuth
from ._secrets import Secret, reveal

__all__ = [
    "ContainerSpec",
    "DockerGateway",
    "EngineObserver",
    "ExitWait",
    "call_result",
    "is_conflict",
    "is_missing_image",
    "is_not_found",
    "is_unreachable",
]

log = logging.getLogger("dockyard.docker")

# Errors that mean "the engine did not answer" rather than "the engine said no".
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    ConnectionError,
    TimeoutError,
)

_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (requests.exceptions.Timeout, TimeoutError)

_CONNECT_ERRORS: tuple[type[BaseException], ...] = (DockerException, *_TRANSPORT_ERRORS)

_CREATE_RETRY_PAUSE_S = 0.2
_CREATED_LOOKUP_S = 3.0  # how long a create in progress may take to become visible
_CREATED_LOOKUP_PAUSE_S = 0.1
_REMOVE_ATTEMPTS = 3
_REMOVE_RETRY_PAUSE_S = 0.2


def is_unreachable(err: BaseException) -> bool:
    """True when the engine could not be reached or dropped the connection."""
    if isinstance(err, (DockerUnavailableError, *_TRANSPORT_ERRORS)):
        return True
    return isinstance(err, APIError) and err.status_code in (502, 503, 504)


def is_not_found(err: BaseException) -> bool:
    return isinstance(err, NotFound) or (isinstance(err, APIError) and err.status_code == 404)


def is_conflict(err: BaseException) -> bool:
    return isinstance(err, APIError) and err.status_code == 409


def is_missing_image(err: BaseException) -> bool:
    """A 404 whose text says the image does not exist (not a missing container or network)."""
    if not is_not_found(err):
        return False
    text = f"{getattr(err, 'explanation', '') or ''} {err}".lower()
    return "no such image" in text


def call_result(err: BaseException | None) -> str:
    """How an engine call ended, in a few words: `ok`, `not_found`, `conflict`, ..."""
    if err is None:
        return "ok"
    if is_not_found(err):
        return "not_found"
    if is_conflict(err):
        return "conflict"
    if is_unreachable(err):
        return "unreachable"
    return "error"


EngineObserver = Callable[[str, str, float], None]
"""Told of every gateway call: `(operation, result, seconds)`; see `call_result`."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _observed(
    operation: str,
) -> Callable[
    [Callable[Concatenate[DockerGateway, _P], _R]], Callable[Concatenate[DockerGateway, _P], _R]
]:
    """Time a gateway method and tell the gateway's observer, when it has one."""

    def wrap(
        method: Callable[Concatenate[DockerGateway, _P], _R],
    ) -> Callable[Concatenate[DockerGateway, _P], _R]:
        def call(self: DockerGateway, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            observer = self.observer
            if observer is None:
                return method(self, *args, **kwargs)
            start = time.perf_counter()
            try:
                result = method(self, *args, **kwargs)
            except BaseException as err:
                _tell(observer, operation, call_result(err), time.perf_counter() - start)
                raise
            _tell(observer, operation, "ok", time.perf_counter() - start)
            return result

        functools.update_wrapper(call, method)
        return call

    return wrap


def _tell(observer: EngineObserver, operation: str, result: str, seconds: float) -> None:
    try:
        observer(operation, result, seconds)
    except Exception:  # an observer must never break an engine call
        log.debug("engine call observer failed", exc_info=True)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything one `create` call needs; built by the launcher, sent as-is."""

    image: str
    name: str
    env: Mapping[str, str | Secret] = field(repr=False)  # revealed only in `_create_once`
    labels: Mapping[str, str]
    memory_bytes: int
    network: str
    auto_remove: bool
    command: Sequence[str] | None = None
    pids_limit: int | None = None
    no_new_privileges: bool = False


class ExitWait:
    """A wait on a container's next exit, registered with the engine before it starts.

    The engine answers the request head as soon as the waiter is in place, so a container
    that exits (and is auto-removed) right after `start` can never slip past unseen.
    """

    def __init__(self, response: requests.Response) -> None:
        self._response = response
        self._closed = threading.Event()

    def result(self) -> dict[str, Any]:
        """Block until the container exits; the engine's wait body (`StatusCode`, `Error`)."""
        try:
            body: dict[str, Any] = self._response.json()
        finally:
            self._response.close()
        return body

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Drop the wait from another thread; a blocked `result()` then raises.

        Closing the response would first drain it (that is, wait for the exit), so the
        socket underneath is shut down instead, which wakes the blocked reader at once.
        """
        self._closed.set()
        sock = _socket_of(self._response)
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            log.debug("exit wait socket already closed", exc_info=True)


def _socket_of(response: requests.Response) -> socket.socket | None:
    raw: Any = getattr(response, "raw", None)
    connection = getattr(raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        return sock
    fp = getattr(getattr(raw, "_fp", None), "fp", None)
    sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


@dataclass
class DockerGateway:
    """The Docker calls dockyard makes, over a short-call client and a wait client."""

    api: docker.APIClient
    wait_api: docker.APIClient
    owns_clients: bool = False
    # Commits and image rewrites of multi-GB images: far beyond a short call's timeout.
    image_write_timeout_s: float = 1800.0
    observer: EngineObserver | None = field(default=None, compare=False)
    _closed: bool = field(default=False, init=False)

    @classmethod
    def connect(
        cls,
        *,
        short_pool: int,
        wait_pool: int,
        timeout_s: float,
        environment: Mapping[str, str] | None = None,
    ) -> DockerGateway:
        """Connect to the engine named by the environment (DOCKER_HOST or the CLI context)."""
        try:
            short = docker.from_env(
                timeout=int(max(1, timeout_s)), max_pool_size=short_pool, environment=environment
            )
            waits = docker.from_env(
                timeout=int(max(1, timeout_s)), max_pool_size=wait_pool, environment=environment
            )
            short.api.ping()
        except _CONNECT_ERRORS as err:
            raise DockerUnavailableError(f"Docker engine unreachable: {err}") from err
        for api in (short.api, waits.api):
            if api.base_url.startswith("http+docker://"):
                # A local socket (unix, npipe, ssh): requests' per-call lookups of proxies
                # and ~/.netrc in the environment cannot apply, yet cost a third of a call's CPU.
                api.trust_env = False
        return cls(api=short.api, wait_api=waits.api, owns_clients=True)

    @classmethod
    def from_client(cls, client: docker.DockerClient | docker.APIClient) -> DockerGateway:
        """Use a caller's client for every call (size its pool to max_workers + launches)."""
        api = client.api if isinstance(client, docker.DockerClient) else client
        return cls(api=api, wait_api=api, owns_clients=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.owns_clients:
            self.api.close()
            self.wait_api.close()

    # -- containers ---------------------------------------------------------------------

    @_observed("create")
    def create(self, spec: ContainerSpec) -> str:
        """Create the container; one retry when the engine's answer was lost on the way.

        A create whose connection broke may still have created the container. The retry
        then meets a 409 name conflict with it: a container in state `created` carrying
        exactly this spec's labels (its deadline label makes them unique to this launch)
        is the one asked for, and its id is the answer. Any other 409 goes to the caller
        (the launcher removes a stopped leftover of the same job). When the retry fails
        otherwise, a container the first attempt left is removed on the way out.
        """
        try:
            return self._create_once(spec)
        except _TRANSPORT_ERRORS as err:
            if isinstance(err, _TIMEOUT_ERRORS):
                raise  # the whole time budget is spent already
            log.warning(
                "create got no answer; retrying once",
                extra={"container_name": spec.name, "error": str(err)},
            )
            time.sleep(_CREATE_RETRY_PAUSE_S)  # let a create that went through finish
        try:
            return self._create_once(spec)
        except Exception as err:
            leftover = self._created_for(spec)
            if leftover is not None and is_conflict(err):
                log.info(
                    "the unanswered create went through; using its container",
                    extra={"container_name": spec.name, "container_id": leftover[:12]},
                )
                return leftover
            if leftover is not None:
                self._discard(leftover)
            raise

    def _created_for(self, spec: ContainerSpec) -> str | None:
        """The id of a not yet started container made from `spec`, if one exists.

        The engine reserves the name before the container can be inspected, so a create
        still in progress answers 409 to the retry but 404 to an inspect for a moment:
        look again for a while before concluding there is none.
        """
        deadline = time.monotonic() + _CREATED_LOOKUP_S
        while True:
            try:
                info = self.api.inspect_container(spec.name)
                break
            except Exception as err:
                transient = is_not_found(err) or is_unreachable(err)
                transient = transient or (
                    isinstance(err, APIError) and (err.status_code or 0) >= 500
                )
                if not transient or time.monotonic() >= deadline:
                    return None  # unknown: the orphan scan deals with whatever is left
                time.sleep(_CREATED_LOOKUP_PAUSE_S)
        labels = (info.get("Config") or {}).get("Labels") or {}
        state = (info.get("State") or {}).get("Status")
        if labels != dict(spec.labels) or state != "created":
            return None
        return str(info["Id"])

    def _discard(self, container_id: str) -> None:
        try:
            self.remove(container_id, force=True)
        except Exception:
            log.warning(
                "could not remove the container of a failed create",
                extra={"container_id": container_id[:12]},
            )

    def _create_once(self, spec: ContainerSpec) -> str:
        host_config = self.api.create_host_config(
            mem_limit=spec.memory_bytes,
            memswap_limit=spec.memory_bytes,  # equal to memory: no swap
            network_mode=spec.network,
            auto_remove=spec.auto_remove,
            pids_limit=spec.pids_limit,
            security_opt=["no-new-privileges:true"] if spec.no_new_privileges else None,
        )
        created = self.api.create_container(
            image=spec.image,
            name=spec.name,
            command=list(spec.command) if spec.command is not None else None,
            # The one place secret values become plain strings: the engine needs them so.
            environment=[f"{k}={reveal(v)}" for k, v in spec.env.items()],
            labels=dict(spec.labels),
            host_config=host_config,
            detach=True,
        )
        return str(created["Id"])

    def open_exit_wait(self, container_id: str) -> ExitWait:
        """Register a wait for the container's next exit; call before `start`."""
        return self.open_wait(container_id, "next-exit")

    @_observed("open_wait")
    def open_wait(self, container_id: str, condition: str = "not-running") -> ExitWait:
        """Register a wait that another thread can `close()`; returns once it is in place.

        `not-running` answers at once for a container that already stopped, so a resumed
        wait cannot miss an exit that happened while no wait was open.
        """
        raw: Any = self.wait_api  # docker-py has no public streaming wait
        url = raw._url("/containers/{0}/wait", container_id)
        response = raw._post(url, params={"condition": condition}, stream=True, timeout=None)
        try:
            raw._raise_for_status(response)
        except BaseException:
            response.close()
            raise
        return ExitWait(response)

    @_observed("wait_removed")
    def wait_removed(self, container_id: str, timeout_s: float) -> None:
        self.api.wait(container_id, timeout=max(1, round(timeout_s)), condition="removed")

    @_observed("start")
    def start(self, container_id: str) -> None:
        self.api.start(container_id)

    @_observed("inspect")
    def inspect(self, container_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api.inspect_container(container_id)
        return result

    @_observed("logs_tail")
    def logs_tail(self, container_id: str, lines: int) -> str:
        raw = self.api.logs(container_id, stdout=True, stderr=True, tail=lines, timestamps=False)
        return bytes(raw).decode("utf-8", errors="replace")

    @_observed("stop")
    def stop(self, container_id: str, grace_s: float) -> None:
        self.api.stop(container_id, timeout=max(0, round(grace_s)))

    @_observed("kill")
    def kill(self, container_id: str) -> None:
        self.api.kill(container_id)

    @_observed("remove")
    def remove(self, container_id: str, *, force: bool = True) -> None:
        """Remove a container, retrying briefly on engine errors (removal is idempotent).

        404 (already gone) and 409 (removal under way) are raised at once for the caller
        to judge; a container left behind by a blip would otherwise leak until a scan.
        """
        for attempt in range(_REMOVE_ATTEMPTS):
            try:
                self.api.remove_container(container_id, force=force)
                return
            except Exception as err:
                transient = is_unreachable(err) or (
                    isinstance(err, APIError) and (err.status_code or 0) >= 500
                )
                if not transient or attempt + 1 >= _REMOVE_ATTEMPTS:
                    raise
                log.info(
                    "removing a container failed; retrying",
                    extra={"container_id": container_id[:12], "error": str(err)},
                )
                time.sleep(_REMOVE_RETRY_PAUSE_S * (attempt + 1))

    @_observed("list_containers")
    def list_containers(self, labels: Sequence[str], *, all: bool = True) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api.containers(all=all, filters={"label": list(labels)})
        return result

    @_observed("commit")
    def commit(self, container_id: str, repository: str, tag: str, changes: Sequence[str]) -> str:
        """`docker commit` with the long image-write timeout (docker-py's has none of its own)."""
        raw: Any = self.api  # untyped request helpers of docker-py
        params = {
            "container": container_id,
            "repo": repository or None,
            "tag": tag or None,
            "changes": list(changes) or None,
            "pause": True,
        }
        response = raw._post_json(
            raw._url("/commit"), data={}, params=params, timeout=self.image_write_timeout_s
        )
        result: dict[str, Any] = raw._result(response, json=True)
        return str(result["Id"])

    # -- images -------------------------------------------------------------------------

    @_observed("image_inspect")
    def image_inspect(self, image: str) -> dict[str, Any]:
        raw: Any = self.api  # untyped in the stubs
        result: dict[str, Any] = raw.inspect_image(image)
        return result

    @_observed("list_images")
    def list_images(self, name_filter: str | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api.images(all=False)
        if name_filter is None:
            return result
        return [
            image
            for image in result
            if any(tag.startswith(name_filter) for tag in image.get("RepoTags") or [])
        ]

    @_observed("image_history")
    def image_history(self, image: str) -> list[dict[str, Any]]:
        raw: Any = self.api  # untyped in the stubs
        return list(raw.history(image))

    @_observed("load_image_archive")
    def load_image_archive(self, archive: bytes, reference: str) -> None:
        """`docker load` an image archive, raising on the stream's own error lines."""
        for _ in self._progress_stream(
            f"load of {reference}",
            "/images/load",
            data=archive,
            params={"quiet": "1"},
            timeout=self.image_write_timeout_s,
        ):
            pass

    @_observed("remove_image")
    def remove_image(self, image: str) -> None:
        self.api.remove_image(image, force=False)

    @_observed("pull")
    def pull(self, image: str, timeout_s: float, auth_config: RegistryAuth | None = None) -> None:
        """Pull an image within `timeout_s`, raising on the stream's own error lines.

        docker-py's `pull` has no timeout and does not raise on `{"error": ...}` lines.
        `auth_config` goes to the engine as `X-Registry-Auth`. With it, a failure is
        raised again as a fresh error without the frames and request that held the
        encoded credentials (Sentry sends frame locals).
        """
        repository, tag = _split_reference(image)
        deadline = time.monotonic() + timeout_s
        params = {"fromImage": repository, "tag": tag}
        try:
            for _ in self._progress_stream(
                f"pull of {image}",
                "/images/create",
                params=params,
                timeout=timeout_s,
                headers={"X-Registry-Auth": auth_config.header()} if auth_config else None,
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pull of {image} exceeded {timeout_s:g}s")
        except Exception as err:
            if auth_config is None:
                raise
            raise _without_request(err, f"pull of {image} failed") from None

    def _progress_stream(self, what: str, path: str, **request: Any) -> Iterator[dict[str, Any]]:
        """POST `path` and yield its JSON progress lines, raising on their error lines.

        docker-py's own `pull`/`load_image` hide these errors (and `pull` has no timeout).
        """
        raw: Any = self.api  # untyped request helpers of docker-py
        response = raw._post(raw._url(path), stream=True, **request)
        try:
            raw._raise_for_status(response)
            for line in raw._stream_helper(response, decode=True):
                if "error" in line or "errorDetail" in line:
                    detail = line.get("errorDetail") or {}
                    message = line.get("error") or detail.get("message")
                    raise APIError(f"{what} failed: {message}")
                yield line
        finally:
            response.close()


def _without_request(err: Exception, what: str) -> Exception:
    """The same failure, as a new error holding only its message (no response or request)."""
    detail = getattr(err, "explanation", None) or str(err)
    message = detail if str(detail).startswith(what) else f"{what}: {detail}"
    if isinstance(err, APIError):
        return APIError(message)
    if is_unreachable(err):
        return DockerUnavailableError(message)
    if isinstance(err, TimeoutError):
        return TimeoutError(message)
    return RuntimeError(message)


def _split_reference(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image, None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, "latest"

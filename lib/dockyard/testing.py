"""A fake Docker engine for tests that need no Docker: pass a `FakeDockerAPI` as `docker_client`.

The fake stands in for docker-py's low-level `APIClient`, so the real gateway, launcher,
exit handling and timers run against an engine whose behaviour and failures the test
chooses::

    from dockyard import ContainerManager, RouterConfig, WorkerJob
    from dockyard.testing import FakeDockerAPI, api_error

    api = FakeDockerAPI(images={"worker:1"})
    config = RouterConfig(worker_image="worker:1", router_instance_id="test")
    with ContainerManager(config, docker_client=api) as manager:
        worker = manager.spawn_worker(WorkerJob("job-1", "build", {}))
        api.exit(worker.container_id, 0)  # the container exits
        assert manager.wait_for_worker("job-1", timeout=5).status == "succeeded"

        api.failures["create_container"] = [api_error(500, "disk full")]  # scripted
        manager.spawn_worker(WorkerJob("job-2", "build", {}))  # raises WorkerSpawnError

Exits reach dockyard as the real engine sends them: as `die` events on the events stream
(`GET /events`); `break_event_streams()` breaks that stream the way an engine restart does.
`failures[method]` holds exceptions raised, in order, by the next calls of `method` (the
APIClient method name, or `"events"` for connecting the events stream); `calls` records
every call as `(method, detail)`. Images live in `image_names`; a pull adds the image unless
`pull_error` is set. A commit records one more layer than its container's image and that
image as its `Parent`; removing an image that is another's `Parent` is refused with the
engine's 409 "image has dependent child images"; an export piped into an import
(`POST /images/create?fromSrc=-`) makes a one-layer image with no parent whose config is
what its `changes` say. `RecordingReporter` collects what dockyard reports instead of Sentry.

A level up, `FakeDriver` fakes the engine at the driver interface, passed as `driver=`:
typed answers and errors, and the capabilities the test picks (`DOCKER_LIKE`, the default,
or `SWARM_LIKE`: no auto-removal, images or snapshots)::

    driver = FakeDriver(capabilities=SWARM_LIKE)
    with ContainerManager(config, driver=driver) as manager:
        worker = manager.spawn_worker(WorkerJob("job-1", "build", {}))
        driver.exit(worker.container_id, 0)
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import docker.errors
import requests
import urllib3

from ._fake_driver import DOCKER_LIKE, SWARM_LIKE, FakeDriver, FakeImageStore
from ._sentry import Report, Reporter

__all__ = [
    "DEFAULT_IMAGE",
    "DOCKER_LIKE",
    "SWARM_LIKE",
    "FakeContainer",
    "FakeDockerAPI",
    "FakeDriver",
    "FakeEventStream",
    "FakeImageStore",
    "RecordingReporter",
    "Report",
    "api_error",
    "not_found",
]

DEFAULT_IMAGE = "registry.example/cascade/worker:1"


def api_error(
    status: int, explanation: str, cls: type[docker.errors.APIError] = docker.errors.APIError
) -> docker.errors.APIError:
    """A docker-py error as the engine's answer `status` with `explanation` produces it."""
    response = requests.Response()
    response.status_code = status
    return cls(f"{status} Client Error", response=response, explanation=explanation)


def not_found(what: str) -> docker.errors.APIError:
    """The engine's 404 for a missing container."""
    return api_error(404, f"No such container: {what}", docker.errors.NotFound)


_END = object()


class _Raw:
    """The `response.raw` of a fake stream: `shutdown()` wakes a blocked reader."""

    def __init__(self, stream: FakeEventStream) -> None:
        self._stream = stream

    def shutdown(self) -> None:
        self._stream.close()


class FakeEventStream:
    """A connected `GET /events` answer: delivers the fake engine's events as JSON lines."""

    def __init__(self, labels: list[str], read_timeout: float | None) -> None:
        self.status_code = 200
        self.headers = {"Date": formatdate(time.time(), usegmt=True)}
        self.raw = _Raw(self)
        self.closed = False
        self._labels = labels
        self._read_timeout = read_timeout
        self._queue: queue.Queue[object] = queue.Queue()

    def wants(self, event: Mapping[str, Any]) -> bool:
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        for label in self._labels:
            key, has_value, value = label.partition("=")
            if key not in attributes or (has_value and attributes[key] != value):
                return False
        return True

    def push(self, event: Mapping[str, Any]) -> None:
        self._queue.put(json.dumps(event).encode())

    def break_stream(self) -> None:
        """The engine side drops the connection (daemon restart, proxy hiccup)."""
        self._queue.put(requests.exceptions.ChunkedEncodingError("events stream broken"))

    def raise_for_status(self) -> None:
        return None

    def iter_lines(self) -> Iterator[bytes]:
        while True:
            try:
                item = self._queue.get(timeout=self._read_timeout)
            except queue.Empty:
                idle = urllib3.exceptions.ReadTimeoutError(None, "/events", "Read timed out.")  # type: ignore[arg-type]
                raise requests.exceptions.ConnectionError(idle) from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put(_END)


@dataclass
class _FakeResponse:
    """A finished streaming answer (pull and load progress)."""

    lines: list[dict[str, Any]]
    status_code: int = 200
    closed: bool = False

    def raise_for_status(self) -> None:
        return None

    def iter_lines(self) -> Iterator[bytes]:
        for line in self.lines:
            yield json.dumps(line).encode()

    def close(self) -> None:
        self.closed = True


@dataclass
class _FakeExport:
    """A container export: a byte stream."""

    chunks: list[bytes]
    status_code: int = 200

    def raise_for_status(self) -> None:
        return None

    def iter_content(self, chunk_size: int = 1) -> Iterator[bytes]:
        yield from self.chunks

    def close(self) -> None:
        return None


def _unquoted(word: str) -> str:
    """A double-quoted Dockerfile word read back (the form `_flatten` writes)."""
    if not word.startswith('"'):
        return word
    out, chars = [], iter(word[1:-1])
    for char in chars:
        out.append(next(chars, "") if char == "\\" else char)
    return "".join(out)


def _apply_change(config: dict[str, Any], change: str) -> None:
    """One import `changes` instruction applied to an image config (the forms dockyard sends)."""
    instruction, _, rest = change.partition(" ")
    if instruction == "ENV":
        key, _, value = rest.partition("=")
        config["Env"].append(f"{key}={_unquoted(value)}")
    elif instruction == "LABEL":
        key, _, value = rest.partition("=")
        config["Labels"][_unquoted(key)] = _unquoted(value)
    elif instruction in ("CMD", "ENTRYPOINT"):
        config[instruction.title() if instruction == "CMD" else "Entrypoint"] = json.loads(rest)
    elif instruction in ("WORKDIR", "USER"):
        config["WorkingDir" if instruction == "WORKDIR" else "User"] = _unquoted(rest)
    else:
        raise api_error(400, f"{instruction.lower()} is not a valid change command")


@dataclass
class _FakeJSON:
    """A finished JSON answer."""

    body: dict[str, Any]
    status_code: int = 200

    def raise_for_status(self) -> None:
        return None

    def json(self) -> dict[str, Any]:
        return self.body


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


class FakeDockerAPI:
    """Just enough of docker-py's `APIClient` for dockyard, with scripted failures."""

    base_url = "http+docker://fake"
    api_version = "1.41"
    timeout = 60

    def __init__(self, images: set[str] | None = None) -> None:
        self.image_names: set[str] = {DEFAULT_IMAGE} if images is None else set(images)
        self.image_info: dict[str, dict[str, Any]] = {}  # committed images, by id and name
        self.containers_by_id: dict[str, FakeContainer] = {}
        self.failures: dict[str, list[BaseException]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.pull_error: str | None = None
        self.exit_on_start: int | None = None  # exit code the next started containers exit with
        self.stop_exits = True  # `stop` makes the container exit (137)
        self.before_create: Callable[[], None] | None = None
        self.before_stop: Callable[[str], None] | None = None
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

    def attach_socket(self, container_id: str, params: Any = None, ws: bool = False) -> Any:
        self._record("attach", container_id)
        self._fail("attach")
        container = self._find(container_id)
        engine_end, client_end = socket.socketpair()
        with self.lock:
            container.attached.append(engine_end)
        return client_end

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

    # -- the HTTP surface (requests.Session) ---------------------------------------------

    def get(self, url: str, params: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """`GET /events`: a stream of the engine's container events; `GET
        /containers/{id}/export`: the container's filesystem (a few bytes)."""
        if url.endswith("/export"):
            container_id = url.rsplit("/", 2)[-2]
            self._record("export", container_id)
            self._fail("export")
            self._find(container_id)
            return _FakeExport([b"fake-tar:", container_id.encode()])
        if not url.endswith("/events"):
            raise AssertionError(f"unexpected GET {url}")
        params = dict(params or {})
        self._record("events", params.get("since"))
        self._fail("events")
        filters = json.loads(params.get("filters") or "{}")
        timeout = kwargs.get("timeout")
        read_timeout = timeout[1] if isinstance(timeout, tuple) else timeout
        stream = FakeEventStream(list(filters.get("label") or []), read_timeout)
        since = params.get("since")
        with self.lock:
            if since is not None:
                seconds, _, nanos = str(since).partition(".")
                since_ns = int(seconds) * 1_000_000_000 + int(nanos.ljust(9, "0") or 0)
                for event in self._events:
                    if event["timeNano"] >= since_ns and stream.wants(event):
                        stream.push(event)
            self.streams.append(stream)
        return stream

    def post(self, url: str, params: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """`POST /images/create` (pull), `POST /commit` and `POST /images/load`."""
        params = dict(params or {})
        if url.endswith("/images/create") and params.get("fromSrc") == "-":
            return self._import(list(params.get("changes") or []), kwargs.get("data") or [])
        if url.endswith("/images/create"):
            image = f"{params['fromImage']}:{params['tag']}" if params.get("tag") else None
            image = image or params["fromImage"]
            self._record("pull", image)
            self._fail("pull")
            if self.pull_error is not None:
                return _FakeResponse([{"status": "Pulling"}, {"error": self.pull_error}])
            with self.lock:
                self.image_names.add(image)
            return _FakeResponse([{"status": "Pulling"}, {"status": "Downloaded"}])
        if url.endswith("/commit"):
            changes = params.get("changes") or []
            committed = self.commit(
                str(params["container"]),
                repository=params.get("repo"),
                tag=params.get("tag"),
                changes=changes,
            )
            return _FakeJSON(committed)
        if url.endswith("/images/load"):
            self._record("load_image")
            self._fail("load_image")
            return _FakeResponse([{"stream": "Loaded"}])
        raise AssertionError(f"unexpected POST {url}")

    def _import(self, changes: list[str], data: Any) -> Any:
        self._record("import", changes)
        for _ in data:  # read the body, as the engine does
            pass
        self._fail("import")
        config: dict[str, Any] = {"Env": [], "Labels": {}}
        for change in changes:
            _apply_change(config, change)
        image_id = "sha256:" + self._new_id()
        info = {
            "Id": image_id,
            "Parent": "",
            "Config": config,
            "RootFS": {"Type": "layers", "Layers": ["sha256:" + self._new_id()]},
            "Size": 2048,
        }
        with self.lock:
            self.image_info[image_id] = info
            self.image_names.add(image_id)
        return _FakeResponse([{"status": image_id}])

    def close(self) -> None:
        self._record("close")

    # -- the APIClient surface ----------------------------------------------------------

    def ping(self) -> bool:
        return True

    def create_host_config(self, **kwargs: Any) -> dict[str, Any]:
        return dict(kwargs)

    def create_container(  # noqa: PLR0917 - docker-py's own signature
        self,
        image: str,
        name: str,
        command: list[str] | None = None,
        environment: list[str] | None = None,
        labels: dict[str, str] | None = None,
        host_config: dict[str, Any] | None = None,
        detach: bool = False,
        working_dir: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        self._record("create_container", {"image": image, "name": name, "env": environment})
        if self.before_create is not None:
            self.before_create()
        self._fail("create_container")
        with self.lock:
            if image not in self.image_names:
                raise api_error(404, f"No such image: {image}", docker.errors.ImageNotFound)
            if any(c.name == name for c in self.containers_by_id.values()):
                raise api_error(409, f'Conflict. The container name "/{name}" is already in use')
            container = FakeContainer(
                id=self._new_id(),
                name=name,
                image=image,
                labels=dict(labels or {}),
                env=list(environment or []),
                host_config=dict(host_config or {}),
                command=command,
                config={"WorkingDir": working_dir or "", "User": user or ""},
            )
            self.containers_by_id[container.id] = container
        return {"Id": container.id, "Warnings": []}

    def start(self, container_id: str) -> None:
        self._record("start", container_id)
        self._fail("start")
        container = self._find(container_id)
        with self.lock:
            container.status = "running"
        self._emit(container, "start", {})
        if self.exit_on_start is not None:
            self.exit(container_id, self.exit_on_start)

    def inspect_container(self, ref: str) -> dict[str, Any]:
        self._record("inspect_container", ref)
        self._fail("inspect_container")
        container = self._find(ref)
        with self.lock:
            return {
                "Id": container.id,
                "Name": "/" + container.name,
                "Config": {
                    "Image": container.image,
                    "Labels": dict(container.labels),
                    "Env": list(container.env),
                    **container.config,
                },
                "State": {
                    "Status": container.status,
                    "Running": container.status == "running",
                    "Paused": False,
                    "Restarting": False,
                    "OOMKilled": container.oom_killed,
                    "Dead": False,
                    "ExitCode": container.exit_code,
                    "Error": "",
                    "StartedAt": container.started_at,
                    "FinishedAt": container.finished_at
                    if container.status == "exited"
                    else "0001-01-01T00:00:00Z",
                },
                "HostConfig": dict(container.host_config),
            }

    def logs(self, container_id: str, **kwargs: Any) -> bytes:
        self._record("logs", container_id)
        self._fail("logs")
        return self._find(container_id).output

    def stop(self, container_id: str, timeout: int | None = None) -> None:
        self._record("stop", (container_id, timeout))
        if self.before_stop is not None:
            self.before_stop(container_id)
        self._fail("stop")
        self._find(container_id)
        if self.stop_exits:
            self.exit(container_id, 137)

    def kill(self, container_id: str) -> None:
        self._record("kill", container_id)
        self._fail("kill")
        self.exit(container_id, 137)

    def remove_container(self, container_id: str, force: bool = False, v: bool = False) -> None:
        self._record("remove_container", container_id)
        self._fail("remove_container")
        container = self._find(container_id)
        with self.lock:
            del self.containers_by_id[container.id]
        self._end_output(container)

    def wait(self, container_id: str, timeout: Any = None, condition: str | None = None) -> Any:
        self._record("blocking_wait", condition)
        self._find(container_id)
        return {"StatusCode": 0}

    def containers(self, all: bool = False, filters: Any = None) -> list[dict[str, Any]]:
        self._record("containers", filters)
        self._fail("containers")
        wanted = list((filters or {}).get("label") or [])
        with self.lock:
            found = list(self.containers_by_id.values())
        result = []
        for container in found:
            if not all and container.status != "running":
                continue
            labels = container.labels
            if any(
                label.partition("=")[0] not in labels
                or ("=" in label and labels[label.partition("=")[0]] != label.partition("=")[2])
                for label in wanted
            ):
                continue
            result.append(
                {
                    "Id": container.id,
                    "Names": ["/" + container.name],
                    "Labels": dict(labels),
                    "State": container.status,
                    "Created": int(time.time()),
                }
            )
        return result

    # -- images ---------------------------------------------------------------------------

    def commit(
        self, container: str, repository: str | None = None, tag: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        self._record("commit", container)
        self._fail("commit")
        source = self._find(container)
        env = source.env_map()
        labels = dict(source.labels)
        with self.lock:
            base = self.image_info.get(source.image) or {"Id": source.image}
        for change in kwargs.get("changes") or []:
            if str(change).startswith("LABEL "):
                key, _, value = str(change).removeprefix("LABEL ").partition("=")
                labels[json.loads(key)] = json.loads(value)
            else:
                key, _, value = str(change).removeprefix("ENV ").partition("=")
                env[key] = value
        image_id = "sha256:" + self._new_id()
        layers = list((base.get("RootFS") or {}).get("Layers") or ["sha256:base"])
        info: dict[str, Any] = {
            "Id": image_id,
            "Parent": base["Id"],
            "Config": {"Env": [f"{k}={v}" for k, v in env.items()], "Labels": labels},
            "RootFS": {"Type": "layers", "Layers": [*layers, "sha256:" + self._new_id()]},
            "Size": 1024,
        }
        with self.lock:
            self.image_info[image_id] = info
            self.image_names.add(image_id)
            if repository:
                self.image_info[f"{repository}:{tag or 'latest'}"] = info
                self.image_names.add(f"{repository}:{tag or 'latest'}")
        return {"Id": image_id}

    def tag(self, image: str, repository: str, tag: str | None = None, force: bool = False) -> bool:
        self._record("tag", (image, repository, tag))
        self._fail("tag")
        name = f"{repository}:{tag or 'latest'}"
        with self.lock:
            if image not in self.image_names:
                raise api_error(404, f"No such image: {image}", docker.errors.ImageNotFound)
            self.image_names.add(name)
            self.image_info[name] = self.image_info.get(image, {"Id": image})
        return True

    def inspect_image(self, image: str) -> dict[str, Any]:
        self._record("inspect_image", image)
        self._fail("inspect_image")
        with self.lock:
            if image not in self.image_names:
                raise api_error(404, f"No such image: {image}", docker.errors.ImageNotFound)
            info = dict(self.image_info.get(image, {"Id": image, "Config": {}}))
            if image in self.image_info:
                info["RepoTags"] = [
                    name for name, other in self.image_info.items()
                    if not name.startswith("sha256:") and other.get("Id") == info.get("Id")
                ]  # fmt: skip
            return info

    def images(self, all: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
        self._record("images")
        with self.lock:
            return [
                {
                    "Id": info.get("Id", name),
                    "RepoTags": [name],
                    "Created": 0,
                    "Size": 0,
                    "Labels": (info.get("Config") or {}).get("Labels") or {},
                }
                for name, info in self.image_info.items()
                if not name.startswith("sha256:")
            ]

    def remove_image(self, image: str, force: bool = False) -> None:
        self._record("remove_image", image)
        self._fail("remove_image")
        with self.lock:
            image_id = self.image_info.get(image, {}).get("Id", image)
            names = [n for n, i in self.image_info.items() if i.get("Id") == image_id]
            tags = [n for n in names if not n.startswith("sha256:")]
            last = image.startswith("sha256:") or tags == [image]
            children = [
                n for n, i in self.image_info.items() if n.startswith("sha256:")
                and i.get("Parent") == image_id
            ]  # fmt: skip
            if last and children and not image.startswith("sha256:"):
                # The last name of a parent: the engine only untags it.
                self.image_names.discard(image)
                self.image_info.pop(image, None)
                return
            if last and children:
                raise api_error(
                    409,
                    f"conflict: unable to delete {image_id[7:19]} (cannot be forced) - image "
                    "has dependent child images",
                )
            self.image_names.discard(image)
            self.image_info.pop(image, None)
            if last:  # the image goes with its last name, as on the engine
                for name in names:
                    self.image_names.discard(name)
                    self.image_info.pop(name, None)

    def history(self, image: str) -> list[dict[str, Any]]:
        return []


@dataclass
class RecordingReporter(Reporter):
    """A `Reporter` that keeps every report (pass it as `ContainerManager(reporter=...)`)."""

    reports: list[Report] = field(default_factory=list)

    def _deliver(self, report: Report) -> None:
        self.reports.append(report)

    def sources(self) -> list[str]:
        """The `source` tag of every report, in order."""
        return [r.source for r in self.reports]

    def of(self, source: str) -> list[Report]:
        """The reports with this `source` tag."""
        return [r for r in self.reports if r.source == source]

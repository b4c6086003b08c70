"""The fake engine's docker-py surface: `FakeDockerAPI`, what dockyard's Docker client calls.

The HTTP calls the client makes itself (events, pull, commit, load, import, export) and the
`APIClient` container calls, on the fake engine's state (see `dockyard.testing`).
"""

from __future__ import annotations

import json
import socket
import time
from typing import TYPE_CHECKING, Any

from ._fake_answers import (
    FakeEventStream,
    FakeExport,
    FakeJSON,
    FakeResponse,
    api_error,
    labels_match,
    no_such_image,
)
from ._fake_engine import FakeContainer
from ._fake_images import FakeImageCalls

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["FakeDockerAPI"]


class FakeDockerAPI(FakeImageCalls):
    """Just enough of docker-py's `APIClient` for dockyard, with scripted failures."""

    base_url = "http+docker://fake"
    api_version = "1.41"
    timeout = 60

    # -- the HTTP surface (requests.Session) ---------------------------------------------

    def get(self, url: str, params: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """`GET /events`: a stream of the engine's container events; `GET
        /containers/{id}/export`: the container's filesystem (a few bytes); `GET /_ping`:
        the engine's headers (Podman's name it)."""
        if url.endswith("/_ping"):
            self._record("ping")
            self._fail("ping")
            headers = {"Api-Version": self.api_version}
            if self.podman:
                headers["Libpod-Api-Version"] = "5.8.6"
            return FakeResponse([], headers=headers)
        if url.endswith("/export"):
            container_id = url.rsplit("/", 2)[-2]
            self._record("export", container_id)
            self._fail("export")
            self._find(container_id)
            return FakeExport([b"fake-tar:", container_id.encode()])
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
                return FakeResponse([{"status": "Pulling"}, {"error": self.pull_error}])
            with self.lock:
                self.image_names.add(image)
            return FakeResponse([{"status": "Pulling"}, {"status": "Downloaded"}])
        if url.endswith("/commit"):
            changes = params.get("changes") or []
            committed = self.commit(
                str(params["container"]),
                repository=params.get("repo"),
                tag=params.get("tag"),
                changes=changes,
            )
            return FakeJSON(committed)
        if url.endswith("/images/load"):
            self._record("load_image")
            self._fail("load_image")
            return FakeResponse([{"stream": "Loaded"}])
        raise AssertionError(f"unexpected POST {url}")

    def close(self) -> None:
        self._record("close")

    # -- the APIClient surface ----------------------------------------------------------

    def ping(self) -> bool:
        return True

    def info(self) -> dict[str, Any]:
        self._record("info")
        self._fail("info")
        return {"SecurityOptions": list(self.security_options)}

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
                raise no_such_image(image)
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

    def attach_socket(self, container_id: str, params: Any = None, ws: bool = False) -> Any:
        self._record("attach", container_id)
        self._fail("attach")
        container = self._find(container_id)
        engine_end, client_end = socket.socketpair()
        with self.lock:
            container.attached.append(engine_end)
        return client_end

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

    def kill(self, container_id: str, signal: str | int | None = None) -> None:
        """SIGKILL (no signal) is recorded as `kill`; another signal as `signal`, with it."""
        if signal not in (None, "SIGKILL", "KILL", 9, "9"):
            self._record("signal", (container_id, signal))
            self._fail("signal")
            if self._find(container_id).status != "running":
                raise api_error(409, f"Container {container_id} is not running")
            if self.signal_exits:
                self.exit(container_id, 143)
            return
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
        self._fail("blocking_wait")
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
            if not labels_match(wanted, labels):
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

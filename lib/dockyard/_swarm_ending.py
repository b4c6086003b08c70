"""Ending a swarm worker: stop, kill and remove a job service and its task containers.

A mixin of `SwarmDriver` (as the Docker client's image calls are of the client): the
engine's quirks with job services (moby#44312, moby#42789) are handled here, each verb
under the Swarm driver's one call point.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import requests
from docker.errors import create_api_error_from_http_exception

from ._docker import REMOVE_RETRY, DockerGateway
from ._errors import (
    DockerUnavailableError,
    DockyardError,
    EngineConflictError,
    EngineNotFoundError,
    EngineServerError,
    RetriesExhaustedError,
    StillRunningError,
)
from ._retry import RetryPolicy, call_with_retry
from ._swarm_tasks import TERMINAL, TaskPoller, latest_task, task_state

if TYPE_CHECKING:
    from collections.abc import Callable

    import docker

__all__ = ["SWARM_SERVICE_LABEL", "ServiceEnding", "container_of", "is_container_id"]

T = TypeVar("T")

SWARM_SERVICE_LABEL = "com.docker.swarm.service.id"  # the engine's label on task containers
_STOP_MARGIN_S = 10.0
_STOP_POLL_S = 0.05
# "update out of sequence": the service changed since it was read; read it again, retry.
_UPDATE_RETRY = RetryPolicy(
    retry_on=(EngineServerError, EngineConflictError, DockerUnavailableError),
    attempts=2,
    first_delay_s=_STOP_POLL_S,
)
# Waiting for a stopped task to end: a poll every 50 ms (the window is the caller's).
_TASK_END_POLL = RetryPolicy(
    retry_on=(StillRunningError, DockyardError),
    first_delay_s=_STOP_POLL_S,
    max_delay_s=_STOP_POLL_S,
)
_NOWHERE = "node.id==dockyard-stopped"  # a placement no node satisfies (ids are random)


class ServiceEnding:
    """`stop`, `kill`, `remove` and `wait_removed` of a job service."""

    api: docker.APIClient
    _raw: Any
    engine: DockerGateway
    node_id: str
    poller: TaskPoller

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        raise NotImplementedError

    def _service_tasks(self, service_id: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def stop(self, container_id: str, grace_s: float) -> None:
        """Stop the task with the stop grace (SIGTERM, then SIGKILL) and wait for that.

        A task on this node: its container is stopped directly; the task ends `failed`
        with the exit code, and the exit handling inspects and removes the service. A task
        on another node: engine 20.10 leaves the running task of a removed job service
        running (moby#44312), so the service is first updated to a placement no node
        satisfies (the engine shuts the task down with the service's stop grace and starts
        no replacement), then removed once the task ended (or after the grace plus a
        margin); its exit code is known only when the engine kept the task's record.
        """
        try:
            service = self._call("service_inspect", lambda: self._raw.inspect_service(container_id))
        except EngineNotFoundError as err:
            self._stop_stray(container_id, grace_s, err)
            return
        task = latest_task(self._service_tasks(container_id))
        local = (
            container_of(task) if task is not None and task.get("NodeID") == self.node_id else None
        )
        if local is not None and task_state(task) not in TERMINAL:
            # On this node: stop the container itself (SIGTERM, SIGKILL after the grace).
            # The task then ends `failed` with its exit code and keeps its container for
            # the exit's inspect; the exit handling removes the service afterwards.
            self.engine.stop(local, grace_s)
            return
        if task is not None and task_state(task) not in TERMINAL:
            self._unplace_current(container_id, service)
            ended = self._await_task_end(str(task["ID"]), grace_s + _STOP_MARGIN_S)
            task = ended if ended is not None else task
        self.remove(container_id, force=True)
        self.poller.ended(container_id, task)

    def _unplace_current(self, service_id: str, service: dict[str, Any]) -> None:
        """`_unplace`, reading the service again before each retry (`_UPDATE_RETRY`)."""
        current = [service]

        def unplace() -> None:
            self._unplace(current[0])

        def read_again(_: BaseException, __: object) -> None:
            current[0] = self._call(
                "service_inspect", lambda: self._raw.inspect_service(service_id)
            )

        call_with_retry(_UPDATE_RETRY, unplace, on_retry=read_again, raise_last=True)

    def _unplace(self, service: dict[str, Any]) -> None:
        """Update the service to a placement no node satisfies (its own spec otherwise).

        The spec goes back exactly as read: docker-py's `update_service` adds a null
        `UpdateConfig`, which the engine refuses for jobs.
        """
        spec = dict(service.get("Spec") or {})
        template = dict(spec.get("TaskTemplate") or {})
        placement = dict(template.get("Placement") or {})
        constraints = list(placement.get("Constraints") or [])
        if _NOWHERE not in constraints:
            constraints.append(_NOWHERE)
        placement["Constraints"] = constraints
        template["Placement"] = placement
        spec["TaskTemplate"] = template
        version = int((service.get("Version") or {}).get("Index") or 0)
        api = self.api
        url = f"{api.base_url}/v{api.api_version}/services/{service['ID']}/update"

        def update() -> None:
            response = api.post(url, params={"version": version}, json=spec, timeout=api.timeout)
            try:
                response.raise_for_status()
            except requests.exceptions.HTTPError as err:
                create_api_error_from_http_exception(err)  # raises docker-py's typed error
            finally:
                response.close()

        self._call("service_update", update)

    def _await_task_end(self, task_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The task's state once it ended (or is gone), polled for up to `timeout_s`;
        the last state seen when it did not end in time."""
        last: list[dict[str, Any] | None] = [None]

        def ended() -> dict[str, Any] | None:
            found = self._call("task_list", lambda: self._raw.tasks(filters={"id": [task_id]}))
            if not found:
                return last[0]
            last[0] = found[0]
            if task_state(found[0]) not in TERMINAL:
                raise StillRunningError(task_id)
            return last[0]

        try:
            return call_with_retry(replace(_TASK_END_POLL, window_s=timeout_s), ended)
        except RetriesExhaustedError:
            return last[0]

    def kill(self, container_id: str) -> None:
        """Remove the service and force-remove its task containers on this node."""
        self.remove(container_id, force=True)

    def remove(self, container_id: str, *, force: bool = True) -> None:
        """Remove the service and its task containers on this node (idempotent).

        Engine 20.10 keeps a removed job service's tasks and their containers (moby#42789):
        the containers on this node are removed here. Raises not-found only when neither
        the service nor a container of it was there. Blips are retried (`REMOVE_RETRY`).
        """
        missing: EngineNotFoundError | None = None
        try:
            call_with_retry(
                REMOVE_RETRY,
                lambda: self._call(
                    "service_remove", lambda: self._raw.remove_service(container_id)
                ),
                raise_last=True,
            )
        except EngineNotFoundError as err:
            missing = err
        self.poller.gone(container_id)
        removed = call_with_retry(
            REMOVE_RETRY, lambda: self._remove_local_containers(container_id), raise_last=True
        )
        if missing is not None and not removed:
            if not is_container_id(container_id):
                raise missing
            try:
                self.engine.remove(container_id, force=True)  # a stray task container?
            except EngineNotFoundError:
                raise missing from None

    def _stop_stray(self, container_id: str, grace_s: float, missing: BaseException) -> None:
        """No service of that id: stop a stray task container of that id, if there is one."""
        self.poller.gone(container_id)
        if not is_container_id(container_id):
            raise missing
        try:
            self.engine.stop(container_id, grace_s)
        except EngineNotFoundError:
            raise missing from None

    def _remove_local_containers(self, service_id: str) -> int:
        found = self.engine.list_containers([f"{SWARM_SERVICE_LABEL}={service_id}"], all=True)
        for container in found:
            # Gone already, or the engine is removing it.
            with contextlib.suppress(EngineNotFoundError, EngineConflictError):
                self.engine.remove(str(container["Id"]), force=True)
        return len(found)

    def wait_removed(self, container_id: str, timeout_s: float) -> None:
        """Remove the service (nothing removes it by itself) and return once it is gone."""
        self.remove(container_id, force=True)


def container_of(task: dict[str, Any] | None) -> str | None:
    container = ((task or {}).get("Status") or {}).get("ContainerStatus") or {}
    return str(container["ContainerID"]) if container.get("ContainerID") else None


def is_container_id(value: str) -> bool:
    """A full container id (64 hex digits): never a prefix that could match another one."""
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)

"""The Swarm driver: each worker is a `replicated-job` service on a swarm manager's engine.

A worker's id is its service id. `create` makes the service (one completion, restart
condition none, the job's env, labels on the service and its task container, memory
reservation = limit, pids limit, stop grace, an overlay network when configured); `start`
waits until its task runs; exits come from the task poller (`_swarm_tasks`); `inspect`
and `list_workers` answer in the core's models from the service and its task; `stop` ends
the task with the stop grace (see there), `kill` and `remove` remove the service and its
task containers on this node. Facts only a container has (OOMKilled, start and finish
times) are read from the task's container when it ran on the node dockyard is connected
to, and are None otherwise (`local_exit_facts` is off). It has no image store: a task
pulls its image on whichever node runs it, so it declares no snapshots either. Every call
runs through the node client's `EngineCalls`: typed errors, the observer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import docker
import requests
from docker.errors import create_api_error_from_http_exception
from docker.types import (
    ContainerSpec as SwarmContainerSpec,
)
from docker.types import (
    Resources,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)

from ._config import RouterConfig
from ._docker import (
    REMOVE_RETRY,
    DockerGateway,
    ObservedEngine,
    create_recovering,
    look_up_made,
)
from ._docker_driver import connect, worker_entry, worker_state
from ._driver import (
    ContainerSpec,
    ExitResult,
    ImageStore,
    WorkerEntry,
    WorkerState,
)
from ._drivers import DRIVERS, Capabilities
from ._errors import (
    ConfigError,
    DockerUnavailableError,
    DockyardError,
    EngineConflictError,
    EngineNotFoundError,
    EngineServerError,
    RetriesExhaustedError,
    StillRunningError,
)
from ._exit_monitor import ExitWait
from ._retry import RetryPolicy, call_with_retry
from ._secrets import reveal
from ._swarm_tasks import (
    PRE_RUNNING,
    TERMINAL,
    TaskPoller,
    exit_code_of,
    latest_task,
    task_state,
)
from ._times import parse_docker_time

__all__ = ["SWARM_SERVICE_LABEL", "SwarmDriver", "open_driver"]

log = logging.getLogger("dockyard.swarm")

T = TypeVar("T")

SWARM_SERVICE_LABEL = "com.docker.swarm.service.id"  # the engine's label on task containers
DEFAULT_POLL_INTERVAL_S = 0.25
_START_WAIT_MAX_S = 30.0
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
_NANOS = 1_000_000_000
_NOWHERE = "node.id==dockyard-stopped"  # a placement no node satisfies (ids are random)


class SwarmDriver(ObservedEngine):
    """Workers as swarm job services (see `_driver.Driver` for the verbs)."""

    capabilities: Capabilities = DRIVERS["swarm"].capabilities
    images: ImageStore | None = None  # tasks pull their images on whichever node runs them

    def __init__(
        self,
        engine: DockerGateway,
        *,
        stop_grace_s: float,
        pending_timeout_s: float,
        unreachable_window_s: float,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    ) -> None:
        self.engine = engine  # the node dockyard is connected to: images, local containers
        self.api = engine.api
        self._raw: Any = engine.api  # docker-py's service calls are untyped in the stubs
        # The node engine's choke point: one observer sees the services' calls and its own.
        self.calls = engine.calls
        self.image_write_timeout_s = engine.image_write_timeout_s
        self._stop_grace_s = stop_grace_s
        self._pending_timeout_s = pending_timeout_s
        self._closed = False
        self.node_id = self._manager_node_id()
        self.poller = TaskPoller(
            self._poll_tasks,
            self._service_ids,
            interval_s=poll_interval_s,
            pending_timeout_s=pending_timeout_s,
            unreachable_window_s=unreachable_window_s,
        )

    def _manager_node_id(self) -> str:
        info = self._call("info", self.api.info)
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise ConfigError(
                "backend",
                "backend 'swarm' needs an engine that is a swarm manager "
                f"(this one is {swarm.get('LocalNodeState') or 'not in a swarm'}"
                f"{'' if swarm.get('ControlAvailable') else ', not a manager'})",
            )
        return str(swarm.get("NodeID") or "")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.poller.close(join_s=5.0)
        self.engine.close()

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        """Every engine call of this backend: timed for the observer, errors translated
        into the typed engine errors (the Docker backend's one wrapper)."""
        if self._closed:
            raise DockerUnavailableError(f"Swarm {operation}: the gateway is closed")
        return self.calls.run(operation, fn)

    # -- launch -------------------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> str:
        """Create the job's service; one retry when the engine's answer was lost.

        A retry meeting a 409 with a service of this name carrying exactly this spec's
        labels (the deadline label makes them unique to this launch) takes its id.
        """
        return create_recovering(
            spec.name,
            lambda: self._create_once(spec),
            lambda: self._created_for(spec),
            # The service may have run its task already: `remove` takes its container too.
            self.remove,
        )

    def _created_for(self, spec: ContainerSpec) -> str | None:
        """The id of a service of this name carrying exactly this spec's labels, if any."""
        service = look_up_made(
            lambda: self._call("service_inspect", lambda: self._raw.inspect_service(spec.name))
        )
        if service is None:
            return None
        labels = (service.get("Spec") or {}).get("Labels") or {}
        return str(service["ID"]) if labels == dict(spec.labels) else None

    def _create_once(self, spec: ContainerSpec) -> str:
        resources = Resources(mem_limit=spec.memory_bytes, mem_reservation=spec.memory_bytes)
        if spec.pids_limit is not None:
            resources["Limits"]["Pids"] = spec.pids_limit  # API 1.41; docker-py has no keyword
        container = SwarmContainerSpec(
            image=spec.image,
            command=list(spec.command) if spec.command is not None else None,
            # Secret values become plain strings here: the engine needs them so.
            env={key: reveal(value) for key, value in spec.env.items()},
            labels=dict(spec.labels),
            stop_grace_period=int(self._stop_grace_s * _NANOS),
        )
        template = TaskTemplate(
            container,
            resources=resources,
            restart_policy=RestartPolicy(condition="none"),
            networks=[spec.network] if spec.network not in ("", "bridge", "default") else None,
        )

        def create() -> str:
            raw: Any = self.api  # untyped in the stubs
            created = raw.create_service(
                template,
                name=spec.name,
                labels=dict(spec.labels),
                mode=ServiceMode("replicated-job"),
            )
            return str(created["ID"])

        return self._call("service_create", create)

    def open_exit_wait(self, container_id: str) -> ExitWait:
        return self.poller.register(container_id)

    def open_wait(self, container_id: str) -> ExitWait:
        # A task that already ended answers at the next tick: no exit can be missed.
        return self.poller.register(container_id)

    def start(self, container_id: str) -> None:
        """The service runs by itself once created: wait for its task to run (or end).

        Bounded: a task still waiting for a node after this returns is settled by the
        poller when the pending timeout expires.
        """
        self.poller.await_running(container_id, min(self._pending_timeout_s, _START_WAIT_MAX_S))

    # -- reading ------------------------------------------------------------------------

    def _poll_tasks(self, service_ids: list[str]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call(
            "task_list", lambda: self._raw.tasks(filters={"service": service_ids})
        )
        return result

    def _service_ids(self) -> set[str]:
        services = self._call("service_list", self._raw.services)
        return {str(s.get("ID")) for s in services}

    def _service_tasks(self, service_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call(
            "task_list", lambda: self._raw.tasks(filters={"service": [service_id]})
        )
        return result

    def inspect(self, worker_id: str) -> WorkerState:
        """The service and its task as a `WorkerState` (by service id or name).

        A service dockyard removed is answered from the poller's memory of its last task
        (so the inspect after a kill works).
        """
        try:
            service = self._call("service_inspect", lambda: self._raw.inspect_service(worker_id))
        except EngineNotFoundError:
            ending = self.poller.ending(worker_id)
            if ending is None:
                raise
            return self._state(None, worker_id, ending.task, ending.unplaced)
        service_id = str(service.get("ID"))
        ending = self.poller.ending(service_id)
        if ending is not None and ending.unplaced is not None:
            return self._state(service, service_id, ending.task, ending.unplaced)
        task = latest_task(self._service_tasks(service_id))
        return self._state(service, service_id, task, None)

    def _state(
        self,
        service: dict[str, Any] | None,
        service_id: str,
        task: dict[str, Any] | None,
        unplaced: str | None,
    ) -> WorkerState:
        spec = (service or {}).get("Spec") or {}
        task_spec = spec.get("TaskTemplate") or (task or {}).get("Spec") or {}
        container_spec = task_spec.get("ContainerSpec") or {}
        state = task_state(task)
        running = unplaced is None and (state in PRE_RUNNING or state == "running" or not task)
        status = (task or {}).get("Status") or {}
        code = exit_code_of(task)
        local = self._local_exit(task)
        if local is not None:
            ended = replace(local, exit_code=code)
        elif unplaced is not None:
            ended = ExitResult(code, error=unplaced)
        elif state in TERMINAL and code is None:
            ended = ExitResult(code, error=status.get("Err") or status.get("Message") or None)
        elif state in TERMINAL:
            node = str((task or {}).get("NodeID") or "")[:12]
            reason = f"ran on swarm node {node}: OOMKilled and duration not known from here"
            ended = ExitResult(code, error=reason)
        else:
            ended = ExitResult(code)
        return WorkerState(
            id=service_id,
            name=str(spec.get("Name") or ""),
            image=str(container_spec.get("Image", "")),
            labels=dict(spec.get("Labels") or container_spec.get("Labels") or {}),
            env=tuple(container_spec.get("Env") or ()),
            status="running" if running else "exited",
            running=running,
            exit=ended,
        )

    def _local_exit(self, task: dict[str, Any] | None) -> ExitResult | None:
        """The task container's exit facts when it is on this node and has ended."""
        if task is None or task.get("NodeID") != self.node_id or task_state(task) not in TERMINAL:
            return None
        container_id = _container_of(task)
        if container_id is None:
            return None
        try:
            info = self.engine.inspect(str(container_id))
        except DockyardError:  # the facts are a bonus: without them they read as unknown
            log.debug("task container not inspectable", exc_info=True)
            return None
        return worker_state(info).exit

    def log_tail(self, worker_id: str, lines: int) -> str:
        def read() -> bytes:
            chunks = self._raw.service_logs(
                worker_id, stdout=True, stderr=True, tail=lines, timestamps=False
            )
            return b"".join(chunks)

        return self._call("service_logs", read).decode("utf-8", errors="replace")

    def list_workers(self, labels: Sequence[str], *, all: bool = True) -> list[WorkerEntry]:
        """This instance's services (two calls in all), and stray task containers.

        Status: `running` while the task runs or waits for a node, `exited` once it
        ended, `created` before the engine made a task. `all=False`: running ones only.
        """
        services = self._call(
            "service_list", lambda: self._raw.services(filters={"label": list(labels)})
        )
        ids = [str(s["ID"]) for s in services]
        by_service: dict[str, list[dict[str, Any]]] = {}
        if ids:
            try:
                tasks = self._poll_tasks(ids)
            except EngineNotFoundError:
                tasks = []  # one vanished meanwhile; each then reads as `created`
            for found in tasks:
                by_service.setdefault(str(found.get("ServiceID")), []).append(found)
        listed = []
        for service in services:
            latest = latest_task(by_service.get(str(service["ID"]), []))
            state = task_state(latest)
            shown = "created" if latest is None else "exited" if state in TERMINAL else "running"
            if not all and shown != "running":
                continue
            spec = service.get("Spec") or {}
            listed.append(
                WorkerEntry(
                    id=str(service["ID"]),
                    name=str(spec.get("Name") or ""),
                    labels=dict(spec.get("Labels") or {}),
                    status=shown,
                    created_at=parse_docker_time(service.get("CreatedAt")),
                )
            )
        if all:
            listed.extend(self._stray_containers(labels, set(ids)))
        return listed

    def _stray_containers(self, labels: Sequence[str], services: set[str]) -> list[WorkerEntry]:
        """Task containers on this node whose service is gone (the engine keeps them).

        Listed under their container id, so that an orphan scan removes them: `stop` and
        `remove` fall back to the container when no service has that id.
        """
        stray = []
        for container in self.engine.list_containers(labels, all=True):
            service = (container.get("Labels") or {}).get(SWARM_SERVICE_LABEL)
            if service and service not in services:
                stray.append(worker_entry(container))
        return stray

    # -- ending -------------------------------------------------------------------------

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
            _container_of(task) if task is not None and task.get("NodeID") == self.node_id else None
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
            if not _is_container_id(container_id):
                raise missing
            try:
                self.engine.remove(container_id, force=True)  # a stray task container?
            except EngineNotFoundError:
                raise missing from None

    def _stop_stray(self, container_id: str, grace_s: float, missing: BaseException) -> None:
        """No service of that id: stop a stray task container of that id, if there is one."""
        self.poller.gone(container_id)
        if not _is_container_id(container_id):
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

    @classmethod
    def over(
        cls,
        engine: DockerGateway,
        *,
        stop_grace_s: float,
        pending_timeout_s: float,
        unreachable_window_s: float,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    ) -> SwarmDriver:
        """A swarm gateway over `engine` (a manager node's); closes `engine` if refused."""
        try:
            return cls(
                engine,
                stop_grace_s=stop_grace_s,
                pending_timeout_s=pending_timeout_s,
                unreachable_window_s=unreachable_window_s,
                poll_interval_s=poll_interval_s,
            )
        except BaseException:
            engine.close()
            raise


def _container_of(task: dict[str, Any] | None) -> str | None:
    container = ((task or {}).get("Status") or {}).get("ContainerStatus") or {}
    return str(container["ContainerID"]) if container.get("ContainerID") else None


def _is_container_id(value: str) -> bool:
    """A full container id (64 hex digits): never a prefix that could match another one."""
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def open_driver(
    config: RouterConfig,
    docker_client: docker.DockerClient | docker.APIClient | None,
    *,
    short_pool: int,
    wait_pool: int,
) -> SwarmDriver:
    """The Swarm driver over a manager node's engine (the caller's client, or a new one)."""
    return SwarmDriver.over(
        connect(config, docker_client, short_pool=short_pool, wait_pool=wait_pool),
        stop_grace_s=config.stop_grace_s,
        pending_timeout_s=config.swarm_pending_timeout_s,
        unreachable_window_s=config.wait_retry_window_s,
    )

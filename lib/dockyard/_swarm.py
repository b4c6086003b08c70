"""The Swarm driver: each worker is a `replicated-job` service on a swarm manager's engine.

A worker's id is its service id. `create` makes the service (one completion, restart
condition none, the job's env, labels on the service and its task container, memory
reservation = limit, pids limit, stop grace, an overlay network when configured); `start`
waits until its task runs; exits come from the task poller (`_swarm_tasks`); `inspect`
and `list_workers` answer in the core's models from the service and its task; `stop` ends
the task with the stop grace (see there), `kill` and `remove` remove the service and its
task containers on this node. Facts only a container has (OOMKilled, start and finish
times) are read from the task's container when it ran on the node dockyard is connected
to, and are None otherwise (`local_exit_facts` is off). `attach_output` follows the
service's log from its creation to its task's end (`_swarm_logs`). It has no image store:
a task pulls its image on whichever node runs it, so it declares no snapshots either.
Every call runs through the node client's `EngineCalls`: typed errors, the observer.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from docker.types import (
    ContainerSpec as SwarmContainerSpec,
)
from docker.types import (
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)

from ._create_recovery import look_up_made
from ._docker import DockerGateway, ObservedEngine
from ._docker_driver import connect, parse_docker_time, worker_entry, worker_state
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
    EngineNotFoundError,
    WorkerSpawnError,
)
from ._secrets import reveal
from ._swarm_ending import SWARM_SERVICE_LABEL, ServiceEnding, container_of
from ._swarm_logs import ServiceOutput
from ._swarm_settings import gpu_shortfall, swarm_task_pieces
from ._swarm_tasks import (
    PRE_RUNNING,
    TERMINAL,
    TaskPoller,
    exit_code_of,
    latest_task,
    task_state,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import docker

    from ._config import RouterConfig
    from ._exit_monitor import ExitWait
    from ._output import AttachedOutput

__all__ = ["SWARM_SERVICE_LABEL", "SwarmDriver", "open_driver"]

log = logging.getLogger("dockyard.swarm")

T = TypeVar("T")

DEFAULT_POLL_INTERVAL_S = 0.25
_START_WAIT_MAX_S = 30.0
_NANOS = 1_000_000_000


class SwarmDriver(ServiceEnding, ObservedEngine):
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

    def _created_for(self, spec: ContainerSpec) -> str | None:
        """The id of a service of this name carrying exactly this spec's labels, if any.

        The service may have run its task already: `remove` takes its container too.
        """
        service = look_up_made(
            lambda: self._call("service_inspect", lambda: self._raw.inspect_service(spec.name))
        )
        if service is None:
            return None
        labels = (service.get("Spec") or {}).get("Labels") or {}
        return str(service["ID"]) if labels == dict(spec.labels) else None

    def _create_once(self, spec: ContainerSpec) -> str:
        if spec.settings is not None and isinstance(spec.settings.gpus, int):
            self._check_gpus(spec.settings.gpus)
        pieces = swarm_task_pieces(
            spec.settings, memory_bytes=spec.memory_bytes, pids_limit=spec.pids_limit
        )
        container = SwarmContainerSpec(
            image=spec.image,
            command=list(spec.command) if spec.command is not None else None,
            # Secret values become plain strings here: the engine needs them so.
            env={key: reveal(value) for key, value in spec.env.items()},
            labels=dict(spec.labels),
            stop_grace_period=int(self._stop_grace_s * _NANOS),
            **pieces.container_kwargs,
        )
        container.update(pieces.container_fields)  # fields docker-py has no keyword for
        template = TaskTemplate(
            container,
            resources=pieces.resources,
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

    def _check_gpus(self, gpus: int) -> None:
        """Refuse a GPU request no node advertises, before the service exists: its task
        would wait for a node until the pending timeout, after the spawn returned."""
        nodes: list[dict[str, Any]] = self._call("node_list", self._raw.nodes)
        shortfall = gpu_shortfall(gpus, nodes)
        if shortfall is not None:
            raise WorkerSpawnError(
                f"the swarm refused the GPU request (gpus={gpus!r}): {shortfall}"
            )

    def open_exit_wait(self, container_id: str) -> ExitWait:
        return self.poller.register(container_id)

    def open_wait(self, container_id: str) -> ExitWait:
        # A task that already ended answers at the next tick: no exit can be missed.
        return self.poller.register(container_id)

    def attach_output(self, container_id: str) -> AttachedOutput:
        """The service's output from its first line: its log, followed from its creation
        (before `start`) until its task ended (see `_swarm_logs`)."""
        output = ServiceOutput(self._raw, self._call, container_id)
        attached = output.open()
        try:
            output.drop_hook = self.poller.on_end(container_id, output.ended)
        except BaseException:
            output.close()
            raise
        return attached

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
        container_id = container_of(task)
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

"""Container settings on a swarm: merged `ContainerSettings` as the pieces of a service's
task template (docker-py `ContainerSpec` keywords, extra `ContainerSpec` fields and
`Resources`), and the check that refuses what the service API (1.41) cannot express.
Pure: no engine call.

| setting | service spec (API 1.41) |
|---|---|
| `cpus` | `Resources.Limits.NanoCPUs` and `Reservations.NanoCPUs` |
| `memory_mb` | `Resources.Limits.MemoryBytes` and `Reservations.MemoryBytes` |
| `gpus` (a count) | `Reservations.GenericResources`: `DiscreteResourceSpec` of kind `NVIDIA-GPU` |
| `mounts` | `ContainerSpec.Mounts` |
| `working_dir`, `user` | `ContainerSpec.Dir`, `ContainerSpec.User` |
| `ulimits` | `ContainerSpec.Ulimits` (docker-py 7 has no keyword: set on the spec) |
| `cap_add`, `cap_drop` | `ContainerSpec.CapabilityAdd`, `CapabilityDrop` |
| `read_only_rootfs` | `ContainerSpec.ReadOnly` |
| `extra_hosts` | `ContainerSpec.Hosts` (`IP name`) |
| `dns` | `ContainerSpec.DNSConfig.Nameservers` |
| `init` | `ContainerSpec.Init` |

Not expressible (`INEXPRESSIBLE`): `cpu_shares`, `cpuset_cpus`, `shm_size_bytes`,
`security_opt` (a service's `Privileges` carries only credential spec and SELinux context
in 1.41), and `gpus` other than a count: `"all"` (generic resources are counted), and
`"device=ID,…"` (swarmkit accepts a task's named generic resources, but its scheduler
places only counted ones: such a task would wait forever). A count no ready, active node
advertises is refused at spawn (`gpu_shortfall`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from docker.types import Resources

from ._container_settings import ContainerSettings, Layer
from ._docker_settings import docker_mount

__all__ = [
    "INEXPRESSIBLE",
    "SWARM_GPU_KIND",
    "SwarmTaskPieces",
    "check_swarm_expressible",
    "gpu_shortfall",
    "swarm_refusals",
    "swarm_task_pieces",
]

MIB = 1024 * 1024
NANO = 1_000_000_000
# The generic resource kind GPU nodes advertise (`node-generic-resources` in daemon.json).
SWARM_GPU_KIND = "NVIDIA-GPU"

INEXPRESSIBLE: dict[str, str] = {
    "cpu_shares": "a service has no CPU shares (only Resources NanoCPUs limits/reservations)",
    "cpuset_cpus": "a service cannot pin CPUs",
    "shm_size_bytes": "a service's container spec has no /dev/shm size",
    "security_opt": "a service's Privileges in API 1.41 hold no seccomp, AppArmor or "
    "no-new-privileges options",
}


def swarm_refusals(settings: ContainerSettings) -> list[tuple[str, str]]:
    """`(field, reason)` for every set field a swarm service cannot carry."""
    names = settings.set_fields()
    refused = [(name, INEXPRESSIBLE[name]) for name in names if name in INEXPRESSIBLE]
    if settings.gpus == "all":
        refused.append(("gpus", "a swarm task asks for a count of GPUs, not 'all'"))
    elif isinstance(settings.gpus, str):
        # The service is accepted, but swarmkit's scheduler takes only counted (discrete)
        # generic resources in a task: one naming its devices is never placed.
        refused.append(("gpus", "a swarm task asks for a count of GPUs, not named devices"))
    return refused


def check_swarm_expressible(settings: ContainerSettings | None, layer: Layer) -> None:
    """Raise `layer.error` (a `ConfigError`, or `InvalidJobError` for a job) naming the
    first field of `settings` the swarm backend cannot express: never silently dropped."""
    if settings is None:
        return
    refused = swarm_refusals(settings)
    if refused:
        name, reason = refused[0]
        raise layer.error(name, f"not available with backend 'swarm': {reason}")


@dataclass(frozen=True)
class SwarmTaskPieces:
    """`container_kwargs` for docker-py's `ContainerSpec`, `container_fields` to set on it
    afterwards (fields docker-py has no keyword for), and the task's `resources`."""

    container_kwargs: dict[str, Any]
    container_fields: dict[str, Any]
    resources: Resources


def swarm_task_pieces(
    settings: ContainerSettings | None, *, memory_bytes: int, pids_limit: int | None = None
) -> SwarmTaskPieces:
    """The task template pieces for `settings` (merged; `check_swarm_expressible` passed)
    on top of the router's memory (unless `memory_mb` is set) and pids limit."""
    s = settings if settings is not None else ContainerSettings()
    memory = s.memory_mb * MIB if s.memory_mb is not None else memory_bytes
    nano_cpus = round(s.cpus * NANO) if s.cpus is not None else None
    resources = Resources(
        mem_limit=memory,
        mem_reservation=memory,
        cpu_limit=nano_cpus,
        cpu_reservation=nano_cpus,
        generic_resources=_gpu_resources(s.gpus),
    )
    if pids_limit is not None:
        resources["Limits"]["Pids"] = pids_limit  # API 1.41; docker-py has no keyword
    optional: dict[str, Any] = {
        "user": s.user,
        "workdir": s.working_dir,
        "mounts": [docker_mount(m) for m in s.mounts] if s.mounts else None,
        "read_only": s.read_only_rootfs,
        "init": s.init,
        "hosts": dict(s.extra_hosts) if s.extra_hosts else None,
        "dns_config": {"Nameservers": list(s.dns)} if s.dns else None,  # no null Search/Options
        "cap_add": list(s.cap_add) if s.cap_add else None,
        "cap_drop": list(s.cap_drop) if s.cap_drop else None,
    }
    fields: dict[str, Any] = {}
    if s.ulimits:
        fields["Ulimits"] = [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in s.ulimits]
    return SwarmTaskPieces(
        container_kwargs={key: value for key, value in optional.items() if value is not None},
        container_fields=fields,
        resources=resources,
    )


def _gpu_resources(gpus: int | str | None) -> Any:
    # A count only: "all" and named devices are refused (`swarm_refusals`).
    return {SWARM_GPU_KIND: gpus} if isinstance(gpus, int) else None


def gpu_shortfall(gpus: int, nodes: list[dict[str, Any]]) -> str | None:
    """Why no node of the swarm can ever take a task asking for `gpus` GPUs, or None when
    one ready, active node advertises that many `NVIDIA-GPU` generic resources (counted or
    named; swarmkit counts named ones for a count). A task no node can take waits for one
    (`pending`) with no error: the spawn is refused instead. GPUs that exist but are in
    use are no shortfall: that task waits for them (up to the pending timeout)."""
    usable = [n for n in nodes if _node_usable(n)]
    if any(_node_gpus(node) >= gpus for node in usable):
        return None
    offered = ", ".join(f"{_node_name(n)}: {_node_gpus(n)}" for n in usable)
    return (
        f"no ready, active node advertises {gpus} {SWARM_GPU_KIND} "
        f"({offered or 'no ready, active node'}); a node advertises its GPUs with "
        "node-generic-resources in its daemon configuration"
    )


def _node_usable(node: dict[str, Any]) -> bool:
    state = (node.get("Status") or {}).get("State")
    return state == "ready" and (node.get("Spec") or {}).get("Availability") == "active"


def _node_gpus(node: dict[str, Any]) -> int:
    """How many GPUs the node advertises: its discrete count plus its named ones."""
    description = node.get("Description") or {}
    resources = (description.get("Resources") or {}).get("GenericResources") or []
    count = 0
    for resource in resources:
        discrete = resource.get("DiscreteResourceSpec") or {}
        named = resource.get("NamedResourceSpec") or {}
        if discrete.get("Kind") == SWARM_GPU_KIND:
            count += int(discrete.get("Value") or 0)
        if named.get("Kind") == SWARM_GPU_KIND:
            count += 1
    return count


def _node_name(node: dict[str, Any]) -> str:
    hostname = (node.get("Description") or {}).get("Hostname")
    return str(hostname or node.get("ID") or "?")

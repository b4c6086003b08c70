"""Container settings on the Docker engine: merged `ContainerSettings` plus the router's
base limits, as the keyword arguments of docker-py's `create_host_config` and
`create_container`. Pure: no engine call, so the mapping is unit-tested on its own.

| setting | Docker |
|---|---|
| `cpus` | `HostConfig.NanoCpus` = cpus * 10^9 (as `docker run --cpus`) |
| `cpu_shares`, `cpuset_cpus` | `CpuShares`, `CpusetCpus` |
| `memory_mb` | `Memory` and `MemorySwap` (equal: no swap); else the router's `worker_memory_mb` |
| `shm_size_bytes` | `ShmSize` |
| `gpus` | `DeviceRequests`: one request, capability `gpu`, `Count` (-1 for all) or `DeviceIDs` |
| `mounts` | `Mounts` (tmpfs `size_bytes` → `TmpfsOptions.SizeBytes`, mode 1777) |
| `working_dir`, `user` | `Config.WorkingDir`, `Config.User` |
| `ulimits` | `Ulimits` |
| `cap_add`, `cap_drop` | `CapAdd`, `CapDrop` |
| `read_only_rootfs` | `ReadonlyRootfs` |
| `security_opt` | `SecurityOpt` (plus `no-new-privileges:true` when the router sets it) |
| `extra_hosts`, `dns` | `ExtraHosts` (`name:ip`), `Dns` |
| `init` | `Init` |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from docker.types import DeviceRequest, Mount, Ulimit

from ._container_settings import ContainerSettings
from ._container_settings import Mount as SettingsMount
from ._errors import WorkerSpawnError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "GPU_CAPABILITY",
    "DockerCreateArgs",
    "docker_create_args",
    "gpu_request",
    "name_refused_control",
    "refused_control",
    "unhonoured_security_options",
]

MIB = 1024 * 1024
NANO = 1_000_000_000
GPU_CAPABILITY = "gpu"
NO_NEW_PRIVILEGES = "no-new-privileges:true"
TMPFS_MODE = 0o1777
MountType = Literal["bind", "volume", "tmpfs"]


@dataclass(frozen=True)
class DockerCreateArgs:
    """`host_config`: keyword arguments of `APIClient.create_host_config`; `container`:
    the `create_container` keywords the settings decide (`working_dir`, `user`)."""

    host_config: dict[str, Any]
    container: dict[str, Any]


def docker_create_args(
    settings: ContainerSettings | None,
    *,
    memory_bytes: int,
    network: str,
    auto_remove: bool,
    pids_limit: int | None = None,
    no_new_privileges: bool = False,
) -> DockerCreateArgs:
    """The create arguments for a worker with `settings` (merged, validated) on top of the
    router's base: memory (unless the settings set `memory_mb`), network, auto-removal,
    pids limit and `no-new-privileges` (which no layer can turn off)."""
    s = settings if settings is not None else ContainerSettings()
    memory = s.memory_mb * MIB if s.memory_mb is not None else memory_bytes
    host: dict[str, Any] = {
        "mem_limit": memory,
        "memswap_limit": memory,  # equal to memory: no swap
        "network_mode": network,
        "auto_remove": auto_remove,
        "pids_limit": pids_limit,
    }
    security = _security_opt(s.security_opt or (), no_new_privileges)
    if security:
        host["security_opt"] = security
    optional: dict[str, Any] = {
        "nano_cpus": round(s.cpus * NANO) if s.cpus is not None else None,
        "cpu_shares": s.cpu_shares,
        "cpuset_cpus": s.cpuset_cpus,
        "shm_size": s.shm_size_bytes,
        "device_requests": [gpu_request(s.gpus)] if s.gpus is not None else None,
        "mounts": [docker_mount(m) for m in s.mounts] if s.mounts else None,
        "ulimits": [Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in s.ulimits]
        if s.ulimits
        else None,
        "cap_add": list(s.cap_add) if s.cap_add else None,
        "cap_drop": list(s.cap_drop) if s.cap_drop else None,
        "read_only": s.read_only_rootfs,
        "extra_hosts": dict(s.extra_hosts) if s.extra_hosts else None,
        "dns": list(s.dns) if s.dns else None,
        "init": s.init,
    }
    host.update({key: value for key, value in optional.items() if value is not None})
    container: dict[str, Any] = {}
    if s.working_dir is not None:
        container["working_dir"] = s.working_dir
    if s.user is not None:
        container["user"] = s.user
    return DockerCreateArgs(host_config=host, container=container)


def gpu_request(gpus: int | str) -> DeviceRequest:
    """`docker run --gpus`: a count, `all` (count -1) or `device=ID,ID`."""
    if isinstance(gpus, int):
        return DeviceRequest(count=gpus, capabilities=[[GPU_CAPABILITY]])
    if gpus == "all":
        return DeviceRequest(count=-1, capabilities=[[GPU_CAPABILITY]])
    ids = gpus.removeprefix("device=").split(",")
    return DeviceRequest(device_ids=ids, capabilities=[[GPU_CAPABILITY]])


def docker_mount(mount: SettingsMount) -> Mount:
    """A settings `Mount` as docker-py's (for containers and services alike)."""
    return Mount(
        target=mount.target,
        source=mount.source,  # None for tmpfs and anonymous volumes
        type=cast("MountType", mount.type),  # checked against MOUNT_TYPES by the validation
        read_only=mount.read_only,
        tmpfs_size=mount.size_bytes,
        # Writable by any user, as `docker run --tmpfs`: a swarm task's tmpfs is 0755 else.
        tmpfs_mode=TMPFS_MODE if mount.type == "tmpfs" else None,
    )


def _security_opt(options: tuple[str, ...], no_new_privileges: bool) -> list[str]:
    if not no_new_privileges:
        return list(options)
    # The router's hardening stands: a layer's `no-new-privileges[:false]` gives way to it.
    kept = [o for o in options if not o.startswith("no-new-privileges")]
    return [*kept, NO_NEW_PRIVILEGES]


# The security modules an option needs, by key, and its values that need none: an engine
# without the module starts the container without the option, and says nothing.
_SECURITY_MODULES = {"apparmor": ("AppArmor", "unconfined"), "label": ("SELinux", "disable")}


def unhonoured_security_options(
    options: tuple[str, ...], engine_security_options: list[str]
) -> str | None:
    """Why an engine whose `docker info` SecurityOptions are `engine_security_options`
    would not honour `options` (an AppArmor profile without AppArmor, an SELinux label
    without SELinux: Docker 20.10 and 28 start the worker without it), or None."""
    engine = {o.split(",")[0].removeprefix("name=").lower() for o in engine_security_options}
    missing = []
    for option in options:
        key, _, value = option.partition("=") if "=" in option else option.partition(":")
        module = _SECURITY_MODULES.get(key)
        if module is not None and value != module[1] and module[0].lower() not in engine:
            missing.append(f"{option!r} needs {module[0]}")
    if not missing:
        return None
    return (
        f"{'; '.join(missing)}, which the engine does not have (its security options: "
        f"{', '.join(engine_security_options) or 'none'}): it would start the worker "
        "without the option"
    )


# What an engine refusal says about each control, lower-cased, in the words of Docker 20.10
# and 28 (and runc below them): the message of the spawn error then names the control (the
# engine's words follow). Only a control that is set can be named, the first that matches
# wins, and the markers are phrases, not words: a container named `…-mount-…` or a runc
# error about the engine's own `/proc` mount names no control.
_GPU_MARKERS = ("could not select device driver", "nvidia-container", "device request")
_REFUSALS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("user", ("unable to find user", "unable to find group", "no matching entries in")),
    ("cpuset_cpus", ("cpuset", "requested cpus are not available")),
    ("cpus", ("range of cpus is from", "nanocpus", "nano cpus")),
    ("cpu_shares", ("cpu shares", "cpu-shares", "cpushares", "cpu.shares", "cpu.weight")),
    ("ulimits", ("ulimit", "rlimit")),
    ("working_dir", ("working directory", "chdir to cwd", "workingdir")),
    ("shm_size_bytes", ("shm size", "shmsize", "shm_size")),
    ("init", ("docker-init", "init binary")),
    ("extra_hosts", ("add-host", "extrahosts", "extra host")),
)
# The security options: the engine's words for the option itself, and for each key.
_SECURITY_OPT_MARKERS = ("security-opt", "security option", "securityopt")
_SECURITY_KEY_MARKERS = {
    "seccomp": ("seccomp",),
    "apparmor": ("apparmor",),
    "label": ("selinux", "label"),
    "no-new-privileges": ("no-new-privileges", "no_new_privs"),
    "systempaths": ("systempaths",),
}
# A mount refusal names the mount: one of these words and a set mount's target or source.
_MOUNT_MARKERS = ("mount", "bind source", "volume")
_CAPABILITY_MARKERS = ("capabilit",)  # `invalid CapAdd: unknown capability: "CAP_X"`
_CONTROL_NAMES = {
    "gpus": "the GPU request",
    "security_opt": "the security options",
    "user": "the user",
    "mounts": "a mount",
    "cpus": "the CPU limit",
    "cpuset_cpus": "the CPU set",
    "cpu_shares": "the CPU shares",
    "ulimits": "a ulimit",
    "working_dir": "the working directory",
    "shm_size_bytes": "the /dev/shm size",
    "init": "the init process",
    "extra_hosts": "the extra hosts",
    "cap_add": "the added capabilities",
    "cap_drop": "the dropped capabilities",
}


def refused_control(message: str, settings: ContainerSettings | None) -> str | None:
    """Which of the set controls an engine refusal `message` is about, in words (`the GPU
    request (gpus=1)`); None when it names none of them."""
    if settings is None:
        return None
    text = message.lower()
    for name in _refused_fields(text, settings):
        value = getattr(settings, name)
        shown = [m.target for m in value] if name == "mounts" else value
        return f"{_CONTROL_NAMES[name]} ({name}={shown!r})"  # no secret: settings only
    return None


def _refused_fields(text: str, s: ContainerSettings) -> Iterator[str]:
    """The set fields `text` (lower-cased) is about, most specific first."""
    if s.gpus is not None and _says(text, _GPU_MARKERS):
        yield "gpus"
    if s.security_opt and _says(text, _security_markers(s.security_opt)):
        yield "security_opt"
    for name, markers in _REFUSALS:
        if getattr(s, name) is not None and _says(text, markers):
            yield name
    # Docker makes the working directory at create: `Cannot mkdir: /bin/sh is not a
    # directory` names the path, not the control.
    if s.working_dir is not None and "cannot mkdir" in text and s.working_dir.lower() in text:
        yield "working_dir"
    for name in ("cap_add", "cap_drop"):
        caps: tuple[str, ...] | None = getattr(s, name)
        if caps and _says(text, _CAPABILITY_MARKERS) and _mentions_capability(text, caps):
            yield name
    if s.mounts and _says(text, _MOUNT_MARKERS) and _mentions_mount(text, s.mounts):
        yield "mounts"


def _says(text: str, markers: tuple[str, ...]) -> bool:
    return any(marker in text for marker in markers)


def _security_markers(options: tuple[str, ...]) -> tuple[str, ...]:
    """The option's own words, and those of each key set (`seccomp=…` → `seccomp`): a
    seccomp error is not blamed on an AppArmor option."""
    keys = {re.split(r"[=:]", option, maxsplit=1)[0].lower() for option in options}
    keyed = (marker for key in sorted(keys) for marker in _SECURITY_KEY_MARKERS.get(key, ()))
    return (*_SECURITY_OPT_MARKERS, *keyed)


def _mentions_capability(text: str, caps: tuple[str, ...]) -> bool:
    names = {cap.lower().removeprefix("cap_") for cap in caps}
    return any(re.search(rf"\b(?:cap_)?{re.escape(name)}\b", text) for name in names)


def _mentions_mount(text: str, mounts: tuple[SettingsMount, ...]) -> bool:
    paths = {p.lower() for m in mounts for p in (m.target, m.source) if p}
    return any(path in text for path in paths)


_ALREADY_NAMED = ("the engine refused ", "the swarm refused ")  # a driver's own refusals


def name_refused_control(err: BaseException, settings: ContainerSettings | None) -> BaseException:
    """A `WorkerSpawnError` whose engine message is about one of the set controls, reworded
    to say so first (`the engine refused the GPU request (gpus=1): …`); else `err`."""
    if not isinstance(err, WorkerSpawnError) or str(err).startswith(_ALREADY_NAMED):
        return err
    control = refused_control(str(err), settings)
    if control is None:
        return err
    named = WorkerSpawnError(f"the engine refused {control}: {err}", err.status_code)
    named.__cause__ = err.__cause__
    return named

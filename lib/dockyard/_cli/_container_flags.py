"""`dockyard run`'s container flags, as `docker run` spells them: the router layer of the
container settings, what a job may set, and the bind roots."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, TypeVar

from .._container_settings import ContainerSettings, Mount, merge_settings
from .._container_syntax import (
    parse_add_host,
    parse_gpus,
    parse_mount,
    parse_size,
    parse_tmpfs,
    parse_ulimit,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["add_container_flags", "container_overrides", "settings_from_args"]

T = TypeVar("T")


def _typed(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse `type=` that turns a parser's `ValueError` into a usage error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = parse.__name__
    return convert


def _number(text: str) -> float:
    return float(text)


def _integer(text: str) -> int:
    return int(text, 10)


def add_container_flags(parser: argparse.ArgumentParser) -> None:
    """The `docker run`-style flags (router layer), `--allow-job-setting`, `--allow-bind-root`."""
    group = parser.add_argument_group(
        "container controls (as docker run; on top of the WORKER_* variables)"
    )
    add = group.add_argument

    def add_parsed(flag: str, parse: Callable[[str], Any], metavar: str, help: str) -> None:
        """A repeatable flag whose every value goes through `parse`."""
        add(flag, action="append", type=_typed(parse), metavar=metavar, help=help)

    add("--cpus", type=_typed(_number), metavar="N", help="CPUs per worker (0.5: half a core)")
    add("--cpu-shares", type=_typed(_integer), metavar="N", help="relative CPU weight")
    add("--cpuset-cpus", metavar="LIST", help="CPUs a worker may run on (0-3, 0,2)")
    add("--shm-size", type=_typed(parse_size), metavar="SIZE", help="size of /dev/shm (64m)")
    add("--gpus", type=_typed(parse_gpus), metavar="GPUS", help="a count, all, or device=0,1")
    add_parsed(
        "--mount",
        parse_mount,
        "SPEC",
        "type=bind|volume|tmpfs,source=…,target=…[,readonly][,tmpfs-size=…] (repeatable; "
        "bind sources only under --allow-bind-root)",
    )
    add_parsed("--tmpfs", parse_tmpfs, "PATH[:size=SIZE]", "a tmpfs mount (repeatable)")
    add("--user", metavar="USER[:GROUP]", help="user (name or uid) the worker runs as")
    add("--workdir", metavar="DIR", help="the worker's working directory (absolute)")
    add("--read-only", action="store_true", default=None, help="read-only root filesystem")
    add("--cap-add", action="append", metavar="CAP", help="add a capability (repeatable)")
    add("--cap-drop", action="append", metavar="CAP", help="drop a capability, or ALL")
    add_parsed("--ulimit", parse_ulimit, "NAME=SOFT[:HARD]", "a resource limit (repeatable)")
    add("--security-opt", action="append", metavar="OPT", help="seccomp=…, apparmor=…, …")
    add_parsed("--add-host", parse_add_host, "NAME:IP", "an /etc/hosts entry (repeatable)")
    add("--dns", action="append", metavar="IP", help="a DNS server (repeatable)")
    add("--init", action="store_true", default=None, help="run the engine's init as PID 1")
    add(
        "--allow-job-setting",
        action="append",
        metavar="NAME",
        help="a container setting a job line's `container` object may set (repeatable; "
        "default: $JOB_SETTINGS_ALLOWED, else none)",
    )
    add(
        "--allow-bind-root",
        action="append",
        metavar="DIR",
        help="bind mount sources must lie under one of these (repeatable; default: "
        "$ALLOWED_BIND_ROOTS, else binds are refused)",
    )


def settings_from_args(args: argparse.Namespace) -> ContainerSettings | None:
    """The router layer the flags set; None when no container flag was given."""
    mounts: list[Mount] = [*(args.mount or ()), *(args.tmpfs or ())]
    values: dict[str, Any] = {
        "cpus": args.cpus,
        "cpu_shares": args.cpu_shares,
        "cpuset_cpus": args.cpuset_cpus,
        "shm_size_bytes": args.shm_size,
        "gpus": args.gpus,
        "mounts": tuple(mounts) if mounts else None,
        "working_dir": args.workdir,
        "user": args.user,
        "ulimits": tuple(args.ulimit) if args.ulimit else None,
        "cap_add": tuple(args.cap_add) if args.cap_add else None,
        "cap_drop": tuple(args.cap_drop) if args.cap_drop else None,
        "read_only_rootfs": args.read_only,
        "security_opt": tuple(args.security_opt) if args.security_opt else None,
        "extra_hosts": dict(args.add_host) if args.add_host else None,
        "dns": tuple(args.dns) if args.dns else None,
        "init": args.init,
    }
    set_values = {name: value for name, value in values.items() if value is not None}
    return ContainerSettings(**set_values) if set_values else None


def container_overrides(
    args: argparse.Namespace, env_settings: ContainerSettings | None
) -> dict[str, Any]:
    """`RouterConfig` overrides from the flags: the flags' settings over the environment's
    (field by field), and the allowed job settings and bind roots when given."""
    overrides: dict[str, Any] = {}
    flags = settings_from_args(args)
    if flags is not None:
        overrides["container"] = merge_settings(env_settings, flags)
    if args.allow_job_setting:
        overrides["job_settings_allowed"] = frozenset(args.allow_job_setting)
    if args.allow_bind_root:
        overrides["allowed_bind_roots"] = tuple(args.allow_bind_root)
    return overrides

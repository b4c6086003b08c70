"""`dockyard ps` and `dockyard reap`: this router instance's managed containers, listed or
given one orphan scan."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._errors import DockyardError
from .._models import WorkerLifecycleListener
from .._naming import LabelSchema, parse_deadline
from ..container_manager import ContainerManager
from ._engine import base_config, engine
from ._exits import EXIT_OK
from ._format import fmt_s, print_plain_table

if TYPE_CHECKING:
    import argparse

    from .._config import RouterConfig
    from .._docker import DockerGateway


def cmd_ps(args: argparse.Namespace) -> int:
    config = base_config(args)
    labels = LabelSchema(config.label_prefix)
    with engine(config) as gateway:
        containers = _owned_containers(gateway, config, labels)
        limits = {
            str(c.get("Id", "")): _limits_of(gateway, str(c.get("Id", ""))) for c in containers
        }
    if not containers:
        print(f"no managed containers for router instance {config.router_instance_id!r}")
        return EXIT_OK
    now = datetime.now(UTC)
    rows = [
        [
            str(container.get("Id", ""))[:12],
            _name(container),
            _job_id(container, labels),
            str(container.get("State", "")),
            str(container.get("Status", "")),
            *limits[str(container.get("Id", ""))],
            _due(parse_deadline(_labels(container).get(labels.deadline)), now),
        ]
        for container in sorted(containers, key=lambda c: int(c.get("Created") or 0))
    ]
    header = ["CONTAINER", "NAME", "JOB", "STATE", "STATUS", "CPUS", "MEMORY", "DEADLINE"]
    print_plain_table(header, rows, sys.stdout)
    return EXIT_OK


class _OrphanLog(WorkerLifecycleListener):
    """Remembers which containers the scan stopped (the rest it only removed)."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()

    def on_orphan_stopped(self, container_id: str, labels: dict[str, str]) -> None:
        self.stopped.add(container_id)


def cmd_reap(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.stop_grace is not None:
        overrides["stop_grace_s"] = args.stop_grace
    if args.label_prefix is not None:
        overrides["label_prefix"] = args.label_prefix
    config = base_config(args, **overrides)
    labels = LabelSchema(config.label_prefix)
    orphans = _OrphanLog()
    with engine(config) as gateway:
        before = {str(c.get("Id")): c for c in _owned_containers(gateway, config, labels)}
        with ContainerManager(config, docker_client=gateway.api, listener=orphans) as manager:
            handled = manager.scan_and_cleanup_orphans()
            images = manager.run_dangling_image_cleanup() if args.images else None
    for container_id in handled:
        container = before.get(container_id, {})
        if container_id in orphans.stopped:
            what = "stopped and removed (running past its deadline)"
        else:
            what = f"removed ({container.get('State', 'exited')} leftover)"
        print(f"{container_id[:12]}  {_name(container)}  job {_job_id(container, labels)}: {what}")
    kept = len(before) - len(handled)
    print(
        f"reaped {len(handled)} container(s) of router instance {config.router_instance_id!r}; "
        f"{kept} left alone (running within their deadline)"
    )
    if images is not None:
        for image_id in images:
            print(f"{image_id.removeprefix('sha256:')[:12]}  dangling image removed")
        print(f"removed {len(images)} dangling image(s) labelled as dockyard's")
    return EXIT_OK


def _owned_containers(
    gateway: DockerGateway, config: RouterConfig, labels: LabelSchema
) -> list[dict[str, Any]]:
    """This instance's managed containers, running or not (as the engine lists them)."""
    return gateway.list_containers(labels.ownership_filter(config.router_instance_id), all=True)


def _limits_of(gateway: DockerGateway, container_id: str) -> tuple[str, str]:
    """The CPU and memory limits of a container, as `dockyard ps` shows them."""
    try:
        info = gateway.inspect(container_id)
    except DockyardError:  # gone meanwhile, or the engine did not answer
        return ("?", "?")
    return format_limits(info.get("HostConfig") or {})


def format_limits(host_config: dict[str, Any]) -> tuple[str, str]:
    """`("0.5", "64MiB")` from a HostConfig; `-` for no limit."""
    nano = host_config.get("NanoCpus") or 0
    quota, period = host_config.get("CpuQuota") or 0, host_config.get("CpuPeriod") or 0
    cpus = nano / 1e9 if nano else (quota / period if quota > 0 and period > 0 else 0)
    memory = int(host_config.get("Memory") or 0)
    mib = memory / (1024 * 1024)
    return (f"{cpus:g}" if cpus else "-", f"{mib:g}MiB" if memory else "-")


def _name(container: dict[str, Any]) -> str:
    return str((container.get("Names") or ["?"])[0]).lstrip("/")


def _labels(container: dict[str, Any]) -> dict[str, str]:
    return dict(container.get("Labels") or {})


def _job_id(container: dict[str, Any], labels: LabelSchema) -> str:
    return _labels(container).get(labels.job_id, "-")


def _due(deadline: datetime | None, now: datetime) -> str:
    """The deadline in local time, and how far off it is."""
    if deadline is None:
        return "-"
    left = (deadline - now).total_seconds()
    when = deadline.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return f"{when} ({'in ' + fmt_s(left) if left >= 0 else 'overdue ' + fmt_s(-left)})"

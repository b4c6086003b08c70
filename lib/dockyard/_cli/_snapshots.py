"""`dockyard snapshots`: this instance's snapshot images on the engine, with a dry run of
the next cleanup, or with --evict that cleanup itself."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .._naming import LabelSchema
from .._snapshot_registry import SnapshotRegistry
from .._snapshot_retirement import snapshot_owner
from ..container_manager import ContainerManager
from ._engine import base_config, engine
from ._exits import EXIT_OK
from ._format import fmt_s, fmt_size, print_plain_table

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from .._config import RouterConfig
    from .._docker import DockerGateway


@dataclass(frozen=True)
class _SnapshotImage:
    """A snapshot image as the engine lists it, with the ids its labels carry."""

    name: str
    project_id: str | None
    work_item_id: str | None
    created: datetime
    size: int | None
    legacy: bool  # no snapshot labels: the next cleanup removes it, no job reuses it


def cmd_snapshots(args: argparse.Namespace) -> int:
    config = base_config(args)
    with engine(config) as gateway:
        images = _snapshot_images(gateway, config)
        if args.evict:
            return _evict(gateway, config, images)
    if not images:
        print(
            f"no snapshot images named {config.snapshot_image_prefix}* "
            f"of instance {config.router_instance_id}"
        )
        return EXIT_OK
    doomed = _would_evict(images, config)
    now = datetime.now(UTC)
    rows = [
        [
            image.name,
            image.project_id or "-",
            image.work_item_id or "-",
            f"{fmt_s((now - image.created).total_seconds())} ago",
            fmt_size(image.size),
            ("evict (legacy)" if image.legacy else "evict") if image.name in doomed else "",
        ]
        for image in images
    ]
    print_plain_table(
        ["IMAGE", "PROJECT", "WORK ITEM", "CREATED", "SIZE", "NEXT CLEANUP"], rows, sys.stdout
    )
    return EXIT_OK


def _evict(gateway: DockerGateway, config: RouterConfig, images: Sequence[_SnapshotImage]) -> int:
    with ContainerManager(config, docker_client=gateway.api) as manager:
        manager.sync_snapshots_from_docker()  # registers this instance's, then cleans up
    remaining = {image.name for image in _snapshot_images(gateway, config)}
    removed = [image for image in images if image.name not in remaining]
    for image in removed:
        print(f"removed {image.name}")
    print(f"evicted {len(removed)} snapshot image(s); {len(remaining)} kept")
    return EXIT_OK


def _snapshot_images(gateway: DockerGateway, config: RouterConfig) -> list[_SnapshotImage]:
    """This instance's snapshot images and unlabelled legacy ones (as the manager's sync
    sees them), newest first; other instances' images are not listed."""
    labels = LabelSchema(config.label_prefix)
    mine = config.router_instance_id
    found = []
    for image in gateway.list_images(config.snapshot_image_prefix):
        tags = [
            t for t in image.get("RepoTags") or [] if t.startswith(config.snapshot_image_prefix)
        ]
        image_labels = image.get("Labels") or {}
        owner = snapshot_owner(labels, image_labels)
        legacy = owner == "" or (owner is None and labels.owned_by(image_labels, mine))
        if not tags or (owner != mine and not legacy):
            continue
        size = image.get("Size")
        found.append(
            _SnapshotImage(
                name=tags[0],
                project_id=None if legacy else image_labels.get(labels.snapshot_project_id),
                work_item_id=None if legacy else image_labels.get(labels.snapshot_work_item_id),
                created=datetime.fromtimestamp(int(image.get("Created") or 0), UTC),
                size=size if isinstance(size, int) else None,
                legacy=legacy,
            )
        )
    return sorted(found, key=lambda image: image.created, reverse=True)


def _would_evict(images: Sequence[_SnapshotImage], config: RouterConfig) -> set[str]:
    """Dry run of the cleanup: the same registry rules, on a throwaway registry."""
    registry = SnapshotRegistry(
        default_ttl_s=config.snapshot_default_ttl_s,
        max_count=config.snapshot_max_count,
        max_size_bytes=config.snapshot_max_size_bytes,
        project_ttl=lambda _project: None,
    )
    for image in images:
        if image.project_id and image.work_item_id:
            registry.register(
                image.project_id,
                image.work_item_id,
                image.name,
                image.size,
                created_at=image.created,
            )
    legacy = {image.name for image in images if image.legacy}
    return legacy | {meta.image_name for meta in registry.evict()}

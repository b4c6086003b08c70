"""The commands' configuration (environment, then flags on top) and their short-lived
engine connection."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .._config import RouterConfig
from .._docker import DockerGateway

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator


def base_config(args: argparse.Namespace, **overrides: Any) -> RouterConfig:
    """`RouterConfig.from_env()` with the command-line flags on top."""
    config = RouterConfig.from_env()
    if args.instance is not None:
        overrides["router_instance_id"] = args.instance
    prefix = getattr(args, "snapshot_prefix", None)
    if prefix is not None:
        overrides["snapshot_image_prefix"] = prefix
    return dataclasses.replace(config, **overrides)


@contextmanager
def engine(config: RouterConfig) -> Iterator[DockerGateway]:
    """A small connection for a command's own calls, closed when the block ends."""
    gateway = DockerGateway.connect(short_pool=4, wait_pool=1, timeout_s=config.docker_timeout_s)
    try:
        yield gateway
    finally:
        gateway.close()

"""`dockyard run --metrics-port`: a Prometheus /metrics endpoint on 127.0.0.1 for the batch."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from ._exits import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client import CollectorRegistry

METRICS_ADDRESS = "127.0.0.1"  # local only: a scraper elsewhere goes through the host's proxy


@contextmanager
def serving_metrics(port: int | None) -> Iterator[CollectorRegistry | None]:
    """A registry served on `port` while the block runs; None (and no server) without a port."""
    if port is None:
        yield None
        return
    try:
        from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415
    except ImportError:
        raise UsageError(
            "--metrics-port needs prometheus-client: pip install 'dockyard[metrics]'"
        ) from None
    registry = CollectorRegistry()
    try:
        server, thread = start_http_server(port, addr=METRICS_ADDRESS, registry=registry)
    except OSError as err:
        where = f"{METRICS_ADDRESS}:{port}"
        raise UsageError(f"--metrics-port: cannot listen on {where}: {err}") from None
    try:
        yield registry
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

"""Engine streams read over HTTP: the events stream (and a worker's followed log).

Each is a streaming `requests` response read line by line or frame by frame; a read
timeout is the heartbeat (`StreamIdle`), any other failure is typed by the error table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import requests
import urllib3
from docker.errors import DockerException

from ._errors import StreamIdle, translate
from ._exit_monitor import decode_event, server_time_of

__all__ = ["ResponseEvents"]

log = logging.getLogger("dockyard.docker")


class ResponseEvents:
    """An events stream over a streaming `requests` response (public API only)."""

    def __init__(self, response: requests.Response) -> None:
        self._response = response
        self.server_time = server_time_of(response.headers.get("Date"))

    def events(self) -> Iterator[dict[str, Any]]:
        try:
            for line in self._response.iter_lines():
                event = decode_event(line)
                if event is not None:
                    yield event
        except requests.exceptions.ConnectionError as err:
            if err.args and isinstance(err.args[0], urllib3.exceptions.ReadTimeoutError):
                raise StreamIdle() from err
            raise translate("events", err) from err
        except (requests.exceptions.RequestException, DockerException) as err:
            # Read outside `EngineCalls.run`: the same table types what breaks the stream.
            raise translate("events", err) from err

    def interrupt(self) -> None:
        # urllib3's public `shutdown()` wakes a read blocked in another thread; where the
        # transport has none (ssh), the heartbeat's read timeout ends the read instead.
        shutdown = getattr(self._response.raw, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:  # best effort: the heartbeat ends the read anyway
                log.debug("events stream shutdown failed", exc_info=True)

    def close(self) -> None:
        self._response.close()

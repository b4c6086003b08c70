"""Engine streams read over HTTP: the events stream and a worker's log.

Each is a streaming `requests` response, read line by line (events) or frame by frame (a
log); an events read timeout is the heartbeat (`StreamIdle`), any other failure is typed
by the error table. A log is read with the engine's timestamps
(`GET /containers/{id}/logs?timestamps=1`): each frame is one log entry, stamped with the
engine's time to the nanosecond, so a reader can go on after the last entry it saw.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from typing import TYPE_CHECKING, Any

import requests
import urllib3
from docker.errors import DockerException, create_api_error_from_http_exception

from ._errors import StreamIdle, translate
from ._exit_monitor import decode_event, server_time_of
from ._output import AttachedOutput
from ._output_lines import STREAM_NAMES
from ._times import docker_time_ns

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = ["ResponseEvents", "log_frames", "log_mark", "open_log", "raise_for_status"]

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


def raise_for_status(response: requests.Response) -> None:
    """Raise docker-py's typed `APIError` for an error status (its public converter)."""
    try:
        response.raise_for_status()
    except requests.exceptions.HTTPError as err:
        try:
            create_api_error_from_http_exception(err)  # reads the engine's message first
        finally:
            response.close()


def open_log(
    api: Any, url: str, *, follow: bool, since_ns: int | None, timeout_s: float
) -> requests.Response:
    """The container's log (both streams, stamped) as a streaming response.

    `since` goes in whole seconds (every engine takes those): the entries of that second
    come again, for the reader to drop. A followed log has no read timeout: it ends at the
    container's exit (or when `interrupt_log` shuts it).
    """
    params: dict[str, str] = {"stdout": "1", "stderr": "1", "timestamps": "1"}
    if follow:
        params["follow"] = "1"
    if since_ns is not None:
        params["since"] = str(since_ns // 1_000_000_000)
    response: requests.Response = api.get(
        url, params=params, stream=True, timeout=(timeout_s, None if follow else timeout_s)
    )
    raise_for_status(response)
    return response


def following(response: requests.Response, after: Mapping[str, int] | None) -> AttachedOutput:
    """A followed log as a worker's output: per stream the entries after `after[stream]`."""
    return AttachedOutput(log_frames(response, after), lambda: interrupt_log(response))


def log_frames(
    response: requests.Response, after: Mapping[str, int] | None = None
) -> Iterator[tuple[int, bytes, int | None]]:
    """`(stream type, bytes, engine time in ns)` per log entry, its stamp taken off; the
    entries stamped at or before their stream's `after` are skipped (the boundary's lines
    the reader before had). Closes the response at the end."""
    skip = {kind: (after or {}).get(name, -1) for kind, name in STREAM_NAMES.items()}
    try:
        while header := _read_exact(response, 8):
            if len(header) < 8:
                return
            size = struct.unpack(">L", header[4:])[0]
            payload = _read_exact(response, size)
            stamp, _, data = payload.partition(b" ")
            nanos = docker_time_ns(stamp.decode("ascii", errors="replace"))
            if nanos is None:  # not stamped: passed on whole
                yield header[0], payload, None
            elif nanos > skip.get(header[0], -1):
                yield header[0], data, nanos
    finally:
        response.close()


def log_mark(response: requests.Response, positions: Mapping[str, int]) -> dict[str, int]:
    """Per stream, the engine time of its line at `positions[stream]` (an entry ending in
    a newline is a line; a longer line's pieces are not counted)."""
    wanted = {kind: positions.get(name, 0) for kind, name in STREAM_NAMES.items()}
    counted = dict.fromkeys(STREAM_NAMES, 0)
    found: dict[str, int] = {}
    with contextlib.closing(response):
        for kind, data, nanos in log_frames(response):
            if kind not in counted or not data.endswith(b"\n"):
                continue
            counted[kind] += 1
            if counted[kind] == wanted[kind] and nanos is not None:
                found[STREAM_NAMES[kind]] = nanos
            if all(counted[k] >= wanted[k] for k in counted):
                break
    return found


def interrupt_log(response: requests.Response) -> None:
    """Wake a read blocked on the log from another thread (urllib3's `shutdown`), else
    close it."""
    shutdown = getattr(response.raw, "shutdown", None)
    with contextlib.suppress(Exception):
        if callable(shutdown):
            shutdown()
        else:
            response.close()


def _read_exact(response: requests.Response, size: int) -> bytes:
    """`size` bytes, fewer only at the end of the stream."""
    data = b""
    while len(data) < size:
        piece = response.raw.read(size - len(data))
        if not piece:
            break
        data += piece
    return data

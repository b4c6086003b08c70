"""A swarm worker's live output: its service's followed log, ended when its task ends.

The log is followed from the service's creation (`GET /services/{id}/logs?follow=1`,
through the manager, whichever node runs the task): the node's agent reads its task
container's log from the first line, so none is missed however early it comes. Such a
followed log never ends by itself (it waits for more tasks of the service), so the task
poller's end hook (`TaskPoller.on_end`) shuts it; what it had not brought by then comes
from one non-follow read per stream, from the last line seen on that stream on (`since`;
timestamps tell which lines were delivered already, so none comes twice). A followed log
that breaks while the task runs is not opened again: the rest comes at the task's end.

The engine's answer is HTTP-chunked Docker frames (8-byte header: stream type and size),
one frame per log message, each starting with the message's timestamp; the frames go out
as the `(stream type, bytes)` pieces of `AttachedOutput`, without the timestamps.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from docker.errors import create_api_error_from_http_exception
from docker.utils.socket import STDERR, STDOUT

from ._errors import EngineNotFoundError
from ._output import AttachedOutput

__all__ = ["ServiceOutput", "log_frames", "logs_url", "nanos_of", "since_of"]

log = logging.getLogger("dockyard.swarm")

T = TypeVar("T")
Run = Callable[[str, Callable[[], T]], T]

_HEADER = struct.Struct(">BxxxL")
_CHUNK = 64 * 1024
_TIMESTAMP = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")
_NANOS = 1_000_000_000


def log_frames(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Whole frames `(stream type, payload)` from the answer's chunks, cut anywhere."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= _HEADER.size:
            stream, size = _HEADER.unpack_from(buffer)
            end = _HEADER.size + size
            if len(buffer) < end:
                break
            payload = bytes(buffer[_HEADER.size : end])
            del buffer[:end]
            yield stream, payload


def nanos_of(stamp: bytes) -> int | None:
    """An RFC 3339 timestamp (the engine's, nanoseconds) as nanoseconds since the epoch."""
    found = _TIMESTAMP.match(stamp)
    if found is None:
        return None
    whole, fraction, zone = found.groups()
    seconds = calendar.timegm(time.strptime(whole.decode(), "%Y-%m-%dT%H:%M:%S"))
    if zone != b"Z":
        sign = -1 if zone[:1] == b"+" else 1
        seconds += sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * _NANOS + int((fraction or b"0").ljust(9, b"0"))


def since_of(nanos: int) -> str:
    """The `since` parameter for a timestamp: the engine takes `seconds.nanoseconds`."""
    return f"{nanos // _NANOS}.{nanos % _NANOS:09d}"


class _Seen:
    """One stream's last delivered message: its timestamp, and how many delivered messages
    carry it (a long line's pieces share one)."""

    def __init__(self) -> None:
        self.nanos: int | None = None
        self.count = 0
        self._skip = 0

    def delivered(self, nanos: int) -> None:
        if nanos == self.nanos:
            self.count += 1
        else:
            self.nanos, self.count = nanos, 1

    def begin_rest(self) -> None:
        """A read from `since_of(self.nanos)` on begins: it repeats `count` messages."""
        self._skip = self.count

    def is_new(self, nanos: int) -> bool:
        """Whether a message of the rest was not delivered already (it is then counted)."""
        if self.nanos is not None and nanos < self.nanos:
            return False
        if nanos == self.nanos and self._skip > 0:
            self._skip -= 1
            return False
        self.delivered(nanos)
        return True


class ServiceOutput:
    """One service's output, as `AttachedOutput`: `frames` on the reader's thread, `ended`
    from the poller's, `close` from any."""

    def __init__(self, api: Any, run: Run[Any], service_id: str) -> None:
        self._api = api
        self._run = run
        self._service_id = service_id
        self._lock = threading.Lock()
        self._wake = threading.Event()  # the task ended, or the output was closed
        self._ended = False
        self._closed = False
        self._responses: list[Any] = []  # open answers: `close` shuts them all
        self._seen = {STDOUT: _Seen(), STDERR: _Seen()}
        self._follow: Any = None
        self.drop_hook: Callable[[], None] = _nothing

    def open(self) -> AttachedOutput:
        """Start following (raises the engine's typed error when refused)."""
        self._follow = self._open_log({"follow": 1, "stdout": 1, "stderr": 1}, follow=True)
        return AttachedOutput(frames=self._frames(), close=self.close)

    def ended(self) -> None:
        """The task ended: stop following; the reader fetches what remains."""
        with self._lock:
            self._ended = True
            follow = self._follow
        self._wake.set()
        if follow is not None:
            _shut(follow)

    def close(self) -> None:
        """Stop reading (from any thread): a blocked read wakes, nothing more is fetched."""
        with self._lock:
            self._closed = True
            responses = list(self._responses)
        self._wake.set()
        for response in responses:
            _shut(response)

    # -- the reader's side --------------------------------------------------------------

    def _frames(self) -> Iterator[tuple[int, bytes]]:
        try:
            try:
                for stream, payload in self._read(self._follow):
                    nanos, data = _split(payload)
                    seen = self._seen.get(stream)
                    if seen is not None and nanos is not None:
                        seen.delivered(nanos)
                    yield stream, data
            except Exception as err:
                with self._lock:
                    expected = self._ended or self._closed
                if not expected:  # the rest comes at the task's end
                    log.info(
                        "a swarm worker's followed log broke; the rest comes at its end",
                        extra={"service_id": self._service_id, "error": str(err)},
                    )
            finally:
                self._release(self._follow)
            self._wake.wait()
            for stream in (STDOUT, STDERR):
                yield from self._rest(stream)
        finally:
            self.drop_hook()

    def _rest(self, stream: int) -> Iterator[tuple[int, bytes]]:
        """The stream's messages from the last one delivered on (none when closed)."""
        seen = self._seen[stream]
        params: dict[str, Any] = {
            "stdout": int(stream == STDOUT),
            "stderr": int(stream == STDERR),
            "since": since_of(seen.nanos) if seen.nanos is not None else 0,
        }
        try:
            response = self._open_log(params, follow=False)
        except EngineNotFoundError:  # the service went (killed): its output ends here
            return
        if response is None:
            return
        seen.begin_rest()
        try:
            for found, payload in self._read(response):
                nanos, data = _split(payload)
                if found == stream and (nanos is None or seen.is_new(nanos)):
                    yield found, data
        finally:
            self._release(response)

    def _read(self, response: Any) -> Iterator[tuple[int, bytes]]:
        return log_frames(response.iter_content(_CHUNK))

    def _open_log(self, params: dict[str, Any], *, follow: bool) -> Any:
        """An answer of the service's log (None once closed); timestamps always asked for.

        Through the client's own session (docker-py's `service_logs` drops the stream
        type of each frame and hides the answer a `close` must shut).
        """
        with self._lock:
            if self._closed:
                return None
        url = logs_url(self._api, self._service_id)
        # A followed log may be silent for as long as the task runs: no read timeout.
        timeout = (self._api.timeout, None) if follow else self._api.timeout

        def get() -> Any:
            response = self._api.get(
                url, params={**params, "timestamps": 1}, stream=True, timeout=timeout
            )
            try:
                response.raise_for_status()
            except requests.HTTPError as err:
                response.close()
                raise create_api_error_from_http_exception(err) from err
            return response

        response = self._run("service_logs", get)
        with self._lock:
            closed = self._closed
            if not closed:
                self._responses.append(response)
        if closed:  # closed meanwhile: nobody reads this answer
            with contextlib.suppress(Exception):
                response.close()
            return None
        return response

    def _release(self, response: Any) -> None:
        with self._lock:
            if response in self._responses:
                self._responses.remove(response)
        with contextlib.suppress(Exception):
            response.close()


def _split(payload: bytes) -> tuple[int | None, bytes]:
    """A message's timestamp and its bytes (all of them when it has none)."""
    stamp, space, data = payload.partition(b" ")
    nanos = nanos_of(stamp) if space else None
    return (nanos, data) if nanos is not None else (None, payload)


def logs_url(api: Any, service_id: str) -> str:
    """The engine's route of a service's log, at the client's API version."""
    return f"{api.base_url}/v{api.api_version}/services/{quote(service_id, safe='')}/logs"


def _shut(response: Any) -> None:
    """Wake a read blocked on the answer, from another thread: its socket is shut down
    for reading (the reader then sees the end). Never `close`: that waits for the blocked
    read to return, and this runs on the task poller's thread."""
    raw = response.raw
    try:
        raw.shutdown()  # urllib3 2.3+: the socket's shutdown, kept by the answer
        return
    except Exception:
        log.debug("the answer cannot shut its socket down", exc_info=True)
    connection = getattr(raw, "connection", None)
    shutdown = getattr(getattr(connection, "sock", None), "shutdown", None)
    if callable(shutdown):
        with contextlib.suppress(OSError):
            shutdown(socket.SHUT_RD)


def _nothing() -> None:
    pass

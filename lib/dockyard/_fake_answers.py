"""The fake engine's answers: its docker-py errors, its events stream, streamed and JSON bodies.

What `FakeDockerAPI` hands back where docker-py's `APIClient` hands back the engine's HTTP
answers (see `dockyard.testing`).
"""

from __future__ import annotations

import json
import queue
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import docker.errors
import requests
import urllib3

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

__all__ = [
    "FakeEventStream",
    "FakeExport",
    "FakeJSON",
    "FakeResponse",
    "api_error",
    "labels_match",
    "no_such_image",
    "not_found",
]


def api_error(
    status: int, explanation: str, cls: type[docker.errors.APIError] = docker.errors.APIError
) -> docker.errors.APIError:
    """A docker-py error as the engine's answer `status` with `explanation` produces it."""
    response = requests.Response()
    response.status_code = status
    return cls(f"{status} Client Error", response=response, explanation=explanation)


def not_found(what: str) -> docker.errors.APIError:
    """The engine's 404 for a missing container."""
    return api_error(404, f"No such container: {what}", docker.errors.NotFound)


def no_such_image(image: str) -> docker.errors.APIError:
    """The engine's 404 for a missing image."""
    return api_error(404, f"No such image: {image}", docker.errors.ImageNotFound)


def labels_match(wanted: Sequence[str], labels: Mapping[str, str]) -> bool:
    """Whether `labels` pass the engine's label filter `wanted` (`key` or `key=value` each)."""
    for label in wanted:
        key, has_value, value = label.partition("=")
        if key not in labels or (has_value and labels[key] != value):
            return False
    return True


_END = object()


class _Raw:
    """The `response.raw` of a fake stream: `shutdown()` wakes a blocked reader."""

    def __init__(self, stream: FakeEventStream) -> None:
        self._stream = stream

    def shutdown(self) -> None:
        self._stream.close()


class FakeEventStream:
    """A connected `GET /events` answer: delivers the fake engine's events as JSON lines."""

    def __init__(self, labels: list[str], read_timeout: float | None) -> None:
        self.status_code = 200
        self.headers = {"Date": formatdate(time.time(), usegmt=True)}
        self.raw = _Raw(self)
        self.closed = False
        self._labels = labels
        self._read_timeout = read_timeout
        self._queue: queue.Queue[object] = queue.Queue()

    def wants(self, event: Mapping[str, Any]) -> bool:
        return labels_match(self._labels, (event.get("Actor") or {}).get("Attributes") or {})

    def push(self, event: Mapping[str, Any]) -> None:
        self._queue.put(json.dumps(event).encode())

    def break_stream(self) -> None:
        """The engine side drops the connection (daemon restart, proxy hiccup)."""
        self._queue.put(requests.exceptions.ChunkedEncodingError("events stream broken"))

    def raise_for_status(self) -> None:
        return None

    def iter_lines(self) -> Iterator[bytes]:
        while True:
            try:
                item = self._queue.get(timeout=self._read_timeout)
            except queue.Empty:
                idle = urllib3.exceptions.ReadTimeoutError(None, "/events", "Read timed out.")  # type: ignore[arg-type]
                raise requests.exceptions.ConnectionError(idle) from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put(_END)


@dataclass
class FakeResponse:
    """A finished streaming answer (pull and load progress)."""

    lines: list[dict[str, Any]]
    status_code: int = 200
    closed: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    def raise_for_status(self) -> None:
        return None

    def iter_lines(self) -> Iterator[bytes]:
        for line in self.lines:
            yield json.dumps(line).encode()

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeExport:
    """A container export: a byte stream."""

    chunks: list[bytes]
    status_code: int = 200

    def raise_for_status(self) -> None:
        return None

    def iter_content(self, chunk_size: int = 1) -> Iterator[bytes]:
        yield from self.chunks

    def close(self) -> None:
        return None


@dataclass
class FakeJSON:
    """A finished JSON answer."""

    body: dict[str, Any]
    status_code: int = 200

    def raise_for_status(self) -> None:
        return None

    def json(self) -> dict[str, Any]:
        return self.body

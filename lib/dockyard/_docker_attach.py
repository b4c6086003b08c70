"""A container's output stream: attached before its start, read with docker-py's frame helpers.

`POST /containers/{id}/attach?stream=1&logs=1&stdout=1&stderr=1` on a created container
that has not started yet, as `docker run` does: the engine sends every byte the container
writes from its first one, and ends the stream (EOF) when the container exits, also when
it removes the container afterwards (AutoRemove). Workers run without a TTY, so the
stream is multiplexed in frames; `docker.utils.socket.frames_iter` reads them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import docker
from docker.utils.socket import frames_iter

from ._output import AttachedOutput

__all__ = ["attach_output"]

log = logging.getLogger("dockyard.docker")

_PARAMS = {"stdout": 1, "stderr": 1, "stream": 1, "logs": 1}


def attach_output(api: docker.APIClient, container_id: str) -> AttachedOutput:
    """Attach to the container's stdout and stderr; raises the client's error on refusal."""
    sock: Any = api.attach_socket(container_id, params=_PARAMS)
    return AttachedOutput(frames=_frames(sock), close=lambda: _shut(sock))


def _frames(sock: Any) -> Iterator[tuple[int, bytes]]:
    try:
        for stream, data in frames_iter(sock, tty=False):  # type: ignore[no-untyped-call]
            yield stream, bytes(data)
    finally:
        _close(sock)


def _raw(sock: Any) -> Any:
    """The OS socket under docker-py's answer (a `SocketIO` on a unix socket)."""
    return getattr(sock, "_sock", sock)


def _shut(sock: Any) -> None:
    """Wake a read blocked on the stream (from another thread): the reader then ends."""
    raw = _raw(sock)
    shutdown = getattr(raw, "shutdown", None)
    if callable(shutdown):
        with contextlib.suppress(OSError):
            shutdown(socket.SHUT_RDWR)
    else:  # a transport without shutdown (ssh channel): closing is all there is
        _close(sock)


def _close(sock: Any) -> None:
    response = getattr(sock, "_response", None)
    with contextlib.suppress(Exception):
        sock.close()
    if response is not None:
        with contextlib.suppress(Exception):
            response.close()

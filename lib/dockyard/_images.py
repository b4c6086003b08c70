"""Image pulls: one pull per image at a time, shared by every thread that needs it."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future

from ._docker import DockerGateway

__all__ = ["ImagePuller"]

log = logging.getLogger("dockyard.images")


class ImagePuller:
    """Single-flight pulls: concurrent callers for one image share the first caller's pull."""

    def __init__(self, docker: DockerGateway, timeout_s: float) -> None:
        self._docker = docker
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future[None]] = {}
        self.pulls_started = 0

    def pull(self, image: str) -> None:
        """Pull `image` (or join the pull under way); raises what the pull raised."""
        with self._lock:
            shared = self._in_flight.get(image)
            leader = shared is None
            if shared is None:
                shared = self._in_flight[image] = Future()
                self.pulls_started += 1
        if leader:
            log.info("pulling missing image", extra={"image": image})
            try:
                self._docker.pull(image, self._timeout_s)
            except BaseException as err:
                shared.set_exception(err)
            else:
                shared.set_result(None)
            finally:
                with self._lock:
                    del self._in_flight[image]
        shared.result()

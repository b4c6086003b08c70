"""Image pulls: one pull per image at a time, shared by every thread that needs it.

Concurrent callers for one image share one pull, and a failed pull is remembered for a few
seconds, so a burst of spawns needing an unreachable image asks the registry once (a failing
pull returns within milliseconds, long before the burst is over).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import KW_ONLY, dataclass, field

from cachetools import TTLCache

from ._driver import ImageStore
from ._errors import UnpullableImageError, copy_error
from ._metrics import NO_METRICS, Metrics
from ._registry_auth import RegistryAuth

__all__ = [
    "ImagePuller",
    "is_image_id",
]

log = logging.getLogger("dockyard.images")

DEFAULT_FAILURE_TTL_S = 5.0
_REMEMBERED_FAILURES = 1024  # distinct images; more only forgets the oldest failures
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}|[0-9a-f]{64}")


def is_image_id(image: str) -> bool:
    """True for a full image id (`sha256:<64 hex>` or the bare 64 hex digits)."""
    return bool(_IMAGE_ID.fullmatch(image))


@dataclass(eq=False)  # one puller per manager: identity, no field-wise ==
class ImagePuller:
    """Single-flight pulls: concurrent callers for one image share the first caller's pull.

    A failure is remembered for `failure_ttl_s` seconds and handed to every caller in that
    window without asking the engine again; a success is not remembered (the image is then
    local, and a later miss means someone removed it). `auth` gives the registry
    credentials for an image (None: anonymous).
    """

    images: ImageStore
    timeout_s: float
    _: KW_ONLY
    failure_ttl_s: float = DEFAULT_FAILURE_TTL_S
    clock: Callable[[], float] = time.monotonic
    auth: Callable[[str], RegistryAuth | None] | None = None
    metrics: Metrics = NO_METRICS
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _in_flight: dict[str, Future[None]] = field(default_factory=dict, init=False, repr=False)
    _failures: TTLCache[str, BaseException] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Failures expire by themselves (cachetools keeps the clock; the lock guards it).
        self._failures = TTLCache(
            maxsize=_REMEMBERED_FAILURES, ttl=self.failure_ttl_s, timer=self.clock
        )

    def pull(self, image: str) -> None:
        """Pull `image` (or join the pull under way); raises what the pull raised."""
        if is_image_id(image):
            raise UnpullableImageError(f"image {image} is not present and cannot be pulled by id")
        with self._lock:
            remembered = self._failures.get(image)
            if remembered is not None:
                raise copy_error(remembered)  # each raiser its own traceback
            shared = self._in_flight.get(image)
            leader = shared is None
            if shared is None:
                shared = self._in_flight[image] = Future()
        if not leader:
            error = shared.exception()
            if error is not None:
                raise copy_error(error)
            return
        log.info("pulling missing image", extra={"image": image})
        try:
            credentials = self.auth(image) if self.auth is not None else None
            if credentials is None:
                self.images.pull(image, self.timeout_s)
            else:
                self.images.pull(image, self.timeout_s, auth_config=credentials)
        except BaseException as err:
            with self._lock:
                if isinstance(err, Exception) and self.failure_ttl_s > 0:
                    self._failures[image] = err
                del self._in_flight[image]
            shared.set_exception(err)
            self.metrics.image_pull(ok=False)
            raise
        with self._lock:
            del self._in_flight[image]
        shared.set_result(None)
        self.metrics.image_pull(ok=True)
        log.info("pulled image", extra={"image": image})

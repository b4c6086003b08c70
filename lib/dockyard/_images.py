"""Image pulls: one pull per image at a time, shared by every thread that needs it.

Concurrent callers for one image share one pull, and a failed pull is remembered for a few
seconds, so a burst of spawns needing an unreachable image asks the registry once (a failing
pull returns within milliseconds, long before the burst is over). Under the `always` pull
policy a successful pull is reused for `reuse_s` seconds as well. Each pull resolves its
registry login afresh and tries transient failures again (`_pull_policy`).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING

from cachetools import TTLCache

from ._errors import UnpullableImageError, copy_error
from ._metrics import NO_METRICS, Metrics
from ._naming import is_image_id
from ._pull_policy import pull_result, retry_transient_pulls

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._driver import ImageStore
    from ._registry_auth import RegistryAuth

__all__ = [
    "ImagePuller",
]

log = logging.getLogger("dockyard.images")

DEFAULT_FAILURE_TTL_S = 5.0
_REMEMBERED_FAILURES = 1024  # distinct images; more only forgets the oldest failures


@dataclass(eq=False)  # one puller per manager: identity, no field-wise ==
class ImagePuller:
    """Single-flight pulls: concurrent callers for one image share the first caller's pull.

    A failure is remembered for `failure_ttl_s` seconds and handed to every caller in that
    window without asking the engine again; for `pull` a success is not remembered (the
    image is then local, and a later miss means someone removed it), for `refresh` it is,
    for `reuse_s` seconds. `auth` gives the registry credentials for an image (None:
    anonymous), asked once per pull. Transient failures are tried again `retries` times
    within the one `timeout_s`; `close()` ends a back-off under way.
    """

    images: ImageStore
    timeout_s: float
    _: KW_ONLY
    failure_ttl_s: float = DEFAULT_FAILURE_TTL_S
    clock: Callable[[], float] = time.monotonic
    auth: Callable[[str], RegistryAuth | None] | None = None
    metrics: Metrics = NO_METRICS
    retries: int = 0
    reuse_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _in_flight: dict[str, Future[None]] = field(default_factory=dict, init=False, repr=False)
    _failures: TTLCache[str, BaseException] = field(init=False, repr=False)
    _pulled: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def __post_init__(self) -> None:
        # Failures expire by themselves (cachetools keeps the clock; the lock guards it).
        self._failures = TTLCache(
            maxsize=_REMEMBERED_FAILURES, ttl=self.failure_ttl_s, timer=self.clock
        )

    def close(self) -> None:
        """End any retry back-off under way (the pull then raises its last failure)."""
        self._stop.set()

    def refresh(self, image: str) -> None:
        """Pull `image` even though the engine may have it (the `always` policy).

        A pull that succeeded within the last `reuse_s` seconds counts as this one, and
        one under way is joined, so a burst of spawns pulls once.
        """
        with self._lock:
            pulled = self._pulled.get(image)
            if pulled is not None and self.clock() - pulled < self.reuse_s:
                return
        self.pull(image, reason="pull policy always")

    def pull(self, image: str, *, reason: str = "missing") -> None:
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
        log.info("pulling image", extra={"image": image, "reason": reason})
        try:
            self._pull_with_login(image)
        except BaseException as err:
            with self._lock:
                if isinstance(err, Exception) and self.failure_ttl_s > 0:
                    self._failures[image] = err
                del self._in_flight[image]
            shared.set_exception(err)
            self.metrics.image_pull(ok=False, result=pull_result(err))
            raise
        with self._lock:
            del self._in_flight[image]
            self._pulled[image] = self.clock()
            if len(self._pulled) > _REMEMBERED_FAILURES:
                self._pulled.pop(next(iter(self._pulled)))
        shared.set_result(None)
        self.metrics.image_pull(ok=True, result="ok")
        log.info("pulled image", extra={"image": image})

    def _pull_with_login(self, image: str) -> None:
        # The login is resolved once per pull (a helper's token is never kept longer), and
        # stays a `Secret` inside `RegistryAuth` until the engine call encodes it.
        credentials = self.auth(image) if self.auth is not None else None
        if credentials is not None:
            log.debug(
                "pulling with a registry login",
                extra={"image": image, "registry": credentials.server, "via": credentials.source},
            )

        def attempt(time_left_s: float) -> None:
            if credentials is None:
                self.images.pull(image, time_left_s)
            else:
                self.images.pull(image, time_left_s, auth_config=credentials)

        retry_transient_pulls(
            attempt,
            timeout_s=self.timeout_s,
            retries=self.retries,
            stop=self._stop,
            clock=self.clock,
        )

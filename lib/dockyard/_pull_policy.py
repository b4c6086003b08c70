"""When a worker image is pulled, which pull failures are worth another try, and the retry.

Pull policies (`RouterConfig.image_pull_policy`, per project `ProjectConfig.image_pull_policy`):

- `if-not-present` (the default): pull only when the engine does not have the image;
- `always`: pull before every spawn (a burst of spawns within `image_pull_reuse_s` shares
  one pull), so a tag moved in the registry is run at once;
- `never`: a missing image is a `WorkerImageResolutionError` at once, without a pull.

A failed pull is tried again only when the failure is transient (no answer, a timeout, a
connection reset, a 5xx without an auth or not-found meaning); never when the registry
refused the login or does not have the image.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from ._errors import DockerUnavailableError, RetriesExhaustedError, WorkerImageResolutionError
from ._retry import RetryPolicy

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

__all__ = [
    "ALWAYS",
    "IF_NOT_PRESENT",
    "NEVER",
    "PULL_POLICIES",
    "PULL_RESULTS",
    "is_auth_failure",
    "is_retryable_pull_failure",
    "pull_result",
    "retry_transient_pulls",
]

IF_NOT_PRESENT = "if-not-present"
ALWAYS = "always"
NEVER = "never"
PULL_POLICIES = (IF_NOT_PRESENT, ALWAYS, NEVER)

# What the registry or engine says when the login is missing or refused.
_AUTH_MARKERS = (
    "unauthorized",
    "no basic auth credentials",
    "denied",
    "authentication required",
    "incorrect username or password",
    "401",
)
_NOT_FOUND_MARKERS = (
    "not found",
    "manifest unknown",
    "does not exist",
    "no such image",
    "name unknown",
)
# The registry's name does not resolve (a typo, an offline host): a second try a moment
# later meets the same answer. (A DNS server that does not answer is a timeout.)
_FINAL_MARKERS = ("no such host",)
_TRANSIENT_MARKERS = (
    "timeout",
    "timed out",
    "connection reset",
    "connection refused",
    "unexpected eof",
    "broken pipe",
    "temporarily unavailable",
    "service unavailable",
    "bad gateway",
    "gateway timeout",
    "internal server error",
    " 500 ",
    " 502 ",
    " 503 ",
    " 504 ",
)

# The `result` label values of `dockyard_image_pulls_total`.
PULL_RESULTS = ("ok", "auth_failed", "not_found", "credentials_error", "transient", "error")

T = TypeVar("T")

# Transient pull failures: which ones is `is_retryable_pull_failure`'s call (registry
# answers arrive as messages inside the pull's stream), the back-off is this.
PULL_RETRY = RetryPolicy(retry_on=(Exception,), first_delay_s=0.5, max_delay_s=5.0)


def _text(err: BaseException) -> str:
    return f" {getattr(err, 'explanation', '') or ''} {err} ".lower()


def is_auth_failure(err: BaseException) -> bool:
    """The registry wants a login or refused the one given (401, "no basic auth credentials",
    "denied"): never worth another try with the same login."""
    if isinstance(err, WorkerImageResolutionError):
        return False  # the login could not be found at all: its own result
    return getattr(err, "status_code", None) in (401, 403) or any(
        marker in _text(err) for marker in _AUTH_MARKERS
    )


def _is_missing(err: BaseException) -> bool:
    return getattr(err, "status_code", None) == 404 or any(
        marker in _text(err) for marker in _NOT_FOUND_MARKERS
    )


def is_retryable_pull_failure(err: BaseException) -> bool:
    """A transient pull failure: no answer, a timeout, a reset connection, a 5xx answer.

    Auth failures, a missing image and a login that could not be resolved are final.
    """
    if not isinstance(err, Exception) or isinstance(err, WorkerImageResolutionError):
        return False
    if is_auth_failure(err) or _is_missing(err):
        return False
    if any(marker in _text(err) for marker in _FINAL_MARKERS):
        return False
    if isinstance(err, DockerUnavailableError):  # no answer, or none in time
        return True
    status = getattr(err, "status_code", None)
    if isinstance(status, int) and status >= 500:
        return True
    return any(marker in _text(err) for marker in _TRANSIENT_MARKERS)


def pull_result(err: BaseException | None) -> str:
    """The `result` label of a pull that ended with `err` (None: it succeeded)."""
    if err is None:
        return "ok"
    if isinstance(err, WorkerImageResolutionError):
        return "credentials_error"
    if is_auth_failure(err):
        return "auth_failed"
    if _is_missing(err):
        return "not_found"
    if is_retryable_pull_failure(err):
        return "transient"
    return "error"


def retry_transient_pulls(
    pull: Callable[[float], T],
    *,
    timeout_s: float,
    retries: int,
    stop: threading.Event,
    clock: Callable[[], float],
    policy: RetryPolicy | None = None,
) -> T:
    """`pull(time_left_s)`, tried again on transient failures, `retries` times at most.

    All attempts share the one pull timeout: a retry gets the time the earlier ones left,
    and none starts once it is spent. The back-off is the library's retry policy (this is
    the one place pulls use it); `stop` ends a back-off early (the manager is closing).
    Running out raises the last failure itself.
    """
    run = replace(policy or PULL_RETRY, window_s=timeout_s, attempts=retries).begin(stop, clock)
    deadline = clock() + timeout_s
    while True:
        try:
            return pull(max(deadline - clock(), 0.001))
        except Exception as err:  # judged by what the registry said, not only by type
            if not is_retryable_pull_failure(err) or deadline - clock() <= 0:
                raise
            try:
                run = run.increment(err)
                run.sleep()
            except RetriesExhaustedError:
                raise err from None

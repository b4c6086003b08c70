"""Create recovery: a create whose answer got lost may still have made what it asked for.

Both drivers' `create` (one method, `_docker.ObservedEngine.create`) recovers through
`recover_lost_create` (a container, a swarm service) when a create raised one of
`LOST_ANSWERS`; `look_up_made` finds what such a create made, looking through engine
blips for a while, and `created_container` tells whether a container it found is the one
asked for. The happy path never comes here.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ._errors import (
    TRANSIENT_ERRORS,
    DockyardError,
    EngineConflictError,
    EngineNotFoundError,
    EngineTimeoutError,
    EngineUnreachableError,
    RetriesExhaustedError,
)
from ._retry import RetryPolicy, call_with_retry

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "CREATE_RETRY",
    "LOOK_UP_RETRY",
    "LOST_ANSWERS",
    "created_container",
    "look_up_made",
    "recover_lost_create",
]

log = logging.getLogger("dockyard.docker")

# A create that got no answer: once more, after a pause that lets one that went through finish.
CREATE_RETRY = RetryPolicy(retry_on=(EngineUnreachableError,), attempts=1, first_delay_s=0.2)
# A create in progress may take this long to become visible; blips are looked through.
LOOK_UP_RETRY = RetryPolicy(
    retry_on=TRANSIENT_ERRORS, window_s=3.0, first_delay_s=0.1, max_delay_s=0.1
)


LOST_ANSWERS = (EngineTimeoutError, EngineUnreachableError)
"""What a create that may have gone through anyway raises: its callers recover from these."""


def recover_lost_create(
    name: str,
    lost: DockyardError,
    create_once: Callable[[], str],
    created_for: Callable[[], str | None],
    remove: Callable[[str], None],
) -> str:
    """The id of what a create whose answer got lost (`lost`) made, or of a new one.

    A create that timed out may still have made its object: `created_for` finds it (it
    matches this launch's labels) and its id is the answer; there is no retry, the time
    budget is spent. A create that got no answer at all is retried once (`CREATE_RETRY`);
    the retry's 409 with that object is resolved the same way. When the retry fails
    otherwise, an object the first attempt made is removed: it must not outlive the
    failed launch.
    """
    if isinstance(lost, EngineTimeoutError):
        found = created_for()
        if found is None:
            raise lost
        log.info(
            "a create that timed out went through; using what it made",
            extra={"container_name": name, "container_id": found[:12]},
        )
        return found
    log.warning(
        "create got no answer; retrying once", extra={"container_name": name, "error": str(lost)}
    )
    CREATE_RETRY.begin().increment(lost).sleep()  # let a create that went through finish
    try:
        return create_once()
    except DockyardError as err:
        leftover = created_for()
        if leftover is not None and isinstance(err, EngineConflictError):
            log.info(
                "the unanswered create went through; using what it made",
                extra={"container_name": name, "container_id": leftover[:12]},
            )
            return leftover
        if leftover is not None:
            try:
                remove(leftover)
            except DockyardError:
                log.warning(
                    "could not remove what a failed create made; the orphan scan will",
                    extra={"container_name": name, "container_id": leftover[:12]},
                )
        raise


def look_up_made(
    inspect: Callable[[], dict[str, Any]], *, not_yet_visible: bool = False
) -> dict[str, Any] | None:
    """What `inspect` says of an object a lost create may have made; None when unknown.

    An engine blip is looked through for a while (`LOOK_UP_RETRY`), and so is a 404 when
    `not_yet_visible` (the engine reserves a container's name before it can be
    inspected). After that the answer is unknown, and the orphan scan deals with whatever
    is left.
    """
    policy = LOOK_UP_RETRY
    if not_yet_visible:
        policy = replace(policy, retry_on=(*policy.retry_on, EngineNotFoundError))
    try:
        return call_with_retry(policy, inspect)
    except (RetriesExhaustedError, DockyardError):
        return None


def created_container(
    labels: Mapping[str, str], inspect: Callable[[], dict[str, Any]]
) -> str | None:
    """The id of a not yet started container made with `labels`, if one exists.

    The engine reserves the name before the container can be inspected, so a create
    still in progress answers 409 to the retry but 404 to an inspect for a moment:
    look again for a while before concluding there is none. Only the labels dockyard
    set are compared: the engine adds the image's own labels to the container's.
    """
    info = look_up_made(inspect, not_yet_visible=True)
    if info is None:
        return None
    found = (info.get("Config") or {}).get("Labels") or {}
    state = (info.get("State") or {}).get("Status")
    ours = all(found.get(key) == value for key, value in labels.items())
    if not ours or state != "created":
        return None
    return str(info["Id"])

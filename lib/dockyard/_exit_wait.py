"""The exit wait: wait for a worker's exit, riding out broken streams and engine blips.

A broken wait is followed by an inspect: a running container gets a new wait, an exited
one is handled from the inspected state. The answer is `Exited` (with what the engine told
of the exit) or `Lost` (why the wait was given up).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ._errors import DockyardError, EngineNotFoundError, RetriesExhaustedError

if TYPE_CHECKING:
    from ._driver import Driver, ExitResult, WorkerState
    from ._retry import RetryPolicy, RetryState
    from ._tracker import TrackedWorker

__all__ = ["Exited", "Lost", "await_exit"]

log = logging.getLogger("dockyard.exits")

_MAX_WAIT_RESUMES = 20  # consecutive broken waits on a running container before giving up
_STABLE_WAIT_S = 10.0  # a wait that held this long ends a streak of broken waits


@dataclass(frozen=True)
class Exited:
    """The worker exited (status None when unknown)."""

    status_code: int | None
    state: WorkerState | None = None  # the worker already inspected while recovering
    # What the exit wait itself said (the engine's events): the OOM kill and the run's
    # times even when the engine removed the container before any inspect.
    facts: ExitResult | None = None


@dataclass(frozen=True)
class Lost:
    """The wait was given up: the worker's outcome is `lost` for `reason`."""

    reason: str
    error: BaseException


def await_exit(driver: Driver, tracked: TrackedWorker, policy: RetryPolicy) -> Exited | Lost:
    """Wait, riding out broken streams and engine blips; see the spec's wait-error rule.

    A broken wait is followed by an inspect: a running container gets a new wait, an
    exited one is handled from the inspected state. Only a container that is gone, an
    engine unreachable for longer than the retry window, or a wait that keeps breaking
    at once (`_MAX_WAIT_RESUMES` times in a row) writes the worker off as lost.
    """
    container_id = tracked.worker.container_id
    # Begun when the wait first breaks: a wait that just ends costs nothing here.
    unreachable: RetryState | None = None
    broken: RetryState | None = None
    while True:
        if tracked.is_over:
            return Lost("detached", RuntimeError("detached"))
        opened_at = time.monotonic()
        exit_wait = tracked.current_exit_wait()
        try:
            if exit_wait is None:
                exit_wait = driver.open_wait(container_id)
                if not tracked.set_exit_wait(exit_wait):
                    return Lost("detached", RuntimeError("detached"))
            facts = exit_wait.result()
            return Exited(facts.exit_code, facts=facts)
        except DockyardError as err:  # the wait broke (typed, as every engine failure)
            if exit_wait is not None:
                tracked.drop_exit_wait(exit_wait)
            if tracked.is_over:
                return Lost("detached", err)
            wait_error = err
        if broken is None or time.monotonic() - opened_at >= _STABLE_WAIT_S:
            # The first break, or that wait held: not part of a streak of failures.
            streak = replace(policy, window_s=None, attempts=_MAX_WAIT_RESUMES)
            broken = streak.begin(tracked.ended)
        # The wait broke: find out whether the worker is still there.
        try:
            state = driver.inspect(container_id)
        except EngineNotFoundError:
            return Lost("container is gone", wait_error)
        except DockyardError as err:
            log.info(
                "wait interrupted and the engine does not answer; retrying",
                extra={"job_id": tracked.job_id, "error": str(err)},
            )
            try:
                unreachable = (unreachable or policy.begin(tracked.ended)).increment(err)
                unreachable.sleep()
            except RetriesExhaustedError:
                return Lost("engine unreachable", err)
            continue
        unreachable = None  # it answered: the window starts over
        if state.running:
            log.info(
                "wait interrupted; worker still running, resuming",
                extra={"job_id": tracked.job_id, "attempt": broken.attempt + 1},
            )
            try:
                broken = broken.increment(wait_error)
                broken.sleep()
            except RetriesExhaustedError:
                return Lost("wait kept failing", wait_error)
            continue
        return Exited(state.exit.exit_code, state)

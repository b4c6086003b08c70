"""Riding out a broken wait: wait again on a running worker, read an exited one, or give up."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from ._backend import EngineBackend
from ._docker import is_not_found
from ._loops import RetryPolicy
from ._tracker import TrackedWorker

__all__ = ["Exited", "Lost", "await_exit"]

log = logging.getLogger("dockyard.exits")

_MAX_WAIT_RESUMES = 20  # consecutive broken waits on a running container before giving up
_STABLE_WAIT_S = 10.0  # a wait that held this long ends a streak of broken waits


@dataclass(frozen=True)
class Exited:
    """The worker exited (status None when unknown)."""

    status_code: int | None
    info: dict[str, Any] | None = None  # the container already inspected while recovering


@dataclass(frozen=True)
class Lost:
    """The wait was given up: the worker's outcome is `lost` for `reason`."""

    reason: str
    error: BaseException


class _WaitFailed(Exception):
    """The engine answered a wait with an error instead of an exit."""


def await_exit(docker: EngineBackend, tracked: TrackedWorker, policy: RetryPolicy) -> Exited | Lost:
    """Wait, riding out broken streams and engine blips; see the spec's wait-error rule.

    A broken wait is followed by an inspect: a running container gets a new wait, an
    exited one is handled from the inspected state. Only a container that is gone, an
    engine unreachable for longer than the retry window, or a wait that keeps breaking
    at once (`_MAX_WAIT_RESUMES` times in a row) writes the worker off as lost.
    """
    container_id = tracked.worker.container_id
    unreachable = policy.begin(tracked.ended)
    broken = replace(policy, window_s=None, attempts=_MAX_WAIT_RESUMES).begin(tracked.ended)
    while True:
        if tracked.is_over:
            return Lost("detached", RuntimeError("detached"))
        opened_at = time.monotonic()
        exit_wait = tracked.current_exit_wait()
        try:
            if exit_wait is None:
                exit_wait = docker.open_wait(container_id)
                if not tracked.set_exit_wait(exit_wait):
                    return Lost("detached", RuntimeError("detached"))
            body = exit_wait.result()
            code = body.get("StatusCode")
            error = body.get("Error")
            failure = error.get("Message") if isinstance(error, dict) else None
            if failure:  # the wait itself failed: its status code means nothing
                raise _WaitFailed(str(failure))
            return Exited(int(code) if isinstance(code, int) else None)
        except Exception as err:
            if exit_wait is not None:
                tracked.drop_exit_wait(exit_wait)
            if tracked.is_over:
                return Lost("detached", err)
            wait_error = err
        if time.monotonic() - opened_at >= _STABLE_WAIT_S:
            broken.reset()  # that wait held: not part of a streak of failures
        # The wait broke: find out whether the worker is still there.
        try:
            info = docker.inspect(container_id)
        except Exception as err:
            if is_not_found(err):
                return Lost("container is gone", wait_error)
            log.info(
                "wait interrupted and the engine does not answer; retrying",
                extra={"job_id": tracked.job_id, "error": str(err)},
            )
            if not unreachable.sleep():
                return Lost("engine unreachable", err)
            continue
        unreachable.reset()
        state = info.get("State") or {}
        if state.get("Running") or state.get("Restarting") or state.get("Paused"):
            log.info(
                "wait interrupted; worker still running, resuming",
                extra={"job_id": tracked.job_id, "attempt": broken.attempt + 1},
            )
            if not broken.sleep():
                return Lost("wait kept failing", wait_error)
            continue
        code = state.get("ExitCode")
        return Exited(int(code) if isinstance(code, int) else None, info)

"""The one retry policy: which errors, the back-off, the count and window, and the stop."""

from __future__ import annotations

import threading
import time

import pytest

from dockyard._errors import DockerUnavailableError, EngineNotFoundError, RetriesExhaustedError
from dockyard._retry import RetryPolicy, call_with_retry

BLIP = (DockerUnavailableError,)


def test_the_back_off_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy(retry_on=BLIP, first_delay_s=0.2, max_delay_s=1.0)
    assert [policy.delay(n) for n in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_running_out_of_tries_raises_with_the_last_error_as_cause() -> None:
    state = RetryPolicy(retry_on=BLIP, attempts=2, first_delay_s=0.0).begin()
    errors = [DockerUnavailableError(f"blip {n}") for n in range(3)]
    state = state.increment(errors[0]).increment(errors[1])
    with pytest.raises(RetriesExhaustedError) as info:
        state.increment(errors[2])
    assert info.value.last_error is errors[2]
    assert info.value.__cause__ is errors[2]


def test_the_window_counts_from_the_first_try() -> None:
    now = [0.0]
    state = RetryPolicy(retry_on=BLIP, window_s=5.0).begin(clock=lambda: now[0])
    state = state.increment(DockerUnavailableError("a"))
    now[0] = 5.5
    with pytest.raises(RetriesExhaustedError):
        state.increment(DockerUnavailableError("b"))


def test_an_error_it_does_not_retry_is_not_retried() -> None:
    state = RetryPolicy(retry_on=BLIP).begin()
    with pytest.raises(RetriesExhaustedError, match="not retried"):
        state.increment(EngineNotFoundError("inspect", 404, "gone"))


def test_the_stop_event_ends_a_back_off_at_once() -> None:
    stop = threading.Event()
    state = RetryPolicy(retry_on=BLIP, first_delay_s=30.0).begin(stop)
    state = state.increment(DockerUnavailableError("blip"))
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    with pytest.raises(RetriesExhaustedError, match="stopped"):
        state.sleep()
    assert time.monotonic() - started < 5.0


def test_call_with_retry_retries_blips_and_passes_other_errors_through() -> None:
    policy = RetryPolicy(retry_on=BLIP, attempts=3, first_delay_s=0.0)
    answers: list[BaseException | str] = [DockerUnavailableError("1"), DockerUnavailableError("2")]
    answers.append("ok")

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert call_with_retry(policy, call) == "ok"
    gone = EngineNotFoundError("inspect", 404, "gone")
    with pytest.raises(EngineNotFoundError) as info:
        call_with_retry(policy, lambda: (_ for _ in ()).throw(gone))
    assert info.value is gone


def test_raise_last_gives_the_callers_the_engines_own_error() -> None:
    policy = RetryPolicy(retry_on=BLIP, attempts=1, first_delay_s=0.0)
    last = DockerUnavailableError("still down")
    errors = iter([DockerUnavailableError("down"), last])

    def call() -> None:
        raise next(errors)

    with pytest.raises(DockerUnavailableError) as info:
        call_with_retry(policy, call, raise_last=True)
    assert info.value is last

"""A worker's output through the manager, on the fake engine: attached before the start,
lines to the listener, the tail on the outcome and in the exit report, masked; detached
and failed launches stop reading."""

from __future__ import annotations

import pytest

from dockyard.testing import FakeDockerAPI, RecordingReporter, api_error
from support.listeners import ListenerRecorder
from support.rig import fake_manager, job
from support.threads import ThreadBaseline

SECRET = "an-api-token-0123456789"


@pytest.fixture
def reporter() -> RecordingReporter:
    return RecordingReporter()


@pytest.fixture
def recorder() -> ListenerRecorder:
    return ListenerRecorder()


def test_lines_reach_the_listener_and_the_tail_masked_and_in_order(
    api: FakeDockerAPI, reporter: RecordingReporter, recorder: ListenerRecorder
) -> None:
    with fake_manager(api, reporter, recorder, log_tail_lines=3) as manager:
        worker = manager.spawn_worker(job("job-1", token=SECRET))
        api.write_output(worker.container_id, b"one\ntwo ")
        api.write_output(worker.container_id, b"token " + SECRET[:5].encode(), stream=1)
        api.write_output(worker.container_id, SECRET[5:].encode() + b" end\n", stream=1)
        api.write_output(worker.container_id, b"oops\n", stream=2)
        api.exit(worker.container_id, 3)
        outcome = manager.wait_for_worker("job-1", timeout=10)

    assert recorder.output["job-1"] == [
        ("stdout", "one"),
        ("stdout", "two token *** end"),
        ("stderr", "oops"),
    ]
    assert outcome.log_tail == ("one", "two token *** end", "oops")
    (report,) = reporter.of("worker_exit")
    assert report.extras["logTail"] == "one\ntwo token *** end\noops"
    assert SECRET not in repr(reporter.reports)


def test_a_worker_without_output_has_an_empty_tail_and_no_tail_extra(
    api: FakeDockerAPI, reporter: RecordingReporter, recorder: ListenerRecorder
) -> None:
    with fake_manager(api, reporter, recorder) as manager:
        worker = manager.spawn_worker(job("job-1"))
        api.exit(worker.container_id, 1)
        outcome = manager.wait_for_worker("job-1", timeout=10)

    assert outcome.log_tail == ()
    (report,) = reporter.of("worker_exit")
    assert "logTail" not in report.extras


def test_an_attach_the_engine_refuses_leaves_the_worker_running_without_output(
    api: FakeDockerAPI, reporter: RecordingReporter, recorder: ListenerRecorder
) -> None:
    api.failures["attach"] = [api_error(500, "attach refused")]
    with fake_manager(api, reporter, recorder) as manager:
        worker = manager.spawn_worker(job("job-1"))
        api.exit(worker.container_id, 0)
        outcome = manager.wait_for_worker("job-1", timeout=10)

    assert outcome.status == "succeeded"
    assert outcome.log_tail == ()
    assert "job-1" not in recorder.output


def test_a_failed_start_stops_reading_and_close_leaves_no_reader(
    thread_baseline: ThreadBaseline,
    api: FakeDockerAPI,
    reporter: RecordingReporter,
    recorder: ListenerRecorder,
) -> None:
    api.failures["start"] = [api_error(500, "start refused")]
    manager = fake_manager(api, reporter, recorder)
    with pytest.raises(Exception, match="start refused"):
        manager.spawn_worker(job("job-1"))
    manager.spawn_worker(job("job-2"))  # runs on, detached by close
    manager.close()

    thread_baseline.assert_no_new_threads(timeout=5.0)


def test_streaming_off_attaches_nothing(
    api: FakeDockerAPI, reporter: RecordingReporter, recorder: ListenerRecorder
) -> None:
    with fake_manager(api, reporter, recorder, stream_output=False) as manager:
        worker = manager.spawn_worker(job("job-1"))
        api.exit(worker.container_id, 0)
        manager.wait_for_worker("job-1", timeout=10)

    assert "attach" not in api.call_names()

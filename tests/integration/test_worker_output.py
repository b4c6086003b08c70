"""A worker's output on the real engine: every line live to the listener, the tail on the
outcome and in Sentry, masked, with AutoRemove, and the drop counter of a slow listener."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import docker
from prometheus_client import CollectorRegistry

from dockyard import ContainerManager, ProjectConfig, WorkerJob
from promscrape import Scrape
from support.hosts import StaticProjects
from support.listeners import ListenerRecorder
from support.sentry import CapturedEvents

WAIT_S = 120.0
SECRET = "tok-3f9a8c7e2b1d"


class Credentials:
    def get_project_credentials(self, project_id: str) -> Mapping[str, str]:
        return {"API_TOKEN": SECRET}


def numbered_lines(count: int) -> list[str]:
    loop = f'i=1; while [ $i -le {count} ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done'
    return ["sh", "-c", loop]


def gone(client: docker.DockerClient, container_id: str) -> bool:
    return not [c for c in client.api.containers(all=True) if c["Id"] == container_id]


def test_an_auto_removed_worker_delivers_all_10000_lines_of_each_stream_in_order(
    make_manager: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
    instance_id: str,
) -> None:
    registry = CollectorRegistry()
    recorder = ListenerRecorder()
    manager = make_manager(listener=recorder, metrics_registry=registry)
    job = WorkerJob(f"{instance_id}-chatty", "trello", {}, command=numbered_lines(10_000))
    worker = manager.spawn_worker(job)

    outcome = manager.wait_for_worker(job.id or "", timeout=WAIT_S)

    assert outcome.status == "succeeded", outcome
    got = Scrape.of(registry)
    read = {s: got.value("dockyard_log_lines_total", {"stream": s}) for s in ("stdout", "stderr")}
    assert read == {"stdout": 10_000, "stderr": 10_000}  # the engine's stream had every line
    assert got.value("dockyard_log_lines_dropped_total") == 0  # and the listener kept up
    assert recorder.lines(job.id or "", "stdout") == [f"out {i}" for i in range(1, 10_001)]
    assert recorder.lines(job.id or "", "stderr") == [f"err {i}" for i in range(1, 10_001)]
    both = recorder.lines(job.id or "")
    assert len(outcome.log_tail) == 50
    assert list(outcome.log_tail) == both[-50:]
    # The two streams interleave as the engine read them; the last line of one is last.
    assert outcome.log_tail[-1] in {"out 10000", "err 10000"}
    assert gone(docker_client, worker.container_id)  # AutoRemove did its work


def test_a_worker_that_prints_a_line_and_exits_at_once_delivers_it(
    make_manager: Callable[..., ContainerManager], instance_id: str
) -> None:
    recorder = ListenerRecorder()
    manager = make_manager(listener=recorder)
    quick = WorkerJob(f"{instance_id}-quick", "trello", {}, command=["echo", "hello, world"])
    bare = WorkerJob(
        f"{instance_id}-bare", "trello", {}, command=["sh", "-c", "printf 'no newline'; exit 1"]
    )
    manager.spawn_worker(quick)
    manager.spawn_worker(bare)

    first = manager.wait_for_worker(quick.id or "", timeout=WAIT_S)
    second = manager.wait_for_worker(bare.id or "", timeout=WAIT_S)

    assert recorder.lines(quick.id or "") == ["hello, world"]
    assert first.log_tail == ("hello, world",)
    assert recorder.output[bare.id or ""] == [("stdout", "no newline")]
    assert second.status == "failed"
    assert second.log_tail == ("no newline",)


def test_a_secret_printed_in_two_writes_is_masked_in_lines_tail_and_sentry(
    make_manager: Callable[..., ContainerManager],
    instance_id: str,
    sentry_events: CapturedEvents,
) -> None:
    recorder = ListenerRecorder()
    manager = make_manager(
        listener=recorder,
        credentials=Credentials(),
        projects=StaticProjects(ProjectConfig("proj-out")),
    )
    half = len(SECRET) // 2
    script = (
        f"printf 'token=%s' '{SECRET[:half]}'; sleep 0.2; printf '%s done\\n' '{SECRET[half:]}';"
        f"printf 'wrapped: {SECRET[:half]}\\n'; sleep 0.2; printf '{SECRET[half:]} end\\n' >&1;"
        'echo "from env: $API_TOKEN" >&2; exit 3'
    )
    job = WorkerJob(
        f"{instance_id}-secret",
        "trello",
        {"projectId": "proj-out"},
        command=["sh", "-c", script],
    )
    manager.spawn_worker(job)

    outcome = manager.wait_for_worker(job.id or "", timeout=WAIT_S)

    assert outcome.status == "failed"
    lines = recorder.lines(job.id or "")
    # In order within each stream. A line that may end in the start of a secret waits for
    # its stream's next line, so a line of the other stream can overtake it.
    assert [line for line in lines if line != "from env: ***"] == [
        "token=*** done",
        "wrapped: ***",
        "*** end",
    ]
    assert lines.count("from env: ***") == 1 and len(lines) == 4
    assert sorted(outcome.log_tail) == sorted(lines)
    (event,) = sentry_events.wait_for("worker_exit", timeout=10.0)
    tail = event["extra"]["logTail"]
    assert "token=*** done" in tail
    assert "from env: ***" in tail
    everything = json.dumps([lines, outcome.log_tail, sentry_events], default=str)
    for piece in (SECRET, SECRET[:half], SECRET[half:]):
        assert piece not in everything


def test_the_timeout_event_and_outcome_carry_the_tail_so_far(
    make_manager: Callable[..., ContainerManager],
    instance_id: str,
    sentry_events: CapturedEvents,
) -> None:
    manager = make_manager(worker_timeout_s=1.5)
    job = WorkerJob(
        f"{instance_id}-slow",
        "trello",
        {},
        command=["sh", "-c", "echo working; echo still working; sleep 60"],
    )
    manager.spawn_worker(job)

    outcome = manager.wait_for_worker(job.id or "", timeout=WAIT_S)

    assert outcome.status == "timed_out"
    assert outcome.log_tail == ("working", "still working")
    (event,) = sentry_events.wait_for("worker_timeout", timeout=10.0)
    assert event["extra"]["logTail"] == "working\nstill working"


FLOOD_LINES = 40_000  # per stream: past the queue's 30,000 lines, however threads are scheduled


def test_a_listener_that_sleeps_shows_the_drop_counter(
    make_manager: Callable[..., ContainerManager], instance_id: str
) -> None:
    registry = CollectorRegistry()
    recorder = ListenerRecorder(output_delay_s=0.002)
    manager = make_manager(listener=recorder, metrics_registry=registry)
    job = WorkerJob(f"{instance_id}-flood", "trello", {}, command=numbered_lines(FLOOD_LINES))
    manager.spawn_worker(job)

    outcome = manager.wait_for_worker(job.id or "", timeout=WAIT_S)

    got = Scrape.of(registry)
    assert got.value("dockyard_log_lines_total", {"stream": "stdout"}) == FLOOD_LINES
    assert got.value("dockyard_log_lines_total", {"stream": "stderr"}) == FLOOD_LINES
    dropped = got.value("dockyard_log_lines_dropped_total")
    assert dropped > 0
    assert len(recorder.lines(job.id or "")) <= 2 * FLOOD_LINES - dropped
    assert outcome.log_tail[-1] in {
        f"out {FLOOD_LINES}",
        f"err {FLOOD_LINES}",
    }  # the tail misses nothing


def test_with_streaming_off_no_line_is_read(
    make_manager: Callable[..., ContainerManager], instance_id: str
) -> None:
    recorder = ListenerRecorder()
    manager = make_manager(listener=recorder, stream_output=False)
    job = WorkerJob(f"{instance_id}-quiet", "trello", {}, command=["echo", "unseen"])
    manager.spawn_worker(job)

    outcome = manager.wait_for_worker(job.id or "", timeout=WAIT_S)

    assert outcome.status == "succeeded"
    assert recorder.lines(job.id or "") == []
    assert outcome.log_tail == ()  # auto-removed: the engine keeps no log to read

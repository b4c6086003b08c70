"""A swarm worker's output on the real swarm: its service's log followed from the service's
creation, every line live to the listener and in the tail, masked, and the stream ended at
the task's end (on the manager's node, and through the manager for a task on another one).

Runs on the swarm engines of `tests/swarm_engine.sh` (see `support.swarm`); tasks land on
either node unless a test says otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

import docker
import pytest

from dockyard import ContainerManager, ProjectConfig, WorkerJob
from support.engine import instance_containers
from support.hosts import StaticProjects
from support.listeners import ListenerRecorder
from support.swarm import on_second_node

pytestmark = pytest.mark.swarm

MakeManager = Callable[..., ContainerManager]
WAIT_S = 120.0
SECRET = "swarm-tok-5d2e9b7c41"
# The README's bound: at the exit the outcome waits at most this long for the output to end.
OUTPUT_DRAIN_S = 5.0
LONG = "trap 'exit 143' TERM; sleep 60 & wait"


class Credentials:
    def get_project_credentials(self, project_id: str) -> Mapping[str, str]:
        return {"API_TOKEN": SECRET}


def job(job_id: str, command: list[str], project_id: str | None = None) -> WorkerJob:
    return WorkerJob(
        id=job_id, type="swarm-output", data={}, command=command, project_id=project_id
    )


def numbered_lines(count: int) -> list[str]:
    loop = f'i=1; while [ $i -le {count} ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done'
    return ["sh", "-c", loop]


def test_2000_lines_of_each_stream_arrive_in_order_and_end_the_tail(
    make_swarm_manager: MakeManager,
) -> None:
    recorder = ListenerRecorder()
    manager = make_swarm_manager(listener=recorder)
    manager.spawn_worker(job("chatty", numbered_lines(2000)))

    outcome = manager.wait_for_worker("chatty", timeout=WAIT_S)

    assert outcome.status == "succeeded", outcome
    assert recorder.lines("chatty", "stdout") == [f"out {i}" for i in range(1, 2001)]
    assert recorder.lines("chatty", "stderr") == [f"err {i}" for i in range(1, 2001)]
    both = recorder.lines("chatty")
    assert len(outcome.log_tail) == 50
    assert list(outcome.log_tail) == both[-50:]
    assert outcome.log_tail[-1] in {"out 2000", "err 2000"}


def test_a_worker_that_prints_a_line_and_exits_at_once_delivers_it(
    make_swarm_manager: MakeManager,
) -> None:
    recorder = ListenerRecorder()
    manager = make_swarm_manager(listener=recorder)
    manager.spawn_worker(job("quick", ["echo", "hello, swarm"]))
    manager.spawn_worker(job("bare", ["sh", "-c", "printf 'no newline'; exit 1"]))

    quick = manager.wait_for_worker("quick", timeout=WAIT_S)
    bare = manager.wait_for_worker("bare", timeout=WAIT_S)

    assert recorder.output["quick"] == [("stdout", "hello, swarm")]
    assert quick.log_tail == ("hello, swarm",)
    assert recorder.output["bare"] == [("stdout", "no newline")]
    assert bare.status == "failed"
    assert bare.log_tail == ("no newline",)


def test_a_line_the_log_driver_cut_in_pieces_arrives_whole(
    make_swarm_manager: MakeManager,
) -> None:
    recorder = ListenerRecorder()
    manager = make_swarm_manager(listener=recorder)
    # 20,000 characters: the engine's log driver stores pieces of 16 KiB.
    manager.spawn_worker(
        job("wide", ["sh", "-c", "printf 'x%.0s' $(seq 1 20000); echo; echo after"])
    )

    outcome = manager.wait_for_worker("wide", timeout=WAIT_S)

    assert recorder.lines("wide") == ["x" * 20_000, "after"]
    assert outcome.log_tail == ("x" * 20_000, "after")


def test_a_secret_from_the_env_arrives_masked(make_swarm_manager: MakeManager) -> None:
    recorder = ListenerRecorder()
    manager = make_swarm_manager(
        listener=recorder,
        credentials=Credentials(),
        projects=StaticProjects(ProjectConfig("proj-swarm-out")),
    )
    half = len(SECRET) // 2
    script = (
        'echo "from env: $API_TOKEN" >&2;'
        f"printf 'wrapped: {SECRET[:half]}\\n'; sleep 0.2; printf '{SECRET[half:]} end\\n'"
    )
    manager.spawn_worker(
        job("secret", ["sh", "-c", script], project_id="proj-swarm-out"),
    )

    outcome = manager.wait_for_worker("secret", timeout=WAIT_S)

    assert outcome.status == "succeeded", outcome
    assert recorder.lines("secret", "stderr") == ["from env: ***"]
    assert recorder.lines("secret", "stdout") == ["wrapped: ***", "*** end"]
    assert sorted(outcome.log_tail) == sorted(recorder.lines("secret"))
    everything = json.dumps([recorder.output, outcome.log_tail], default=str)
    for piece in (SECRET, SECRET[:half], SECRET[half:]):
        assert piece not in everything


def test_the_stream_ends_with_the_task_and_does_not_hold_the_outcome(
    make_swarm_manager: MakeManager,
) -> None:
    recorder = ListenerRecorder()
    manager = make_swarm_manager(listener=recorder)
    manager.spawn_worker(job("brief", ["sh", "-c", "echo done"]))
    running_at = time.monotonic()  # the task runs (or ended) once the spawn returns

    outcome = manager.wait_for_worker("brief", timeout=WAIT_S)

    # A followed service log never ends by itself: left open, it would hold the outcome
    # for the whole drain bound. It ends with the task instead.
    assert time.monotonic() - running_at < OUTPUT_DRAIN_S
    assert outcome.log_tail == ("done",)
    assert recorder.lines("brief") == ["done"]


def test_a_timed_out_worker_keeps_the_lines_so_far(make_swarm_manager: MakeManager) -> None:
    recorder = ListenerRecorder()
    manager = make_swarm_manager(listener=recorder, worker_timeout_s=3)
    manager.spawn_worker(job("slow", ["sh", "-c", "echo working; echo still working; " + LONG]))

    outcome = manager.wait_for_worker("slow", timeout=WAIT_S)

    assert outcome.status == "timed_out"
    assert outcome.log_tail == ("working", "still working")
    assert recorder.lines("slow") == ["working", "still working"]


def test_a_task_on_another_node_streams_through_the_manager(
    make_swarm_manager: MakeManager, swarm_client: docker.DockerClient, swarm_instance: str
) -> None:
    with on_second_node(swarm_client) as second:
        recorder = ListenerRecorder()
        manager = make_swarm_manager(listener=recorder)
        try:
            manager.spawn_worker(job("far", numbered_lines(500)))
            ran_there = [c.id for c in instance_containers(second, swarm_instance)]
            outcome = manager.wait_for_worker("far", timeout=WAIT_S)
        finally:
            manager.close()
            for container in instance_containers(second, swarm_instance):
                container.remove(force=True)

    assert ran_there, "the task did not run on the second node"
    assert outcome.status == "succeeded", outcome
    assert recorder.lines("far", "stdout") == [f"out {i}" for i in range(1, 501)]
    assert recorder.lines("far", "stderr") == [f"err {i}" for i in range(1, 501)]
    assert list(outcome.log_tail) == recorder.lines("far")[-50:]

"""Orphan reaping and re-attaching after a restart (spec §8), on a real engine.

"Orphans" are made the way a crashed router leaves them: containers created directly with
docker-py that carry this router instance's labels, no manager tracking them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

import dockyard
from dockyard import (
    ContainerManager,
    NoWorkerSlotError,
    WorkerJob,
)
from faultproxy import FaultRule
from support.listeners import ListenerRecorder
from support.threads import eventually

pytestmark = pytest.mark.docker

OUTCOME_TIMEOUT_S = 30.0
# A shell that ends at once on SIGTERM (a bare `sleep` as PID 1 ignores it).
LONG_RUNNER = ["sh", "-c", "trap 'exit 143' TERM; sleep 60 & wait"]


def deadline_label(moment: datetime) -> str:
    """The `cascade.deadline` label format: ISO 8601, UTC, milliseconds."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def label_of(client: docker.DockerClient, container_id: str) -> str:
    return str(client.api.inspect_container(container_id)["Config"]["Labels"]["cascade.deadline"])


class Containers:
    """Creates containers directly on the engine and removes them at teardown."""

    def __init__(self, client: docker.DockerClient, image: str, instance_id: str) -> None:
        self.api = client.api
        self.image = image
        self.instance_id = instance_id
        self.created: list[str] = []

    def labels(
        self,
        job_id: str,
        *,
        deadline: datetime | None,
        instance: str | None = None,
        managed: str = "true",
    ) -> dict[str, str]:
        labels = {
            "cascade.managed": managed,
            "cascade.router.instance": instance or self.instance_id,
            "cascade.job.id": job_id,
            "cascade.job.type": "orphan-test",
        }
        if deadline is not None:
            labels["cascade.deadline"] = deadline_label(deadline)
        return labels

    def run(self, labels: dict[str, str], command: list[str] | None = None) -> str:
        cid = self.create(labels, command)
        self.api.start(cid)
        return cid

    def create(self, labels: dict[str, str], command: list[str] | None = None) -> str:
        host_config = self.api.create_host_config(network_mode="none")
        cid = str(
            self.api.create_container(
                self.image,
                command or LONG_RUNNER,
                labels=labels,
                host_config=host_config,
                name=f"orphan-test-{uuid.uuid4().hex[:12]}",
            )["Id"]
        )
        self.created.append(cid)
        return cid

    def exited(self, labels: dict[str, str]) -> str:
        cid = self.run(labels, ["true"])
        self.api.wait(cid, timeout=30)
        return cid

    def state(self, cid: str) -> str | None:
        try:
            return str(self.api.inspect_container(cid)["State"]["Status"])
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as err:  # Podman: 500 "no container with ID" when gone
            if "no container with id" in str(err).lower():
                return None
            raise

    def cleanup(self) -> None:
        for cid in self.created:
            try:
                self.api.remove_container(cid, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as err:
                if err.status_code != 409:
                    raise


@pytest.fixture
def containers(
    docker_client: docker.DockerClient, test_image: str, instance_id: str
) -> Iterator[Containers]:
    made = Containers(docker_client, test_image, instance_id)
    yield made
    made.cleanup()  # before instance_id's leak check: some carry its label on purpose


@pytest.fixture
def manager_with(
    make_manager: Callable[..., ContainerManager],
) -> Callable[..., tuple[ContainerManager, ListenerRecorder]]:
    def make(**overrides: Any) -> tuple[ContainerManager, ListenerRecorder]:
        recorder = ListenerRecorder()
        settings: dict[str, Any] = {"docker_network": "none"}
        settings.update(overrides)
        return make_manager(listener=recorder, **settings), recorder

    return make


# -- orphan scan ---------------------------------------------------------------------------


def test_scan_reaps_only_this_instances_untracked_overdue_and_exited_containers(
    containers, manager_with, sentry_events
):
    manager, recorder = manager_with(worker_timeout_s=1.0)
    now = datetime.now(UTC)
    past = now - timedelta(seconds=30)
    overdue = containers.run(containers.labels("overdue", deadline=past))
    unlabelled_old = containers.run(containers.labels("unlabelled-old", deadline=None))
    exited = containers.exited(containers.labels("exited", deadline=None))
    fresh = containers.run(containers.labels("fresh", deadline=now + timedelta(hours=1)))
    just_created = containers.create(containers.labels("creating", deadline=past))
    other_instance = containers.run(
        containers.labels("other", deadline=past, instance=containers.instance_id + "-other")
    )
    unmanaged = containers.run(containers.labels("unmanaged", deadline=past, managed="false"))
    unlabelled = containers.run({})
    # Without a deadline label a container is overdue once older than worker_timeout_s;
    # `Created` has whole seconds.
    created = containers.api.inspect_container(unlabelled_old)["Created"]
    started = datetime.fromisoformat(created[:19] + "+00:00")
    eventually(lambda: datetime.now(UTC) > started + timedelta(seconds=2.5), timeout=10)

    handled = manager.scan_and_cleanup_orphans()

    assert sorted(handled) == sorted([overdue, unlabelled_old, exited])
    for cid in (overdue, unlabelled_old, exited):
        assert containers.state(cid) is None
    untouched = (fresh, other_instance, unmanaged, unlabelled)
    for cid in untouched:
        assert containers.state(cid) == "running"
    assert containers.state(just_created) == "created"  # may be mid-launch: left alone
    with recorder.lock:
        stopped = dict(recorder.orphans)
    assert sorted(stopped) == sorted([overdue, unlabelled_old])  # exited ones: no callback
    assert stopped[overdue]["cascade.job.id"] == "overdue"
    assert stopped[unlabelled_old]["cascade.job.id"] == "unlabelled-old"
    assert sentry_events.with_source("orphan_cleanup_scan") == []
    # A second scan finds nothing more to do.
    assert manager.scan_and_cleanup_orphans() == []


def test_scan_never_touches_tracked_workers_even_past_their_deadline(containers, manager_with):
    manager, recorder = manager_with()
    worker = manager.spawn_worker(WorkerJob(id="tracked", type="t", command=LONG_RUNNER))
    untracked = containers.run(
        containers.labels("untracked", deadline=datetime.now(UTC) + timedelta(minutes=10))
    )
    # Look at the world an hour from now: every container's deadline has passed.
    later = datetime.now(UTC) + timedelta(hours=1)
    manager._parts.reaper.clock = lambda: later

    assert manager.scan_and_cleanup_orphans() == [untracked]
    assert containers.state(worker.container_id) == "running"
    assert manager.get_active_worker_count() == 1
    assert manager.kill_worker("tracked")
    assert manager.wait_for_worker("tracked", OUTCOME_TIMEOUT_S).status == "timed_out"
    assert [cid for cid, _ in recorder.orphans] == [untracked]


def test_a_list_failure_is_reported_as_orphan_cleanup_scan(
    containers, proxy, proxied, manager_with, sentry_events
):
    manager, _ = manager_with(docker_client=proxied)
    overdue = containers.run(
        containers.labels("overdue", deadline=datetime.now(UTC) - timedelta(seconds=5))
    )
    proxy.add_rule(FaultRule(op="list", action="fail", status=500, message="list broke"))

    assert manager.scan_and_cleanup_orphans() == []
    (event,) = sentry_events.with_source("orphan_cleanup_scan")
    assert event["level"] == "error"  # the original's level
    assert containers.state(overdue) == "running"
    assert manager.scan_and_cleanup_orphans() == [overdue]  # the next scan recovers


def test_one_bad_container_does_not_stop_the_scan(containers, proxy, proxied, manager_with):
    manager, recorder = manager_with(docker_client=proxied)
    past = datetime.now(UTC) - timedelta(seconds=5)
    bad = containers.run(containers.labels("bad", deadline=past))
    good = containers.run(containers.labels("good", deadline=past))
    # Every call about the bad container fails (stop, and the forced removal after it).
    rule = proxy.add_rule(
        FaultRule(op="any", action="fail", status=500, times=None, match=lambda m, p: bad in p)
    )

    assert manager.scan_and_cleanup_orphans() == [good]
    assert rule.hits >= 2
    assert containers.state(good) is None
    assert containers.state(bad) == "running"
    assert [cid for cid, _ in recorder.orphans] == [good]
    proxy.clear_rules()
    assert manager.scan_and_cleanup_orphans() == [bad]


def test_the_orphan_loop_starts_scans_and_stops(containers, manager_with, thread_baseline):
    manager, recorder = manager_with()
    with pytest.raises(ValueError):
        manager.start_orphan_cleanup(interval=0)
    overdue = containers.run(
        containers.labels("loop", deadline=datetime.now(UTC) - timedelta(seconds=5))
    )
    manager.start_orphan_cleanup(interval=0.2)
    manager.start_orphan_cleanup(interval=0.2)  # already running: no second loop
    loops = [t for t in threading.enumerate() if t.name == "dockyard-orphan-cleanup"]
    assert len(loops) == 1
    eventually(lambda: containers.state(overdue) is None)
    eventually(lambda: len(recorder.orphans) == 1)
    manager.stop_orphan_cleanup()
    manager.stop_orphan_cleanup()  # idempotent
    assert not loops[0].is_alive()
    # Stopped means stopped: a new orphan stays until someone scans again.
    another = containers.run(
        containers.labels("after", deadline=datetime.now(UTC) - timedelta(seconds=5))
    )
    time.sleep(0.6)
    assert containers.state(another) == "running"
    manager.start_orphan_cleanup(interval=0.2)  # and it can start again
    eventually(lambda: containers.state(another) is None)
    manager.close()  # close stops the loop too
    thread_baseline.assert_no_new_threads()


# -- adoption ------------------------------------------------------------------------------


def test_adopted_worker_gets_exactly_one_outcome(docker_client, manager_with, thread_baseline):
    first, first_seen = manager_with()
    worker = first.spawn_worker(
        WorkerJob(id="adopt-me", type="t", command=["sh", "-c", "sleep 3; exit 7"])
    )
    first.detach_all()
    first.close()
    assert first_seen.finished == []

    second, second_seen = manager_with(max_workers=1)
    adopted = second.adopt_workers()
    assert [w.container_id for w in adopted] == [worker.container_id]
    (mine,) = adopted
    assert (mine.job_id, mine.container_name, mine.job_type) == (
        "adopt-me",
        worker.container_name,
        "t",
    )
    assert deadline_label(mine.deadline) == label_of(docker_client, mine.container_id)
    assert second.adopt_workers() == []  # already tracked
    # The adopted worker holds the only slot.
    with pytest.raises(NoWorkerSlotError):
        second.spawn_worker(WorkerJob(id="no-room", type="t", command=["true"]), slot_timeout=0)

    outcome = second.wait_for_worker("adopt-me", OUTCOME_TIMEOUT_S)
    assert (outcome.status, outcome.exit_code) == ("failed", 7)
    second.spawn_worker(WorkerJob(id="room", type="t", command=["true"]), slot_timeout=0)
    assert second.wait_for_worker("room", OUTCOME_TIMEOUT_S).status == "succeeded"
    second.close()
    assert second_seen.outcomes("adopt-me") == [outcome]
    assert second_seen.started == ["adopt-me", "room"]
    assert first_seen.finished == []
    thread_baseline.assert_no_new_threads()


def test_adopted_worker_still_times_out_at_its_labelled_deadline(
    docker_client, manager_with, sentry_events
):
    first, _ = manager_with(worker_timeout_s=3.0)
    worker = first.spawn_worker(WorkerJob(id="overrun", type="t", command=LONG_RUNNER))
    first.detach_all()
    first.close()

    second, seen = manager_with()  # its own timeout is the default 30 minutes
    (adopted,) = second.adopt_workers()
    assert adopted.container_id == worker.container_id
    assert deadline_label(adopted.deadline) == label_of(docker_client, adopted.container_id)
    outcome = second.wait_for_worker("overrun", OUTCOME_TIMEOUT_S)
    assert outcome.status == "timed_out"
    (event,) = sentry_events.wait_for("worker_timeout")
    assert event["extra"]["jobId"] == "overrun"
    second.close()
    assert seen.outcomes("overrun") == [outcome]


def test_an_adopter_can_detach_again_and_a_third_manager_adopts(manager_with, thread_baseline):
    first, _ = manager_with()
    first.spawn_worker(WorkerJob(id="passed-on", type="t", command=LONG_RUNNER))
    first.close()  # close detaches

    second, second_seen = manager_with()
    assert len(second.adopt_workers()) == 1
    closer = threading.Thread(target=second.close)
    closer.start()
    closer.join(20)  # the adopted wait must not hold close() until the worker exits
    assert not closer.is_alive()
    assert second_seen.finished == []

    third, third_seen = manager_with()
    assert [w.job_id for w in third.adopt_workers()] == ["passed-on"]
    assert third.kill_worker("passed-on")
    assert third.wait_for_worker("passed-on", OUTCOME_TIMEOUT_S).status == "timed_out"
    third.close()
    assert len(third_seen.finished) == 1
    thread_baseline.assert_no_new_threads()


def test_adoption_takes_only_this_instances_running_workers(containers, manager_with):
    future = datetime.now(UTC) + timedelta(minutes=5)
    mine = containers.run(containers.labels("mine", deadline=future))
    containers.run(containers.labels("theirs", deadline=future, instance="someone-else"))
    containers.run(containers.labels("unmanaged", deadline=future, managed="false"))
    containers.exited(containers.labels("finished", deadline=future))

    manager, recorder = manager_with()
    adopted = manager.adopt_workers()
    assert [(w.job_id, w.container_id) for w in adopted] == [("mine", mine)]
    assert recorder.started == ["mine"]
    assert manager.kill_worker("mine")
    assert manager.wait_for_worker("mine", OUTCOME_TIMEOUT_S).status == "timed_out"
    assert containers.state(mine) is None  # dockyard removes what it watched


# -- an adopted worker's output ------------------------------------------------------------

NUMBERED_LINES = 120
# One numbered line every ~50 ms, on stdout, and every tenth on stderr too.
COUNTER = [
    "sh",
    "-c",
    f"i=0; while [ $i -lt {NUMBERED_LINES} ]; do echo line-$i; "
    "if [ $((i % 10)) -eq 0 ]; then echo err-$i >&2; fi; i=$((i+1)); sleep 0.05; done",
]


def test_an_adopter_delivers_the_output_from_where_the_closed_manager_stopped(
    manager_with, redis_url, thread_baseline
):
    """Two restarts among three managers: every line reaches one listener, once.

    The first manager reads the live stream (attached before the start, no engine times:
    its mark comes from the engine's log at its close); the second adopts the worker,
    follows its log after that mark and is closed in turn (its mark: the engine time of the
    last line it delivered); the third goes on from there to the exit. The marks are left
    in Redis at `redis_url`.
    """
    first, first_seen = manager_with(redis_url=redis_url)
    first.spawn_worker(WorkerJob(id="counting", type="t", command=COUNTER))
    eventually(lambda: len(first_seen.lines("counting", "stdout")) >= 20, timeout=30)
    first.close()  # a restart: the worker runs on, printing
    time.sleep(0.5)  # lines printed while no manager reads

    second, second_seen = manager_with(redis_url=redis_url)
    assert [w.job_id for w in second.adopt_workers()] == ["counting"]
    eventually(lambda: len(second_seen.lines("counting", "stdout")) >= 30, timeout=30)
    second.close()
    time.sleep(0.5)

    third, third_seen = manager_with(redis_url=redis_url)
    assert [w.job_id for w in third.adopt_workers()] == ["counting"]
    outcome = third.wait_for_worker("counting", OUTCOME_TIMEOUT_S)
    assert (outcome.status, outcome.exit_code) == ("succeeded", 0)
    third.close()

    parts = [seen.lines("counting") for seen in (first_seen, second_seen, third_seen)]
    everything = [line for part in parts for line in part]
    stdout = [line for line in everything if line.startswith("line-")]
    stderr = [line for line in everything if line.startswith("err-")]
    assert stdout == [f"line-{i}" for i in range(NUMBERED_LINES)]  # none twice, none lost
    assert stderr == [f"err-{i}" for i in range(0, NUMBERED_LINES, 10)]
    # Each adopter went on from the last line before it, not from the worker's start.
    first_count = len(first_seen.lines("counting", "stdout"))
    second_count = len(second_seen.lines("counting", "stdout"))
    assert second_seen.lines("counting", "stdout")[0] == f"line-{first_count}"
    assert third_seen.lines("counting", "stdout")[0] == f"line-{first_count + second_count}"
    # The adopted worker's tail is its own output, read live.
    assert outcome.log_tail[-1] == f"line-{NUMBERED_LINES - 1}"
    thread_baseline.assert_no_new_threads()


LAST_LINES = 50
# One line, then on SIGUSR1 the last lines at once and the exit (a signal, not an exec: it
# reaches the worker within milliseconds of the adoption).
ENDS_ON_USR1 = [
    "sh",
    "-c",
    f'trap \'i=1; while [ $i -le {LAST_LINES} ]; do echo "last $i"; i=$((i+1)); done; '
    "echo err-last >&2; exit 0' USR1; echo first; while true; do sleep 0.05; done",
]


def test_workers_that_end_right_after_their_adoption_deliver_their_last_lines(
    manager_with, redis_url, docker_client, thread_baseline
):
    """An adopter reads the engine's log. Podman's AutoRemove took the log with the
    container before a follow begun less than about 0.4 s earlier had read its end: every
    last line was lost. Auto-removed workers (the default) end here just after the
    adoption; the adopter delivers all of their lines after the first manager's."""
    first, first_seen = manager_with(redis_url=redis_url, max_workers=4)
    jobs = [f"ending-{n}" for n in range(4)]
    for job_id in jobs:
        first.spawn_worker(WorkerJob(id=job_id, type="t", command=ENDS_ON_USR1))
    eventually(lambda: all(first_seen.lines(j) == ["first"] for j in jobs), timeout=30)
    first.close()

    second, second_seen = manager_with(redis_url=redis_url, max_workers=4)
    adopted = second.adopt_workers()
    assert sorted(w.job_id for w in adopted) == jobs
    for worker in reversed(adopted):  # the newest follow first
        docker_client.api.kill(worker.container_id, "SIGUSR1")
    for job_id in jobs:
        outcome = second.wait_for_worker(job_id, OUTCOME_TIMEOUT_S)
        assert (outcome.status, outcome.exit_code) == ("succeeded", 0)
    second.close()

    for job_id in jobs:
        assert second_seen.lines(job_id, "stdout") == [
            f"last {i}" for i in range(1, LAST_LINES + 1)
        ], job_id
        assert second_seen.lines(job_id, "stderr") == ["err-last"], job_id
    thread_baseline.assert_no_new_threads()


KILLED_LINES = 200  # printed 0.05 s apart: at most 20 a second
# Lines printed before the kill: far more than the repeats allowed, so a continuation from
# the worker's start (no mark) fails the test.
KILL_AFTER_LINES = 100
# A mark is left about once a second while lines are delivered; allowed: 3 s worth.
REPEATS_BOUND = 60


def test_after_a_manager_is_killed_its_adopter_repeats_at_most_a_second_or_so_of_lines(
    manager_with, redis_url, test_image, instance_id, tmp_path
):
    """A router killed (SIGKILL) never closes: its adopter goes on from the mark written
    while the worker ran, with no line lost and only the last moment's lines again."""
    command = [
        "sh",
        "-c",
        f"i=0; while [ $i -lt {KILLED_LINES} ]; do echo line-$i; "
        "if [ $((i % 10)) -eq 0 ]; then echo err-$i >&2; fi; i=$((i+1)); sleep 0.05; done",
    ]
    lines_file = tmp_path / "killed-host.lines"
    lines_file.touch()
    package_root = Path(dockyard.__file__).resolve().parents[1]  # lib/, or site-packages
    tests_root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_root), str(tests_root)])}
    code = (
        "from support.output_host import main; "
        f"main({redis_url!r}, {test_image!r}, {instance_id!r}, 'counting', "
        f"{json.dumps(command)!r}, {str(lines_file)!r})"
    )
    log_path = tmp_path / "killed-host.log"

    def killed_host_lines() -> list[tuple[str, str]]:
        text = lines_file.read_text(encoding="utf-8")
        whole = text[: text.rfind("\n") + 1]  # a line cut by the kill is not whole
        return [tuple(entry.split("\t", 1)) for entry in whole.splitlines()]  # type: ignore[misc]

    with log_path.open("wb") as out:
        host = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            eventually(
                lambda: sum(s == "stdout" for s, _ in killed_host_lines()) >= KILL_AFTER_LINES,
                timeout=60,
            )
        finally:
            host.kill()  # SIGKILL: no close, no mark at a close
            host.wait()
    assert host.returncode == -signal.SIGKILL, log_path.read_text()
    first = killed_host_lines()

    second, second_seen = manager_with(redis_url=redis_url)
    assert [w.job_id for w in second.adopt_workers()] == ["counting"]
    outcome = second.wait_for_worker("counting", OUTCOME_TIMEOUT_S)
    assert (outcome.status, outcome.exit_code) == ("succeeded", 0)
    second.close()

    for stream, prefix, every in (("stdout", "line", 1), ("stderr", "err", 10)):
        before = [line for s, line in first if s == stream]
        after = second_seen.lines("counting", stream)
        numbered = [f"{prefix}-{i}" for i in range(0, KILLED_LINES, every)]
        assert before == numbered[: len(before)], stream  # the killed host's, in order
        assert after, stream
        start = numbered.index(after[0])
        # The adopter went on from at or before the killed host's last line (no gap) to
        # the end, each line once.
        assert after == numbered[start:], stream
        assert start <= len(before), (stream, start, len(before))
        if stream == "stdout":
            repeats = len(before) - start
            print(f"killed after {len(before)} stdout lines; the adopter repeated {repeats}")
            assert start > 0 and repeats <= REPEATS_BOUND, (start, len(before))

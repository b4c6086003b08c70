"""An adopted worker's output goes on where the closed manager's delivery stopped.

With the fake driver (its log stamps each line as an engine does): the closing manager
leaves the engine time of the last line its listener got; the adopter follows the log after
it; without a mark it delivers from the start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

import dockyard._manager_parts
from dockyard import ActiveWorker, ContainerManager, RouterConfig, WorkerJob
from dockyard._driver import ContainerSpec
from dockyard._output import Frame, OutputPipe
from dockyard._output_marks import (
    Mark,
    MarkKeeper,
    RedisOutputMarks,
    RunningMarks,
    after_mark,
)
from dockyard._secrets import Masker
from dockyard.testing import FakeDriver, RecordingReporter
from support.listeners import ListenerRecorder
from support.threads import eventually

IMAGE = "worker:1"
NO_SECRETS = Masker(frozenset())


class MemoryMarks:
    """Marks kept in a dict, as Redis keeps them for the next router."""

    def __init__(self, marks: dict[str, tuple[Mark, float]] | None = None) -> None:
        self.marks: dict[str, tuple[Mark, float]] = dict(marks or {})
        self.puts = 0
        self.refuse = False  # as Redis does when it is not there

    def put(self, worker_id: str, mark: Mark, ttl_s: float) -> bool:
        self.puts += 1
        if self.refuse:
            return False
        self.marks[worker_id] = (mark, ttl_s)
        return True

    def take(self, worker_id: str) -> Mark | None:
        found = self.marks.pop(worker_id, None)
        return found[0] if found else None

    def drop(self, worker_id: str) -> bool:
        if self.refuse:
            return False
        self.marks.pop(worker_id, None)
        return True

    def close(self) -> None:
        pass


def manager(driver: FakeDriver, listener: ListenerRecorder, **settings: object) -> ContainerManager:
    config = RouterConfig(worker_image=IMAGE, router_instance_id="marks", **settings)  # type: ignore[arg-type]
    return ContainerManager(config, driver=driver, listener=listener, reporter=RecordingReporter())


def write(driver: FakeDriver, worker_id: str, first: int, last: int) -> None:
    for i in range(first, last):
        driver.write_output(worker_id, f"line-{i}\n".encode())


@pytest.fixture
def marks(monkeypatch: pytest.MonkeyPatch) -> MemoryMarks:
    store = MemoryMarks()
    monkeypatch.setattr(
        dockyard._manager_parts, "RedisOutputMarks", lambda redis_url, instance_id: store
    )
    return store


def test_the_adopter_delivers_the_lines_after_the_closed_managers_last(marks: MemoryMarks) -> None:
    driver = FakeDriver(images={IMAGE})
    first_seen = ListenerRecorder()
    first = manager(driver, first_seen)
    worker = first.spawn_worker(WorkerJob("job-1", "build", {}))
    write(driver, worker.container_id, 0, 5)
    eventually(lambda: len(first_seen.lines("job-1")) == 5)
    first.close()  # the worker runs on
    (mark, ttl) = marks.marks[worker.container_id]
    assert ttl > 0
    # stderr printed nothing: it owes nothing before stdout's last line
    assert set(mark.times) == {"stdout", "stderr"}
    assert mark.times["stderr"] == mark.times["stdout"]
    write(driver, worker.container_id, 5, 8)  # while no manager reads

    second_seen = ListenerRecorder()
    with manager(driver, second_seen) as second:
        assert [w.job_id for w in second.adopt_workers()] == ["job-1"]
        assert marks.marks == {}  # taken
        write(driver, worker.container_id, 8, 10)
        eventually(lambda: len(second_seen.lines("job-1")) == 5)
        driver.exit(worker.container_id, 0)
        outcome = second.wait_for_worker("job-1", timeout=5)
    assert first_seen.lines("job-1") == [f"line-{i}" for i in range(5)]
    assert second_seen.lines("job-1") == [f"line-{i}" for i in range(5, 10)]
    assert outcome.log_tail[-1] == "line-9"


def test_without_a_mark_the_adopter_delivers_from_the_workers_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver = FakeDriver(images={IMAGE})
    first_seen = ListenerRecorder()
    first = manager(driver, first_seen, redis_url="")  # nowhere to leave a mark
    worker = first.spawn_worker(WorkerJob("job-1", "build", {}))
    write(driver, worker.container_id, 0, 3)
    eventually(lambda: len(first_seen.lines("job-1")) == 3)
    first.close()

    second_seen = ListenerRecorder()
    with manager(driver, second_seen, redis_url="") as second:
        caplog.set_level("INFO", "dockyard.orphans")
        second.adopt_workers()
        write(driver, worker.container_id, 3, 4)
        eventually(lambda: len(second_seen.lines("job-1")) == 4)
        driver.exit(worker.container_id, 0)
        second.wait_for_worker("job-1", timeout=5)
    assert second_seen.lines("job-1") == [f"line-{i}" for i in range(4)]
    assert "delivering it from the worker's start" in caplog.text


def test_a_manager_without_a_listener_for_output_leaves_no_mark(marks: MemoryMarks) -> None:
    class Quiet(ListenerRecorder):
        on_worker_output = dockyard.WorkerLifecycleListener.on_worker_output  # not overridden

    driver = FakeDriver(images={IMAGE})
    first = manager(driver, Quiet())
    worker = first.spawn_worker(WorkerJob("job-1", "build", {}))
    write(driver, worker.container_id, 0, 3)
    first.close()
    assert marks.marks == {}


def test_a_worker_that_exited_leaves_no_mark(marks: MemoryMarks) -> None:
    driver = FakeDriver(images={IMAGE})
    seen = ListenerRecorder()
    with manager(driver, seen) as jobs:
        worker = jobs.spawn_worker(WorkerJob("job-1", "build", {}))
        write(driver, worker.container_id, 0, 3)
        driver.exit(worker.container_id, 0)
        jobs.wait_for_worker("job-1", timeout=5)
    assert marks.marks == {}


# -- the pieces -------------------------------------------------------------------------------


def active(deadline_in_s: float = 60.0) -> ActiveWorker:
    now = datetime.now(UTC)
    return ActiveWorker("job-1", "c" * 64, "w", "img", now, now + timedelta(seconds=deadline_in_s))


class Sink:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def output(self, worker: ActiveWorker, stream: str, line: str) -> None:
        self.lines.append(line)

    def output_lines(
        self,
        worker: ActiveWorker,
        stream: str,
        lines: Sequence[str],
        stopped: Callable[[], bool],
    ) -> int:
        for done, line in enumerate(lines):
            if stopped():
                return done
            self.output(worker, stream, line)
        return len(lines)


def test_each_stream_keeps_the_time_of_its_own_last_line_delivered() -> None:
    pool = ThreadPoolExecutor(1)
    sink = Sink()
    # "…abc" could begin the secret "abcdef": that line is held until its stream's next
    # line (or the end), and the stderr line overtakes it.
    pipe = OutputPipe(Masker(frozenset({"abcdef"})), 10, sink, pool)
    pipe.bind(active())
    pipe.run_reader([(1, b"one\n", 100), (1, b"two abc\n", 200), (2, b"err\n", 300)])
    pipe.finish(1.0)
    pool.shutdown(wait=True)
    assert sink.lines == ["one", "err", "two abc"]
    delivered = pipe.delivered()
    assert delivered is not None
    assert delivered.positions == {"stdout": 2, "stderr": 1}
    assert delivered.marks == {"stdout": 200, "stderr": 300}  # the held line its own


SPEC = ContainerSpec(
    image=IMAGE, name="w", env={}, labels={}, memory_bytes=1, network="none", auto_remove=False
)


def started(driver: FakeDriver) -> str:
    worker_id = driver.create(SPEC)
    driver.start(worker_id)
    return worker_id


def test_output_without_engine_times_is_marked_through_the_drivers_log() -> None:
    driver = FakeDriver(images={IMAGE})
    worker_id = started(driver)
    driver.write_output(worker_id, b"a\nb\n")
    driver.write_output(worker_id, b"e\n", stream=2)
    driver.write_output(worker_id, b"c\n")
    pool = ThreadPoolExecutor(1)
    pipe = OutputPipe(NO_SECRETS, 10, Sink(), pool, worker_id=worker_id)
    pipe.bind(active(deadline_in_s=100.0))
    pipe.run_reader([(1, b"a\nb\n"), (2, b"e\n")])  # attached: no times
    pipe.finish(1.0)
    pool.shutdown(wait=True)
    marks = MemoryMarks()
    MarkKeeper(marks, driver.output_mark)([pipe])
    (mark, ttl) = marks.marks[worker_id]
    driver.exit(worker_id, 0)  # the log then ends where it is
    followed = list(driver.follow_output(worker_id, mark.times).frames)
    assert [frame[1] for frame in followed] == [b"c\n"]  # the one line not delivered
    assert 100 < ttl < 100 + 3700


def test_a_stream_read_but_never_delivered_goes_again_from_its_start() -> None:
    driver = FakeDriver(images={IMAGE})
    worker_id = started(driver)
    driver.write_output(worker_id, b"a\n")
    driver.write_output(worker_id, b"e\n", stream=2)
    gate = threading.Event()

    class Slow(Sink):
        def output(self, worker: ActiveWorker, stream: str, line: str) -> None:
            if stream == "stderr":
                gate.wait(5)  # still on its way when the manager closes
            super().output(worker, stream, line)

    pool = ThreadPoolExecutor(1)
    sink = Slow()
    pipe = OutputPipe(NO_SECRETS, 10, sink, pool, worker_id=worker_id)
    pipe.bind(active())
    pipe.run_reader([(1, b"a\n", 1), (2, b"e\n", 2)])
    eventually(lambda: sink.lines == ["a"])
    marks = MemoryMarks()
    MarkKeeper(marks, driver.output_mark)([pipe])
    gate.set()
    pool.shutdown(wait=True)
    assert marks.marks[worker_id][0] == Mark(times={"stdout": 1, "stderr": 0})


def test_redis_marks_never_raise_when_redis_is_not_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    marks = RedisOutputMarks("redis://127.0.0.1:1/0", "x")
    started = time.monotonic()
    assert not marks.put("c1", Mark(times={"stdout": 5}), 60.0)
    assert marks.take("c1") is None
    assert time.monotonic() - started < 10
    assert "could not keep where worker output was delivered" in caplog.text


# -- marks left while the workers run ---------------------------------------------------------


def test_a_killed_managers_adopter_goes_on_after_its_last_running_mark(
    marks: MemoryMarks, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = FakeDriver(images={IMAGE})
    first_seen = ListenerRecorder()
    first = manager(driver, first_seen)
    worker = first.spawn_worker(WorkerJob("job-1", "build", {}))
    write(driver, worker.container_id, 0, 5)
    driver.write_output(worker.container_id, b"err-0\n", stream=2)
    eventually(lambda: len(first_seen.lines("job-1")) == 6)
    # Left while it runs (about a second after delivery), as line counts: attached
    # output carries no engine times.
    eventually(lambda: worker.container_id in marks.marks, timeout=5)
    mark, ttl = marks.marks[worker.container_id]
    assert mark == Mark(lines={"stdout": 5, "stderr": 1})
    assert ttl > 0
    # The manager dies here, without a close: its adopter finds only this mark.
    left = MemoryMarks(marks.marks)
    monkeypatch.setattr(
        dockyard._manager_parts, "RedisOutputMarks", lambda redis_url, instance_id: left
    )
    write(driver, worker.container_id, 5, 8)
    second_seen = ListenerRecorder()
    with manager(driver, second_seen) as second:
        assert [w.job_id for w in second.adopt_workers()] == ["job-1"]
        eventually(lambda: len(second_seen.lines("job-1")) == 3)
        driver.exit(worker.container_id, 0)
        second.wait_for_worker("job-1", timeout=5)
    first.close()
    assert second_seen.lines("job-1") == [f"line-{i}" for i in range(5, 8)]


def test_a_running_workers_mark_goes_when_it_exits(marks: MemoryMarks) -> None:
    driver = FakeDriver(images={IMAGE})
    seen = ListenerRecorder()
    with manager(driver, seen) as jobs:
        worker = jobs.spawn_worker(WorkerJob("job-1", "build", {}))
        write(driver, worker.container_id, 0, 3)
        eventually(lambda: worker.container_id in marks.marks, timeout=5)
        driver.exit(worker.container_id, 0)
        jobs.wait_for_worker("job-1", timeout=5)
        eventually(lambda: marks.marks == {}, timeout=5)


def test_without_a_redis_url_no_mark_is_left_while_workers_run(
    marks: MemoryMarks,
) -> None:
    driver = FakeDriver(images={IMAGE})
    seen = ListenerRecorder()
    with manager(driver, seen, redis_url="") as jobs:
        worker = jobs.spawn_worker(WorkerJob("job-1", "build", {}))
        write(driver, worker.container_id, 0, 3)
        eventually(lambda: len(seen.lines("job-1")) == 3)
        time.sleep(1.5)  # past the first tick a mark thread would have had
        assert marks.puts == 0
        assert not [t for t in threading.enumerate() if t.name == "dockyard-output-marks"]
        driver.exit(worker.container_id, 0)
        jobs.wait_for_worker("job-1", timeout=5)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def delivering(lines: list[Frame], *, after: Mapping[str, int] | None = None) -> OutputPipe:
    """A bound pipe that read and delivered `lines` and reads on (its stream not ended)."""
    pool = ThreadPoolExecutor(1)
    pipe = OutputPipe(NO_SECRETS, 10, Sink(), pool, worker_id="c1", after=after)
    pipe.bind(active())
    pipe.add_lines(
        [("stdout" if f[0] == 1 else "stderr", f[1].decode().rstrip(), f[2]) for f in lines]
    )
    pipe.finish(0.0, delivery_s=5.0)
    pool.shutdown(wait=True)
    return pipe


def test_running_marks_are_written_when_delivery_moved_on_and_removed_at_the_end() -> None:
    store = MemoryMarks()
    running = RunningMarks(store)
    pipe = delivering([(1, b"a\n", None), (1, b"b\n", None)])
    running([pipe])
    assert store.marks["c1"][0] == Mark(lines={"stdout": 2, "stderr": 0})
    running([pipe])
    assert store.puts == 1  # nothing new delivered: nothing written
    pipe.add_lines([("stderr", "e", None)])
    pipe.finish(0.0, delivery_s=0.0)  # its delivery pool is gone: read, never delivered
    running([pipe])
    assert store.puts == 1  # read, not delivered: the mark stays where delivery is
    pipe.run_reader([])  # the output ends: the worker exited
    running([])  # no longer among the hub's pipes: it is remembered all the same
    assert store.marks == {}


def test_a_followed_workers_running_mark_is_its_engine_times() -> None:
    store = MemoryMarks()
    # Adopted after the mark {stdout: 10, stderr: 20}: one more stdout line delivered.
    pipe = delivering([(1, b"c\n", 30)], after={"stdout": 10, "stderr": 20})
    RunningMarks(store)([pipe])
    assert store.marks["c1"][0] == Mark(times={"stdout": 30, "stderr": 20})


def test_a_detached_pipe_is_left_to_the_closing_keeper() -> None:
    store = MemoryMarks()
    running = RunningMarks(store)
    pipe = delivering([(1, b"a\n", None)])
    running([pipe])
    pipe.detach()  # its reader ends too
    running([pipe])
    assert store.marks["c1"][0] == Mark(lines={"stdout": 1, "stderr": 0})


def test_after_a_refused_write_running_marks_wait_before_the_next() -> None:
    store, clock = MemoryMarks(), Clock()
    running = RunningMarks(store, monotonic=clock)
    pipe = delivering([(1, b"a\n", None)])
    store.refuse = True
    running([pipe])
    running([pipe])
    assert store.puts == 1
    store.refuse = False
    clock.now += 31.0
    running([pipe])
    assert store.puts == 2 and "c1" in store.marks
    pipe.run_reader([])  # the worker ended, while Redis fails again: its mark waits
    store.refuse = True
    running([pipe])
    store.refuse = False
    running([pipe])
    assert "c1" in store.marks
    clock.now += 31.0
    running([pipe])
    assert store.marks == {}


def test_a_mark_round_trips_and_junk_is_no_mark() -> None:
    for mark in (Mark(times={"stdout": 5, "stderr": 0}), Mark(lines={"stdout": 3, "stderr": 0})):
        assert Mark.from_json(mark.to_json()) == mark
    assert Mark.from_json('{"stdout": 7}') == Mark(times={"stdout": 7})  # as kept before
    for junk in ("nope", "[1]", '{"stdout": "x"}', '{"lines": {"other": 1}}', '{"x": true}'):
        assert Mark.from_json(junk) is None


def test_line_counts_are_found_in_the_log_and_streams_without_any_go_from_their_start() -> None:
    asked: list[Mapping[str, int]] = []

    def mark_of(worker_id: str, lines: Mapping[str, int]) -> Mapping[str, int]:
        asked.append(dict(lines))
        return {"stdout": 111}

    counts = Mark(lines={"stdout": 4, "stderr": 0})
    assert after_mark("c1", counts, mark_of) == {"stdout": 111, "stderr": 0}
    assert asked == [{"stdout": 4}]
    # A counted line the log does not show: that stream from its start, never a gap.
    missing = Mark(lines={"stdout": 4, "stderr": 2})
    assert after_mark("c1", missing, mark_of) == {"stdout": 111, "stderr": 0}
    assert after_mark("c1", Mark(times={"stdout": 9, "stderr": 8}), mark_of) == {
        "stdout": 9,
        "stderr": 8,
    }

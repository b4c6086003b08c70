"""A swarm worker's output without an engine: the followed service log on a fake API, ended
by the task poller's end hook, the rest fetched once with no line twice."""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dockyard._errors import EngineNotFoundError
from dockyard._swarm_logs import ServiceOutput, log_frames, nanos_of, since_of
from dockyard._swarm_tasks import TaskPoller

OUT, ERR = 1, 2
BASE = "2026-12-06T06:54:40"


def stamp(n: int) -> bytes:
    return f"{BASE}.{n:09d}Z".encode()


def frame(stream: int, n: int, data: bytes) -> bytes:
    payload = stamp(n) + b" " + data
    return struct.pack(">BxxxL", stream, len(payload)) + payload


class FakeSocket:
    def __init__(self) -> None:
        self.shut = threading.Event()

    def shutdown(self, how: int) -> None:
        self.shut.set()


class FakeResponse:
    """Chunks, then (when `follow`) a read blocked until the socket is shut down."""

    def __init__(self, chunks: list[bytes], *, follow: bool, broken: bool = False) -> None:
        self.chunks = chunks
        self.follow = follow
        self.broken = broken
        self.sock = FakeSocket()
        self.closed = False
        self.raw = self  # urllib3's answer

    def shutdown(self) -> None:
        self.sock.shutdown(0)

    def raise_for_status(self) -> None:
        pass

    def iter_content(self, amount: int) -> Iterator[bytes]:
        yield from self.chunks
        if self.broken:
            raise ConnectionResetError("the manager went away")
        if self.follow:
            self.sock.shut.wait(10)
            raise ConnectionError("Response ended prematurely")

    def close(self) -> None:
        # Closing from another thread would wait for the blocked read: only its reader may.
        assert self.follow is False or self.sock.shut.is_set()
        self.closed = True


class FakeAPI:
    """The client's session as `ServiceOutput` uses it; the answers are scripted per call."""

    base_url = "http+docker://localhost"
    api_version = "1.41"
    timeout = 60

    def __init__(self, follow: FakeResponse, rest: dict[int, list[bytes] | Exception]) -> None:
        self.follow = follow
        self.rest = rest
        self.calls: list[dict[str, Any]] = []

    def get(self, url: str, params: dict[str, Any], stream: bool, timeout: Any) -> FakeResponse:
        assert url == "http+docker://localhost/v1.41/services/svc/logs"
        self.calls.append({**params, "timeout": timeout})
        if params.get("follow"):
            return self.follow
        answer = self.rest[OUT if params["stdout"] else ERR]
        if isinstance(answer, Exception):
            raise answer
        return FakeResponse(answer, follow=False)


def run(operation: str, fn: Any) -> Any:
    return fn()


def lines(got: list[tuple[int, bytes]], stream: int) -> list[bytes]:
    return [data for s, data in got if s == stream]


def read_until_ended(
    output: ServiceOutput, frames: Iterator[tuple[int, bytes]], count: int
) -> list[tuple[int, bytes]]:
    """Read `count` frames of the follow, then end the task and read the rest."""
    got = [next(frames) for _ in range(count)]
    output.ended()
    got.extend(frames)
    return got


def test_frames_are_whole_however_the_answer_is_cut() -> None:
    data = frame(OUT, 1, b"one\n") + frame(ERR, 2, b"two\n") + frame(OUT, 3, b"x" * 100)
    pieces = [data[i : i + 3] for i in range(0, len(data), 3)]
    assert [(s, p[31:]) for s, p in log_frames(pieces)] == [
        (OUT, b"one\n"),
        (ERR, b"two\n"),
        (OUT, b"x" * 100),
    ]


def test_timestamps_and_since() -> None:
    nanos = nanos_of(b"2026-12-06T06:55:58.007794959Z")
    assert nanos == 1796540158_007794959
    assert since_of(nanos) == "1796540158.007794959"
    assert nanos_of(b"2026-12-06T07:55:58.007794959+01:00") == nanos
    assert nanos_of(b"2026-12-06T06:55:58Z") == 1796540158_000000000
    assert nanos_of(b"out") is None


def test_the_rest_comes_after_the_end_without_a_line_twice() -> None:
    follow_data = frame(OUT, 1, b"o1\n") + frame(ERR, 2, b"e1\n") + frame(OUT, 3, b"o2\n")
    follow_data += frame(OUT, 5, b"long-a")  # a long line's first piece...
    follow = FakeResponse([follow_data[:10], follow_data[10:]], follow=True)
    api = FakeAPI(
        follow,
        {
            # ... its second piece shares its timestamp; `since` repeats the first.
            OUT: [frame(OUT, 5, b"long-a"), frame(OUT, 5, b"long-b\n"), frame(OUT, 6, b"o3\n")],
            ERR: [frame(ERR, 2, b"e1\n"), frame(ERR, 7, b"e2\n")],
        },
    )
    output = ServiceOutput(api, run, "svc")
    attached = output.open()

    got = read_until_ended(output, iter(attached.frames), 4)

    assert lines(got, OUT) == [b"o1\n", b"o2\n", b"long-a", b"long-b\n", b"o3\n"]
    assert lines(got, ERR) == [b"e1\n", b"e2\n"]
    assert follow.sock.shut.is_set() and follow.closed
    rest = [c for c in api.calls if not c.get("follow")]
    assert [c["since"] for c in rest] == [
        since_of(nanos_of(stamp(5)) or 0),
        since_of(nanos_of(stamp(2)) or 0),
    ]
    assert all(c["timestamps"] == 1 for c in api.calls)
    assert api.calls[0]["timeout"] == (60, None)  # a follow has no read timeout
    assert rest[0]["timeout"] == 60


def test_a_task_that_ended_before_a_line_was_followed_gives_it_all() -> None:
    follow = FakeResponse([], follow=True)
    api = FakeAPI(follow, {OUT: [frame(OUT, 1, b"only\n")], ERR: []})
    output = ServiceOutput(api, run, "svc")
    attached = output.open()
    output.ended()  # before the reader even began

    assert list(attached.frames) == [(OUT, b"only\n")]
    assert [c["since"] for c in api.calls if not c.get("follow")] == [0, 0]


def test_close_wakes_the_blocked_read_and_fetches_nothing_more() -> None:
    follow = FakeResponse([frame(OUT, 1, b"o1\n")], follow=True)
    api = FakeAPI(follow, {OUT: [frame(OUT, 2, b"never\n")], ERR: []})
    output = ServiceOutput(api, run, "svc")
    attached = output.open()
    frames = iter(attached.frames)
    assert next(frames) == (OUT, b"o1\n")
    threading.Timer(0.05, attached.close).start()

    assert list(frames) == []  # woken, not by the follow's own 10 s bound
    assert [c for c in api.calls if not c.get("follow")] == []


def test_a_broken_follow_waits_for_the_end_then_reads_the_rest() -> None:
    follow = FakeResponse([frame(OUT, 1, b"o1\n")], follow=True, broken=True)
    api = FakeAPI(follow, {OUT: [frame(OUT, 1, b"o1\n"), frame(OUT, 2, b"o2\n")], ERR: []})
    output = ServiceOutput(api, run, "svc")
    attached = output.open()
    threading.Timer(0.05, output.ended).start()

    assert list(attached.frames) == [(OUT, b"o1\n"), (OUT, b"o2\n")]


def test_a_removed_service_ends_the_output_quietly() -> None:
    missing = EngineNotFoundError("service_logs", 404, "service not found")
    api = FakeAPI(FakeResponse([], follow=True), {OUT: missing, ERR: missing})
    output = ServiceOutput(api, run, "svc")
    attached = output.open()
    output.ended()

    assert list(attached.frames) == []


# -- the poller's end hooks -------------------------------------------------------------


def task(service: str, state: str) -> dict[str, Any]:
    return {
        "ID": f"t-{service}",
        "ServiceID": service,
        "Version": {"Index": 1},
        "Status": {"State": state},
    }


@pytest.fixture
def tasks() -> dict[str, dict[str, Any]]:
    return {}


def poller(tasks: dict[str, dict[str, Any]]) -> TaskPoller:
    return TaskPoller(
        lambda ids: [tasks[i] for i in ids if i in tasks],
        lambda: set(tasks),
        interval_s=3600,
        pending_timeout_s=30,
        unreachable_window_s=60,
        autostart=False,
    )


def test_the_end_hook_comes_before_the_exit_ticket(tasks: dict[str, dict[str, Any]]) -> None:
    p = poller(tasks)
    order: list[str] = []
    ticket = p.register("s")
    p.on_end("s", lambda: order.append("hook" if not ticket.done() else "late"))
    tasks["s"] = task("s", "running")
    p.tick()
    assert order == []
    tasks["s"] = task("s", "complete")
    p.tick()
    assert order == ["hook"] and ticket.done()
    assert p.watched() == 0
    # Once ended, a hook is called at once.
    p.on_end("s", lambda: order.append("again"))
    assert order == ["hook", "again"]
    p.close(1)


def test_a_hook_keeps_the_watch_and_a_dropped_one_is_not_called(
    tasks: dict[str, dict[str, Any]],
) -> None:
    p = poller(tasks)
    called: list[str] = []
    drop = p.on_end("s", lambda: called.append("s"))
    assert p.watched() == 1  # polled for the hook alone
    drop()
    assert p.watched() == 0
    tasks["s"] = task("s", "complete")
    p.tick()
    assert called == []
    p.on_end("t", lambda: called.append("t"))
    p.close(1)  # closing tells the hooks: the streams they end must not outlive the poller
    assert called == ["t"]

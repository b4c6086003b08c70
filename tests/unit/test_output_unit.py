"""A worker's output from raw bytes to delivered lines: frames, lines, masking, delivery."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard import ActiveWorker, ConfigError, RouterConfig, WorkerLifecycleListener
from dockyard._listener import SafeListener, wants_output
from dockyard._output import AttachedOutput, OutputPipe
from dockyard._output_hub import OutputHub
from dockyard._output_lines import (
    MAX_LINE_BYTES,
    FrameDecoder,
    LineMasker,
    LineSplitter,
    Stream,
    lines_of_frames,
    tail_extra,
)
from dockyard._secrets import Masker
from dockyard.testing import RecordingReporter

NO_SECRETS = Masker(frozenset())


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def chunked(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    at = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        yield data[at:cut]
        at = cut
    yield data[at:]


def decode_all(data: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    decoder = FrameDecoder()
    pieces = [piece for chunk in chunked(data, cuts) for piece in decoder.feed(chunk)]
    assert decoder.pending == 0
    return pieces


def joined(pieces: list[tuple[int, bytes]]) -> dict[int, bytes]:
    out: dict[int, bytes] = {1: b"", 2: b""}
    for stream, data in pieces:
        out[stream] += data
    return out


def lines(frames: list[tuple[int, bytes]], masker: Masker = NO_SECRETS) -> list[tuple[str, str]]:
    return list(lines_of_frames(frames, masker))


# -- frames ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=40)), max_size=12),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_frames_decode_the_same_whatever_the_chunk_boundaries(
    sent: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    data = b"".join(frame(stream, payload) for stream, payload in sent)
    expected = {1: b"", 2: b""}
    for stream, payload in sent:
        expected[stream] += payload
    assert joined(decode_all(data, cuts)) == expected


def test_frames_fed_one_byte_at_a_time_and_stdin_frames_dropped() -> None:
    data = frame(1, b"out\n") + frame(0, b"stdin echo") + frame(2, b"err\n") + frame(1, b"")
    pieces = decode_all(data, list(range(len(data))))
    assert joined(pieces) == {1: b"out\n", 2: b"err\n"}


def test_an_incomplete_header_is_held_back() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(1, b"ab")[:5]) == []
    assert decoder.pending == 5


# -- lines ----------------------------------------------------------------------------


def test_lines_lose_their_newline_and_a_trailing_carriage_return_only() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"a\r\nb\rc\n\npart") == [b"a", b"b\rc", b""]
    assert splitter.feed(b"ial\n") == [b"partial"]
    assert splitter.feed(b"no newline at the end") == []
    assert splitter.flush() == [b"no newline at the end"]
    assert splitter.flush() == []


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"a", b"\n", b"\r", b"\r\n", "€".encode(), "é".encode(), b"\xff", b"\xe2"]
        ),
        max_size=80,
    ),
    st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    st.integers(min_value=4, max_value=24),
)
def test_lines_decoded_a_chunk_at_a_time_are_the_lines_decoded_each_alone(
    pieces: list[bytes], cuts: list[int], max_bytes: int
) -> None:
    data = b"".join(pieces)
    by_chunk, by_line = LineSplitter(max_bytes), LineSplitter(max_bytes)
    for chunk in chunked(data, cuts):
        expected = [line.decode("utf-8", "replace") for line in by_line.feed(chunk)]
        assert by_chunk.feed_text(chunk) == expected
    assert by_chunk.flush() == by_line.flush()


def test_a_character_split_across_two_writes_decodes_whole() -> None:
    text = "naïve — 日本語 ✓\n".encode()
    frames = [(1, text[:i]) for i in (3,)] + [(1, text[3:9]), (1, text[9:])]
    assert lines(frames) == [("stdout", "naïve — 日本語 ✓")]


def test_stdout_and_stderr_are_assembled_apart() -> None:
    frames = [(1, b"out-"), (2, b"err-"), (1, b"1\nout-2\n"), (2, b"1\n")]
    assert lines(frames) == [("stdout", "out-1"), ("stdout", "out-2"), ("stderr", "err-1")]


def test_undecodable_bytes_are_replaced() -> None:
    assert lines([(2, b"bad \xff\xfe byte\n")]) == [("stderr", "bad \ufffd\ufffd byte")]


def test_a_line_over_64_kib_is_split_at_a_character_boundary() -> None:
    long = ("é" * MAX_LINE_BYTES).encode()  # 128 KiB of two-byte characters
    got = lines([(1, long[:70_000]), (1, long[70_000:] + b"\nnext\n")])
    pieces = [line for _, line in got]
    assert pieces[-1] == "next"
    assert "".join(pieces[:-1]) == "é" * MAX_LINE_BYTES
    assert all(len(p.encode()) <= MAX_LINE_BYTES for p in pieces)
    assert len(pieces) == 3
    assert "\ufffd" not in "".join(pieces)


def test_the_last_unfinished_line_of_each_stream_comes_at_the_end() -> None:
    assert lines([(1, b"a\nb"), (2, b"c")]) == [
        ("stdout", "a"),
        ("stdout", "b"),
        ("stderr", "c"),
    ]


# -- masking --------------------------------------------------------------------------

SECRET = "s3cr3t-t0ken-value"


def test_a_secret_written_in_two_writes_is_masked() -> None:
    frames = [(1, b"token=s3cr3t-t0"), (1, b"ken-value done\n")]
    assert lines(frames, Masker.of([SECRET])) == [("stdout", "token=*** done")]


@pytest.mark.parametrize("cut", [1, 3, 5, 9, len(SECRET) - 3, len(SECRET) - 1])
def test_a_secret_printed_over_a_line_break_is_masked_on_both_lines(cut: int) -> None:
    text = f"begin\nkey: {SECRET[:cut]}\n{SECRET[cut:]} rest\nafter\n".encode()
    got = [line for _, line in lines([(1, text[:12]), (1, text[12:])], Masker.of([SECRET]))]
    assert got[0] == "begin"
    assert got[3] == "after"
    assert len(got) == 4
    # No piece of the secret longer than two characters is left on either line.
    for line in got:
        for size in range(3, len(SECRET)):
            for start in range(len(SECRET) - size + 1):
                assert SECRET[start : start + size] not in line, (cut, line)
    assert got[1].startswith("key: ")
    assert got[2].endswith(" rest")


def test_a_secret_holding_line_breaks_is_masked_line_by_line() -> None:
    pem = "\n".join(
        [
            "-----BEGIN KEY-----",
            "MIIBVwIBADANBgkqhkiG9w0B",
            "AQEFAASCAT8wggE7AgEAAkEA",
            "-----END KEY-----",
        ]
    )
    got = [line for _, line in lines([(1, (pem + "\n").encode())], Masker.of([pem]))]
    assert got == ["***"] * 4


def test_a_line_that_only_may_begin_a_secret_is_released_with_the_next_line() -> None:
    masker = LineMasker(Masker.of([SECRET]))
    assert masker.push("prefix s3c") == []  # held: the next line may complete it
    assert masker.push("ond line") == ["prefix s3c", "ond line"]
    assert masker.push("no risk here") == ["no risk here"]
    assert masker.push("ends s3cr") == []
    assert masker.flush() == ["ends s3cr"]


def test_without_secrets_nothing_is_held() -> None:
    masker = LineMasker(NO_SECRETS)
    assert masker.push("s3c") == ["s3c"]
    assert masker.flush() == []


# -- delivery -------------------------------------------------------------------------


def worker(job_id: str = "job-1") -> ActiveWorker:
    now = datetime.now(UTC)
    return ActiveWorker(job_id, "c" * 64, f"w-{job_id}", "img", now, now)


class Recorder(WorkerLifecycleListener):
    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None) -> None:
        self.lines: list[tuple[str, str, str]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on

    def on_worker_output(self, worker: ActiveWorker, stream: str, line: str) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        if line == self.fail_on:
            raise RuntimeError("listener broke")
        self.lines.append((worker.job_id, stream, line))


class Counters:
    def __init__(self) -> None:
        self.lines: dict[str, int] = {}
        self.dropped = 0

    def log_lines(self, stream: str, count: int) -> None:
        self.lines[stream] = self.lines.get(stream, 0) + count

    def log_lines_dropped(self, count: int) -> None:
        self.dropped += count


def numbered(count: int) -> list[tuple[int, bytes]]:
    return [(1 + i % 2, f"line {i}\n".encode()) for i in range(count)]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2, thread_name_prefix="test-output")
    yield pool
    pool.shutdown(wait=True)


def test_lines_queued_before_the_worker_is_known_go_out_in_order_after(
    executor: ThreadPoolExecutor,
) -> None:
    recorder, counters = Recorder(), Counters()
    pipe = OutputPipe(
        Masker.of([SECRET]),
        tail_lines=3,
        sink=SafeListener(recorder),
        executor=executor,
        counters=counters,
        job_id="job-1",
    )
    pipe.run_reader([*numbered(999), (1, f"the secret is {SECRET}\n".encode())])
    assert recorder.lines == []  # nobody to tell until the worker started
    pipe.bind(worker())
    tail = pipe.finish(5.0)
    assert [line for _, _, line in recorder.lines] == [f"line {i}" for i in range(999)] + [
        "the secret is ***"
    ]
    assert [stream for _, stream, _ in recorder.lines[:2]] == ["stdout", "stderr"]
    assert tail == ("line 997", "line 998", "the secret is ***")
    assert counters.lines == {"stdout": 501, "stderr": 499}
    assert counters.dropped == 0


def test_a_slow_listener_loses_lines_past_the_buffer_and_they_are_counted(
    executor: ThreadPoolExecutor,
) -> None:
    recorder, counters = Recorder(delay_s=0.01), Counters()
    pipe = OutputPipe(
        NO_SECRETS,
        tail_lines=5,
        sink=SafeListener(recorder),
        executor=executor,
        counters=counters,
        buffer_lines=20,
    )
    pipe.bind(worker())
    started = time.monotonic()
    pipe.run_reader(numbered(2000))  # the reader never waits for the listener
    assert time.monotonic() - started < 2.0
    tail = pipe.finish(10.0)
    assert tail == tuple(f"line {i}" for i in range(1995, 2000))  # the tail misses nothing
    delivered = [int(line.split()[1]) for _, _, line in recorder.lines]
    assert delivered == sorted(delivered)  # in order, with gaps
    assert counters.dropped == pipe.dropped == 2000 - len(delivered)
    assert counters.dropped > 0
    assert sum(counters.lines.values()) == 2000


def long_lines(count: int, size: int, first: int = 0) -> list[tuple[int, bytes]]:
    """`count` stdout lines of `size` characters, each starting with its number."""
    return [(1, f"{i:06d}".ljust(size, "x").encode() + b"\n") for i in range(first, first + count)]


def test_queued_lines_are_capped_by_their_size_as_well_as_their_count(
    executor: ThreadPoolExecutor,
) -> None:
    recorder, counters = Recorder(), Counters()
    pipe = OutputPipe(
        NO_SECRETS,
        tail_lines=2,
        sink=SafeListener(recorder),
        executor=executor,
        counters=counters,
        buffer_lines=10_000,
        buffer_bytes=10_000,
    )
    # Not bound yet: nothing leaves the queue, so what it holds is what the caps let in.
    pipe.run_reader(long_lines(100, 1000))
    assert pipe.dropped == counters.dropped == 90  # 10 lines of 1,000 fill 10,000
    assert pipe.tail() == tuple(f"{i:06d}".ljust(1000, "x") for i in (98, 99))
    pipe.bind(worker())
    pipe.finish(5.0)
    assert [line[:6] for _, _, line in recorder.lines] == [f"{i:06d}" for i in range(10)]
    assert sum(counters.lines.values()) == 100  # counted though not delivered


def test_a_line_longer_than_the_byte_cap_still_goes_out_alone(
    executor: ThreadPoolExecutor,
) -> None:
    recorder = Recorder()
    pipe = OutputPipe(
        NO_SECRETS,
        tail_lines=2,
        sink=SafeListener(recorder),
        executor=executor,
        buffer_bytes=100,
    )
    pipe.run_reader(long_lines(3, 500))
    pipe.bind(worker())
    pipe.finish(5.0)
    assert [line[:6] for _, _, line in recorder.lines] == ["000000"]  # then full
    assert pipe.dropped == 2


def queued_line_by_line(
    runs: list[tuple[str, list[str]]], buffer_lines: int, buffer_bytes: int
) -> tuple[list[tuple[str, str, int]], int]:
    """The queue as it was filled a line at a time: (stream, line, position) kept, and
    how many lines were dropped (full by count, or by size unless empty)."""
    kept: list[tuple[str, str, int]] = []
    positions: dict[str, int] = {}
    queued = dropped = 0
    for stream, run in runs:
        for line in run:
            position = positions[stream] = positions.get(stream, 0) + 1
            if len(kept) >= buffer_lines or (queued + len(line) > buffer_bytes and kept):
                dropped += 1
            else:
                kept.append((stream, line, position))
                queued += len(line)
    return kept, dropped


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["stdout", "stderr"]),
            st.lists(st.text(alphabet="ab", max_size=30), min_size=1, max_size=12),
        ),
        max_size=12,
    ),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=0, max_value=200),
)
def test_runs_are_queued_as_the_same_lines_would_be_one_by_one(
    runs: list[tuple[Stream, list[str]]], buffer_lines: int, buffer_bytes: int
) -> None:
    pool = ThreadPoolExecutor(1)
    pipe = OutputPipe(
        NO_SECRETS,
        tail_lines=5,
        sink=SafeListener(Recorder()),
        executor=pool,
        buffer_lines=buffer_lines,
        buffer_bytes=buffer_bytes,
    )
    for stream, run in runs:  # not bound: nothing leaves the queue
        pipe.add_lines([(stream, line, None) for line in run])
    kept, dropped = queued_line_by_line(runs, buffer_lines, buffer_bytes)
    queued = [
        (stream, line, position)
        for stream, lines, _, positions in pipe._queue
        for line, position in zip(lines, positions, strict=True)
    ]
    assert queued == kept
    assert pipe.dropped == dropped
    assert pipe.lines == sum(len(run) for _, run in runs)
    pool.shutdown()


def test_a_run_of_lines_goes_on_past_the_lines_whose_listener_raised() -> None:
    reporter = RecordingReporter()
    lines = [f"line {i}" for i in range(6)]
    for failing in (["line 0"], ["line 2", "line 3"], ["line 5"]):
        recorder = Recorder()
        broken = set(failing)

        def output(worker: ActiveWorker, stream: str, line: str, seen: Recorder = recorder) -> None:
            seen.lines.append((worker.job_id, stream, line))
            if line in broken:
                raise RuntimeError("listener broke")

        recorder.on_worker_output = output  # type: ignore[method-assign]
        done = SafeListener(recorder, reporter).output_lines(
            worker(), "stdout", lines, lambda: False
        )
        assert done == 6
        assert [line for _, _, line in recorder.lines] == lines
    assert len(reporter.of("lifecycle_listener")) == 4


def test_a_run_of_lines_stops_when_the_pipe_does() -> None:
    recorder = Recorder()
    done = SafeListener(recorder).output_lines(
        worker(), "stdout", ["a", "b", "c"], lambda: len(recorder.lines) == 2
    )
    assert done == 2
    assert [line for _, _, line in recorder.lines] == ["a", "b"]


def test_delivered_lines_free_their_bytes_for_the_next(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    pipe = OutputPipe(
        NO_SECRETS,
        tail_lines=2,
        sink=SafeListener(recorder),
        executor=executor,
        buffer_bytes=5_000,
    )
    pipe.bind(worker())
    for batch in range(20):  # 100,000 characters in all through a 5,000 queue
        pipe.add_lines([("stdout", f"{batch:06d}".ljust(4_000, "y"), None)])
        pipe.finish(0.0, delivery_s=5.0)  # each batch out before the next comes
    assert pipe.dropped == 0
    assert [line[:6] for _, _, line in recorder.lines] == [f"{i:06d}" for i in range(20)]


def test_the_hub_gives_each_pipe_its_byte_cap() -> None:
    outputs = OutputHub(
        attach=lambda worker_id: AttachedOutput(iter(long_lines(5, 1000)), lambda: None),
        enabled=True,
        listener=Recorder(),
        sink=SafeListener(Recorder()),
        counters=Counters(),
        tail_lines=3,
        delivery_threads=1,
        buffer_bytes=2_500,
    )
    pipe = outputs.open("c1", "job-1", NO_SECRETS)
    assert pipe is not None
    pipe.finish(5.0)  # read to the end, unbound: 2 of 1,000 fit in 2,500
    assert pipe.dropped == 3
    outputs.close()


def test_a_listener_that_raises_is_reported_and_output_keeps_flowing(
    executor: ThreadPoolExecutor,
) -> None:
    reporter = RecordingReporter()
    recorder = Recorder(fail_on="line 3")
    pipe = OutputPipe(
        NO_SECRETS,
        tail_lines=50,
        sink=SafeListener(recorder, reporter),
        executor=executor,
        job_id="job-1",
    )
    pipe.bind(worker())
    pipe.run_reader(numbered(6))
    pipe.finish(5.0)
    assert [line for _, _, line in recorder.lines] == [f"line {i}" for i in (0, 1, 2, 4, 5)]
    (report,) = reporter.of("lifecycle_listener")
    assert report.tags == {"hook": "on_worker_output"}
    assert report.extras == {"jobId": "job-1"}


def test_without_a_listener_only_the_tail_is_kept() -> None:
    pipe = OutputPipe(NO_SECRETS, tail_lines=2, sink=None, executor=None)
    pipe.run_reader(numbered(10))
    assert pipe.finish(1.0) == ("line 8", "line 9")
    assert OutputPipe(NO_SECRETS, 0, None, None).finish(0.0) == ()


def test_finish_is_bounded_when_the_output_does_not_end() -> None:
    gate = threading.Event()

    def frames() -> Iterator[tuple[int, bytes]]:
        yield (1, b"first\n")
        gate.wait(10)

    pipe = OutputPipe(NO_SECRETS, tail_lines=5, sink=None, executor=None)
    reader = threading.Thread(target=pipe.run_reader, args=(frames(),), daemon=True)
    reader.start()
    time.sleep(0.1)
    started = time.monotonic()
    assert pipe.finish(0.2) == ("first",)
    assert time.monotonic() - started < 1.0
    assert not pipe.ended
    gate.set()
    reader.join(5)
    assert pipe.ended


def test_a_broken_stream_ends_the_reader_with_what_it_had() -> None:
    def frames() -> Iterator[tuple[int, bytes]]:
        yield (1, b"one\ntwo")
        raise ConnectionError("stream broke")

    pipe = OutputPipe(NO_SECRETS, tail_lines=5, sink=None, executor=None)
    pipe.run_reader(frames())
    assert pipe.finish(0.0) == ("one", "two")


def test_a_cancelled_pipe_delivers_nothing_more_and_closes_its_source(
    executor: ThreadPoolExecutor,
) -> None:
    closed = []
    recorder = Recorder()
    pipe = OutputPipe(
        NO_SECRETS,
        tail_lines=5,
        sink=SafeListener(recorder),
        executor=executor,
        close_source=lambda: closed.append(True),
    )
    pipe.run_reader(numbered(3))
    pipe.cancel()
    pipe.bind(worker())
    pipe.finish(1.0)
    assert recorder.lines == []
    assert closed == [True]


def test_only_a_listener_that_overrides_the_hook_gets_lines_queued() -> None:
    assert not wants_output(None)
    assert not wants_output(WorkerLifecycleListener())
    assert wants_output(Recorder())


def test_the_sentry_extra_is_the_tail_joined_and_capped() -> None:
    assert tail_extra(("a", "b")) == "a\nb"
    long = tail_extra(["x" * 1000] * 100)
    assert len(long) == 16 * 1024 + 1
    assert long.startswith("…")


# -- configuration --------------------------------------------------------------------


def test_stream_output_is_on_by_default_and_read_from_the_environment() -> None:
    assert RouterConfig(router_instance_id="r").stream_output is True
    env = {"CASCADE_ROUTER_INSTANCE": "r"}
    assert RouterConfig.from_env({**env, "WORKER_STREAM_OUTPUT": "false"}).stream_output is False
    assert RouterConfig.from_env({**env, "WORKER_STREAM_OUTPUT": "1"}).stream_output is True
    with pytest.raises(ConfigError, match="WORKER_STREAM_OUTPUT"):
        RouterConfig.from_env({**env, "WORKER_STREAM_OUTPUT": "maybe"})
    with pytest.raises(ConfigError, match="stream_output"):
        RouterConfig(router_instance_id="r", stream_output="yes")  # type: ignore[arg-type]


# -- the hub --------------------------------------------------------------------------


def hub(
    listener: WorkerLifecycleListener | None,
    attach: Callable[[str], AttachedOutput],
    *,
    enabled: bool = True,
) -> OutputHub:
    return OutputHub(
        attach=attach,
        enabled=enabled,
        listener=listener,
        sink=SafeListener(listener),
        counters=Counters(),
        tail_lines=3,
        delivery_threads=2,
    )


def test_the_hub_reads_each_opened_worker_and_delivers_after_it_is_bound() -> None:
    recorder = Recorder()
    outputs = hub(recorder, lambda worker_id: AttachedOutput(iter(numbered(4)), lambda: None))
    pipe = outputs.open("c1", "job-1", NO_SECRETS)
    assert pipe is not None
    pipe.bind(worker())
    assert pipe.finish(5.0) == ("line 1", "line 2", "line 3")
    assert [line for _, _, line in recorder.lines] == [f"line {i}" for i in range(4)]
    outputs.close()


def test_a_stream_that_cannot_be_opened_leaves_the_worker_without_output(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(worker_id: str) -> AttachedOutput:
        raise ConnectionError("engine said no")

    outputs = hub(Recorder(), refuse)
    assert outputs.open("c1", "job-1", NO_SECRETS) is None
    assert "could not attach" in caplog.text
    outputs.close()


def test_streaming_off_opens_nothing() -> None:
    def never(worker_id: str) -> AttachedOutput:
        raise AssertionError("attached although streaming is off")

    assert hub(Recorder(), never, enabled=False).open("c1", "job-1", NO_SECRETS) is None


def test_close_ends_a_reader_blocked_on_a_quiet_stream() -> None:
    woken = threading.Event()

    def quiet() -> Iterator[tuple[int, bytes]]:
        yield (1, b"hello\n")
        woken.wait(10)

    outputs = hub(None, lambda worker_id: AttachedOutput(quiet(), woken.set))
    pipe = outputs.open("c1", "job-1", NO_SECRETS)
    assert pipe is not None
    started = time.monotonic()
    outputs.close()
    assert time.monotonic() - started < 2.0
    assert pipe.ended
    assert pipe.tail() == ("hello",)
    assert outputs.open("c2", "job-2", NO_SECRETS) is None

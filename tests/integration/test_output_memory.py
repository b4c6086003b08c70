"""A worker that prints ~200 MB as fast as it can, with a slow listener, on the real engine:
dockyard's memory stays bounded (README, A worker's output) and another worker's exit is
seen while the chatty one still runs. Once in short lines (the queue's line cap binds) and
once in 32 KiB lines (its byte cap binds: by count alone, 30,000 such lines would be
960 MiB)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard import ActiveWorker, ContainerManager, WorkerJob, WorkerLifecycleListener

WAIT_S = 300.0
TOTAL_BYTES = 200_000_000
# The bound README "A worker's output" states; measured growth was far below it. Without
# the queue's byte cap, the 32 KiB lines alone grew the RSS by about 107 MiB.
RSS_GROWTH_BOUND = 64 * 1024 * 1024


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class SlowListener(WorkerLifecycleListener):
    """Takes a millisecond per line, far slower than the worker prints."""

    def __init__(self) -> None:
        self.lines = 0
        self.first_line = threading.Event()

    def on_worker_output(self, worker: ActiveWorker, stream: str, line: str) -> None:
        self.lines += 1
        self.first_line.set()
        time.sleep(0.001)


class PeakRss:
    """Samples the RSS every 20 ms on a thread of its own, keeping the highest."""

    def __init__(self) -> None:
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


@pytest.mark.parametrize(
    "line_bytes",
    [100, 32 * 1024],  # with its newline: 2,000,000 lines, or about 6,100
    ids=["short-lines", "32-kib-lines"],
)
def test_a_200_mb_printer_with_a_slow_listener_keeps_memory_bounded_and_exits_flowing(
    make_manager: Callable[..., ContainerManager], instance_id: str, line_bytes: int
) -> None:
    line = "x" * (line_bytes - 1)
    total = -(-TOTAL_BYTES // line_bytes) * line_bytes  # whole lines: the last one ends too
    listener = SlowListener()
    manager = make_manager(listener=listener, worker_timeout_s=WAIT_S)
    # Warm up what every worker costs once (threads, connections, compiled patterns).
    warm = f"{instance_id}-warm"
    manager.spawn_worker(WorkerJob(warm, "memory-test", {}, command=["sh", "-c", "echo warm"]))
    assert manager.wait_for_worker(warm, timeout=WAIT_S).status == "succeeded"
    baseline = rss_bytes()

    chatty = f"{instance_id}-chatty"
    short = f"{instance_id}-short"
    script = f"yes {line} | head -c {total}"
    with PeakRss() as peak:
        manager.spawn_worker(WorkerJob(chatty, "memory-test", {}, command=["sh", "-c", script]))
        assert listener.first_line.wait(WAIT_S)
        manager.spawn_worker(WorkerJob(short, "memory-test", {}, command=["true"]))
        short_outcome = manager.wait_for_worker(short, timeout=WAIT_S)
        chatty_running = chatty in {w.job_id for w in manager.get_active_workers()}
        chatty_outcome = manager.wait_for_worker(chatty, timeout=WAIT_S)

    growth = peak.peak - baseline
    print(f"RSS baseline {baseline / 2**20:.1f} MiB, peak growth {growth / 2**20:.1f} MiB")
    assert short_outcome.status == "succeeded", short_outcome
    # The short worker's exit was seen while the chatty one was still printing.
    assert chatty_running
    assert chatty_outcome.status == "succeeded", chatty_outcome
    # The reader kept up with the worker: the tail is the end of the output.
    assert chatty_outcome.log_tail[-1] == line
    assert growth < RSS_GROWTH_BOUND, f"RSS grew {growth / 2**20:.1f} MiB"

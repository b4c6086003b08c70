"""What a worker's output lines cost dockyard, without the engine: lines/s and CPU per line.

Builds the output of `yes | head` (80-character lines, in 4 KiB frames as the attach
stream brings them) and feeds it through an `OutputPipe` the way the hub does: its reader
(frames to masked lines, a secret set as the line throughput benchmark's job data gives
it), the queue, and delivery on an executor to a listener counting lines. Prints the
median over the rounds of lines/s (read to last line delivered), of the process's CPU
microseconds per line, and of the reader alone (no listener). Not collected by pytest;
run it from the repository root:

    PYTHONPATH=lib python -m benchmarks.output_lines_profile [lines] [rounds]

For where the time goes, on both threads (only on-CPU samples), wrap it in py-spy:

    PYTHONPATH=lib py-spy record -o lines.svg -- python -m benchmarks.output_lines_profile
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from dockyard import ActiveWorker, WorkerLifecycleListener
from dockyard._listener import SafeListener
from dockyard._output import Frame, OutputPipe
from dockyard._secrets import Masker, job_data_secrets

SECRET = "bench-output-secret-9d2f41"  # as in test_11_output
LINE = b"y" * 80 + b"\n"
FRAME_BYTES = 4096


class LineCounter(WorkerLifecycleListener):
    def __init__(self, expected: int) -> None:
        self.count = 0
        self.expected = expected
        self.done = threading.Event()

    def on_worker_output(self, worker: ActiveWorker, stream: str, line: str) -> None:
        self.count += 1
        if self.count == self.expected:
            self.done.set()


def frames(lines: int) -> list[Frame]:
    data = LINE * lines
    return [(1, data[at : at + FRAME_BYTES]) for at in range(0, len(data), FRAME_BYTES)]


def masker() -> Masker:
    data = {"token": SECRET}
    return Masker.of(job_data_secrets(data, json.dumps(data), []))


def delivered(stream: list[Frame], lines: int) -> tuple[float, float]:
    """Lines/s and CPU µs per line, read to the last line delivered."""
    counter = LineCounter(lines)
    now = datetime.now(UTC)
    worker = ActiveWorker("job", "c" * 64, "w-job", "img", now, now)
    with ThreadPoolExecutor(1) as executor:
        # Caps that never drop: the figure is the cost of a line, not of the queue's size.
        pipe = OutputPipe(
            masker(),
            100,
            SafeListener(counter),
            executor,
            buffer_lines=10 * lines,
            buffer_bytes=10 * len(LINE) * lines,
        )
        pipe.bind(worker)
        start, cpu = time.perf_counter(), time.process_time()
        pipe.run_reader(stream)
        if not counter.done.wait(300):
            raise RuntimeError(f"{counter.count} of {lines} lines delivered")
        elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    return lines / elapsed, cpu_s / lines * 1e6


def read_only(stream: list[Frame], lines: int) -> float:
    """Lines/s through the reader alone (frames to masked lines, the tail)."""
    pipe = OutputPipe(masker(), 100, None, None)
    start = time.perf_counter()
    pipe.run_reader(stream)
    return lines / (time.perf_counter() - start)


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    stream = frames(lines)
    results = [delivered(stream, lines) for _ in range(rounds)]
    readers = [read_only(stream, lines) for _ in range(rounds)]
    print(f"{lines} lines of {len(LINE) - 1} characters, {rounds} rounds, medians:")
    print(f"  delivered: {statistics.median(rate for rate, _ in results):,.0f} lines/s")
    print(f"  CPU:       {statistics.median(cpu for _, cpu in results):.3f} µs per line")
    print(f"  reader:    {statistics.median(readers):,.0f} lines/s")


if __name__ == "__main__":
    main()

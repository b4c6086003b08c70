"""A host's `on_worker_output` on the real engine: one that calls back into the manager
(`cancel_worker` of the job whose line asks for it, `get_active_workers`) deadlocks
nothing, and one that raises does not stop the lines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dockyard import ActiveWorker, ContainerManager, WorkerJob, WorkerLifecycleListener

WAIT_S = 60.0
# Lines may reach the listener shortly after the outcome (README, A worker's output).
LATE_LINES_S = 10.0


def settled(count: Callable[[], int], expected: int) -> int:
    """`count()` once it reaches `expected` or stops growing for a second (bounded)."""
    deadline = time.monotonic() + LATE_LINES_S
    last, since = count(), time.monotonic()
    while last < expected and time.monotonic() < deadline and time.monotonic() - since < 1.0:
        time.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
    return last


class CancellingListener(WorkerLifecycleListener):
    """Cancels a job when its worker prints `cancel me`, from inside the hook."""

    def __init__(self) -> None:
        self.manager: ContainerManager | None = None
        self.lock = threading.Lock()
        self.lines: dict[str, list[str]] = {}
        self.cancel_results: list[bool] = []
        self.active_at_cancel: list[set[str]] = []

    def on_worker_output(self, worker: ActiveWorker, stream: str, line: str) -> None:
        assert self.manager is not None
        with self.lock:
            self.lines.setdefault(worker.job_id, []).append(line)
        if line == "cancel me":
            active = {w.job_id for w in self.manager.get_active_workers()}
            cancelled = self.manager.cancel_worker(worker.job_id)
            with self.lock:
                self.active_at_cancel.append(active)
                self.cancel_results.append(cancelled)


def test_a_listener_that_cancels_its_job_from_the_output_hook_gets_it_cancelled(
    make_manager: Callable[..., ContainerManager], instance_id: str
) -> None:
    listener = CancellingListener()
    manager = make_manager(listener=listener, stop_grace_s=1)
    listener.manager = manager
    job_id = f"{instance_id}-cancel-me"
    neighbour_id = f"{instance_id}-neighbour"
    # Keeps printing after the request, until the SIGTERM of the cancel ends it.
    script = (
        'i=1; while [ $i -le 20 ]; do echo "before $i"; i=$((i+1)); done; echo "cancel me"; '
        'i=1; while [ $i -le 600 ]; do echo "after $i"; i=$((i+1)); sleep 0.05; done'
    )
    manager.spawn_worker(WorkerJob(job_id, "host-test", {}, command=["sh", "-c", script]))
    manager.spawn_worker(
        WorkerJob(
            neighbour_id,
            "host-test",
            {},
            command=["sh", "-c", "i=1; while [ $i -le 50 ]; do echo n $i; i=$((i+1)); done"],
        )
    )

    outcome = manager.wait_for_worker(job_id, timeout=WAIT_S)  # a deadlock times out here
    neighbour = manager.wait_for_worker(neighbour_id, timeout=WAIT_S)

    assert outcome.status == "cancelled", outcome
    assert neighbour.status == "succeeded", neighbour
    assert listener.cancel_results == [True]
    assert job_id in listener.active_at_cancel[0]
    settled(lambda: len(listener.lines.get(neighbour_id, [])), 50)
    settled(lambda: len(listener.lines.get(job_id, [])), 621)
    with listener.lock:
        lines = list(listener.lines[job_id])
        neighbour_lines = list(listener.lines[neighbour_id])
    # Every line up to the request, in order; then `after` lines in order, as many as the
    # worker printed before it stopped (none lost in between, none after the end).
    assert lines[:21] == [*(f"before {i}" for i in range(1, 21)), "cancel me"]
    after = lines[21:]
    assert after == [f"after {i}" for i in range(1, len(after) + 1)]
    assert len(after) < 600  # it was stopped, not run to its end
    assert neighbour_lines == [f"n {i}" for i in range(1, 51)]
    assert not manager.get_active_workers()


class RaisingListener(WorkerLifecycleListener):
    """Raises on every tenth line, after keeping it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lines: list[str] = []

    def on_worker_output(self, worker: ActiveWorker, stream: str, line: str) -> None:
        with self.lock:
            self.lines.append(line)
            count = len(self.lines)
        if count % 10 == 0:
            raise RuntimeError(f"listener broke on line {count}")


def test_a_listener_that_raises_keeps_getting_every_line(
    make_manager: Callable[..., ContainerManager], instance_id: str
) -> None:
    listener = RaisingListener()
    manager = make_manager(listener=listener)
    job_id = f"{instance_id}-raising"
    script = 'i=1; while [ $i -le 1000 ]; do echo "line $i"; i=$((i+1)); done'
    manager.spawn_worker(WorkerJob(job_id, "host-test", {}, command=["sh", "-c", script]))

    outcome = manager.wait_for_worker(job_id, timeout=WAIT_S)

    assert outcome.status == "succeeded", outcome
    settled(lambda: len(listener.lines), 1000)
    with listener.lock:
        assert listener.lines == [f"line {i}" for i in range(1, 1001)]
    assert outcome.log_tail[-1] == "line 1000"

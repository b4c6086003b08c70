"""The slot gate: router capacity, per-project caps, priorities, timeouts, interrupts, cancels."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard import NoWorkerSlotError, WorkerCancelledError
from dockyard._slots import SlotGate, SlotLease


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


class Line:
    """Waiters started on threads, the order they got their slots in, and their leases."""

    def __init__(self, gate: SlotGate) -> None:
        self.gate = gate
        self.order: list[str] = []
        self.leases: dict[str, SlotLease] = {}
        self.errors: dict[str, BaseException] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def join(
        self,
        name: str,
        *,
        project: str | None = None,
        cap: int | None = None,
        priority: int = 0,
        timeout: float | None = 10.0,
    ) -> None:
        """Start a waiter and return once it holds a slot or stands in the line."""
        before = self.gate.waiting + len(self.leases) + len(self.errors)

        def run() -> None:
            try:
                lease = self.gate.lease(
                    timeout, project=project, cap=cap, priority=priority, name=name
                )
            except BaseException as err:
                with self._lock:
                    self.errors[name] = err
                return
            with self._lock:
                self.order.append(name)
                self.leases[name] = lease

        thread = threading.Thread(target=run, name=f"waiter-{name}")
        thread.start()
        self._threads.append(thread)
        wait_until(lambda: self.gate.waiting + len(self.leases) + len(self.errors) > before)

    def release(self, name: str, *, expect: int | None = None) -> None:
        """Release `name`'s slot; with `expect`, wait until that many hold (or held) one."""
        assert self.leases[name].release()
        if expect is not None:
            wait_until(lambda: len(self.order) >= expect)
            time.sleep(0.01)  # nobody else wakes up with a slot
            assert len(self.order) == expect, self.order

    def close(self) -> None:
        for thread in self._threads:
            thread.join(10)
            assert not thread.is_alive()


@pytest.fixture
def line_of() -> Callable[[SlotGate], Line]:
    lines: list[Line] = []

    def make(gate: SlotGate) -> Line:
        lines.append(Line(gate))
        return lines[-1]

    yield make
    for line in lines:
        for name in list(line.gate._names):
            line.gate.cancel(name)
        line.close()


# --------------------------------------------------------------------------- router capacity


def test_capacity_and_timeout_name_the_router() -> None:
    gate = SlotGate(2)
    first = gate.lease(0)
    gate.lease(0)
    assert gate.in_use == 2
    with pytest.raises(NoWorkerSlotError) as caught:
        gate.lease(0.05, name="job-3")
    assert caught.value.limit == "router"
    assert caught.value.job_id == "job-3"
    assert "all 2 slots busy" in str(caught.value)
    assert gate.waiting == 0  # a timed-out waiter leaves the line
    first.release()
    assert gate.in_use == 1
    gate.lease(0)
    assert gate.in_use == 2


def test_a_lease_releases_exactly_once() -> None:
    gate = SlotGate(1)
    lease = gate.lease(0, project="a", cap=1)
    assert lease.release() is True
    assert lease.release() is False
    assert gate.in_use == 0 and gate.in_use_by("a") == 0
    gate.lease(0, project="a", cap=1)
    with pytest.raises(NoWorkerSlotError):
        gate.lease(0, project="a", cap=1)


def test_fifo_within_one_priority(line_of: Callable[[SlotGate], Line]) -> None:
    gate = SlotGate(1)
    holder = gate.lease(0)
    line = line_of(gate)
    for name in "abcd":
        line.join(name)
    holder.release()
    for n, name in enumerate("abc", start=1):
        wait_until(lambda n=n: len(line.order) == n)
        line.release(name)
    wait_until(lambda: len(line.order) == 4)
    assert line.order == list("abcd")
    line.release("d")


def test_a_late_arrival_cannot_overtake_a_waiter(line_of: Callable[[SlotGate], Line]) -> None:
    gate = SlotGate(1)
    holder = gate.lease(0)
    line = line_of(gate)
    line.join("waiter")
    holder.release()
    # The freed slot already belongs to the waiter, even if it has not woken yet.
    with pytest.raises(NoWorkerSlotError):
        gate.lease(0)
    wait_until(lambda: line.order == ["waiter"])
    line.release("waiter")


# --------------------------------------------------------------------------- priorities


def test_higher_priority_first_then_arrival_order(line_of: Callable[[SlotGate], Line]) -> None:
    gate = SlotGate(1)
    holder = gate.lease(0)
    line = line_of(gate)
    for name, priority in [("low-1", 0), ("low-2", 0), ("high", 5), ("mid", 1), ("neg", -3)]:
        line.join(name, priority=priority)
    holder.release()
    for n, name in enumerate(["high", "mid", "low-1", "low-2"], start=1):
        wait_until(lambda n=n: len(line.order) == n)
        line.release(name)
    wait_until(lambda: len(line.order) == 5)
    assert line.order == ["high", "mid", "low-1", "low-2", "neg"]
    line.release("neg")


def test_low_priorities_starve_under_constant_high_priority_load(
    line_of: Callable[[SlotGate], Line],
) -> None:
    """Strict priorities: a low waiter gets no slot while high ones keep coming; its
    slot timeout ends the wait, naming the router as full."""
    gate = SlotGate(1)
    line = line_of(gate)
    line.join("high-0", priority=10)
    line.join("low", priority=0, timeout=0.6)
    started = time.monotonic()
    n = 0
    while "low" not in line.errors:
        assert time.monotonic() - started < 5
        n += 1
        line.join(f"high-{n}", priority=10)
        line.release(f"high-{n - 1}", expect=n + 1)
    assert isinstance(line.errors["low"], NoWorkerSlotError)
    assert line.errors["low"].limit == "router"
    assert "low" not in line.order and n >= 3
    line.release(f"high-{n}")
    assert gate.in_use == 0 and gate.waiting == 0


# --------------------------------------------------------------------------- project caps


def test_a_capped_project_waits_while_others_start(line_of: Callable[[SlotGate], Line]) -> None:
    gate = SlotGate(4)
    line = line_of(gate)
    for n in range(6):
        line.join(f"a{n}", project="A", cap=2)
    assert line.order == ["a0", "a1"]
    assert gate.waiting == 4 and gate.waiting_for("A") == 4
    line.join("b0", project="B", cap=2)
    line.join("none", project=None)
    assert line.order == ["a0", "a1", "b0", "none"]  # A's waiters blocked nobody
    assert gate.in_use_by("A") == 2 and gate.in_use == 4
    line.release("a0", expect=5)
    assert line.order[-1] == "a2"
    assert gate.in_use_by("A") == 2


def test_no_head_of_line_blocking_when_the_router_is_full(
    line_of: Callable[[SlotGate], Line],
) -> None:
    gate = SlotGate(2)
    line = line_of(gate)
    line.join("a0", project="A", cap=1)
    line.join("b0", project="B")
    line.join("a1", project="A", cap=1, priority=9)  # first in line, but A is at its cap
    line.join("b1", project="B")
    line.release("b0", expect=3)
    assert line.order[-1] == "b1"
    line.release("a0", expect=4)
    assert line.order[-1] == "a1"
    assert gate.waiting == 0


def test_a_project_timeout_names_the_project_cap() -> None:
    gate = SlotGate(4)
    gate.lease(0, project="A", cap=1)
    with pytest.raises(NoWorkerSlotError) as caught:
        gate.lease(0.05, project="A", cap=1, name="job-a")
    err = caught.value
    assert (err.limit, err.project_id, err.project_cap) == ("project", "A", 1)
    assert "project 'A' at its cap of 1" in str(err)
    assert "slots busy" not in str(err)
    assert gate.waiting == 0


def test_both_limits_full_names_both() -> None:
    gate = SlotGate(1)
    gate.lease(0, project="A", cap=1)
    with pytest.raises(NoWorkerSlotError) as caught:
        gate.lease(0, project="A", cap=1)
    assert caught.value.limit == "project"
    assert "at its cap of 1; all 1 slots busy" in str(caught.value)


def test_a_raised_cap_lets_waiters_in(line_of: Callable[[SlotGate], Line]) -> None:
    gate = SlotGate(4)
    line = line_of(gate)
    line.join("a0", project="A", cap=1)
    line.join("a1", project="A", cap=1)
    assert line.order == ["a0"]
    line.join("a2", project="A", cap=3)  # the project's cap is the latest one named
    wait_until(lambda: len(line.order) == 3)
    assert sorted(line.order) == ["a0", "a1", "a2"]
    assert gate.in_use_by("A") == 3


def test_idle_projects_are_forgotten() -> None:
    gate = SlotGate(2)
    held = gate.lease(0, project="busy", cap=1)
    for n in range(1000):
        gate.lease(0, project=f"p{n}", cap=1).release()
        lease = gate.lease(0, project=f"q{n}", cap=1)
        with pytest.raises(NoWorkerSlotError):
            gate.lease(0, project=f"q{n}", cap=1)
        lease.release()
        assert len(gate._projects) <= 257
    assert gate.in_use_by("busy") == 1  # a project holding a slot is kept
    held.release()
    assert gate.in_use == 0 and gate.waiting == 0


# --------------------------------------------------------------------------- over capacity


def test_over_capacity_slots_drain_before_waiters_get_one(
    line_of: Callable[[SlotGate], Line],
) -> None:
    gate = SlotGate(2)
    first = gate.lease(0, project="A", cap=1)
    adopted = gate.lease_over_capacity("A", cap=1)  # an adopted worker already runs
    assert gate.in_use == 2 and gate.in_use_by("A") == 2
    line = line_of(gate)
    line.join("a", project="A", cap=1)
    line.join("b", project="B")
    assert line.order == []  # the router is full too
    adopted.release()
    wait_until(lambda: line.order == ["b"])  # A is still at its cap
    first.release()
    wait_until(lambda: line.order == ["b", "a"])
    line.release("a")
    line.release("b")
    assert gate.in_use == 0


# --------------------------------------------------------------------------- cancellation


def test_cancel_ends_a_wait_with_a_typed_error(line_of: Callable[[SlotGate], Line]) -> None:
    gate = SlotGate(1)
    holder = gate.lease(0)
    line = line_of(gate)
    line.join("job-1", timeout=None)
    line.join("job-2", timeout=None)
    assert gate.cancel("job-1") is True
    wait_until(lambda: "job-1" in line.errors)
    err = line.errors["job-1"]
    assert isinstance(err, WorkerCancelledError) and err.job_id == "job-1" and err.waiting
    assert gate.waiting == 1
    assert gate.cancel("job-1") is False  # gone
    assert gate.cancel("never") is False
    holder.release()
    wait_until(lambda: line.order == ["job-2"])  # the cancelled waiter's place went on
    assert gate.cancel("job-2") is False  # holds its slot: nothing to cancel
    line.release("job-2")
    assert gate.in_use == 0 and gate.waiting == 0


def test_cancel_racing_a_release_keeps_every_slot_once() -> None:
    for _ in range(200):
        gate = SlotGate(1)
        holder = gate.lease(0)
        got: list[object] = []

        def wait(gate: SlotGate = gate, got: list[object] = got) -> None:
            try:
                got.append(gate.lease(5, name="j"))
            except WorkerCancelledError as err:
                got.append(err)

        waiter = threading.Thread(target=wait)
        waiter.start()
        wait_until(lambda gate=gate: gate.waiting == 1)
        releaser = threading.Thread(target=holder.release)
        releaser.start()
        cancelled = gate.cancel("j")
        releaser.join()
        waiter.join()
        assert len(got) == 1
        if cancelled:
            assert isinstance(got[0], WorkerCancelledError)
            assert gate.in_use == 0
        else:
            assert isinstance(got[0], SlotLease)
            assert gate.in_use == 1
            got[0].release()
        assert gate.in_use == 0 and gate.waiting == 0


# --------------------------------------------------------------------------- interrupts


class Interrupted(Exception):
    """What a host's signal handler raises (its own KeyboardInterrupt, say)."""


@pytest.mark.parametrize("exc", [Interrupted, KeyboardInterrupt])
def test_an_interrupted_wait_gives_its_place_up(
    line_of: Callable[[SlotGate], Line], exc: type[BaseException]
) -> None:
    gate = SlotGate(1)
    holder = gate.lease(0, project="A", cap=1)
    line = line_of(gate)

    def handler(signum: int, frame: object) -> None:
        raise exc

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(exc):
            gate.lease(30, project="A", cap=1, priority=5, name="interrupted")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert gate.waiting == 0
    line.join("next", project="A", cap=1)
    holder.release()
    wait_until(lambda: line.order == ["next"])  # the slot did not go to the dead waiter
    line.release("next")
    assert gate.in_use == 0 and gate.in_use_by("A") == 0


def test_timeouts_racing_releases_never_lose_or_double_a_slot() -> None:
    gate = SlotGate(1)
    for n in range(200):
        holder = gate.lease(0, project="A", cap=1)
        result: list[object] = []

        def wait(result: list[object] = result, n: int = n) -> None:
            try:
                result.append(gate.lease(0.001, project="A", cap=1, priority=n % 3))
            except NoWorkerSlotError as err:
                result.append(err)

        waiter = threading.Thread(target=wait)
        waiter.start()
        holder.release()  # may land just as the waiter times out
        waiter.join()
        if isinstance(result[0], SlotLease):
            result[0].release()
        assert gate.in_use == 0, result
        assert gate.waiting == 0


def test_caps_hold_under_contention() -> None:
    gate = SlotGate(5)
    caps = {"A": 2, "B": 1, None: None}
    holders: dict[str | None, int] = dict.fromkeys(caps, 0)
    peak: dict[str | None, int] = dict.fromkeys(caps, 0)
    total_peak = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(project: str | None, priority: int) -> None:
        nonlocal total_peak
        try:
            for _ in range(40):
                try:
                    lease = gate.lease(5, project=project, cap=caps[project], priority=priority)
                except NoWorkerSlotError:
                    continue
                with lock:
                    holders[project] += 1
                    peak[project] = max(peak[project], holders[project])
                    total_peak = max(total_peak, sum(holders.values()))
                time.sleep(0.0005)
                with lock:
                    holders[project] -= 1
                lease.release()
        except BaseException as err:
            errors.append(err)

    threads = [
        threading.Thread(target=worker, args=(project, n % 3))
        for n, project in enumerate(["A", "A", "A", "B", "B", None, None, None, None, "A"])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert peak["A"] == 2 and peak["B"] == 1 and total_peak <= 5
    assert gate.in_use == 0 and gate.waiting == 0


# --------------------------------------------------------------------------- a model


CAPS: dict[str | None, int | None] = {"A": 1, "B": 2, "C": None, None: None}
CAPACITY = 3

arrivals = st.tuples(st.just("arrive"), st.sampled_from(list(CAPS)), st.integers(-1, 2))
releases = st.tuples(st.just("release"), st.integers(0, 50), st.just(0))
cancels = st.tuples(st.just("cancel"), st.integers(0, 50), st.just(0))


class Model:
    """The rule, plainly: the best (priority, arrival) waiter whose project has room."""

    def __init__(self) -> None:
        self.waiting: list[tuple[int, int, str, str | None]] = []  # (-priority, n, name, p)
        self.held: dict[str, str | None] = {}

    def used(self, project: str | None) -> int:
        return sum(1 for p in self.held.values() if p == project)

    def room(self, project: str | None) -> bool:
        cap = CAPS[project]
        return cap is None or self.used(project) < cap

    def dispatch(self) -> None:
        while len(self.held) < CAPACITY:
            eligible = [w for w in sorted(self.waiting) if self.room(w[3])]
            if not eligible:
                return
            self.waiting.remove(eligible[0])
            self.held[eligible[0][2]] = eligible[0][3]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.one_of(arrivals, arrivals, releases, cancels), min_size=1, max_size=25))
def test_the_gate_matches_the_model(ops: list[tuple[str, object, int]]) -> None:
    gate = SlotGate(CAPACITY)
    line = Line(gate)
    model = Model()
    try:
        for n, (op, arg, priority) in enumerate(ops):
            if op == "arrive":
                project = arg if isinstance(arg, str) else None
                name = f"w{n}"
                model.waiting.append((-priority, n, name, project))
                model.dispatch()
                line.join(name, project=project, cap=CAPS[project], priority=priority)
            elif op == "release":
                held = sorted(model.held)
                if not held:
                    continue
                name = held[int(str(arg)) % len(held)]
                del model.held[name]
                model.dispatch()
                line.release(name)
            else:
                waiting = sorted(model.waiting)
                if not waiting:
                    continue
                entry = waiting[int(str(arg)) % len(waiting)]
                model.waiting.remove(entry)
                assert gate.cancel(entry[2])
                wait_until(lambda entry=entry: entry[2] in line.errors)
            wait_until(lambda: len(line.leases) == len(model.held) + _released(line, model))
            assert set(model.held) <= set(line.leases)
            assert gate.waiting == len(model.waiting)
            assert gate.in_use == len(model.held)
            for project in CAPS:
                assert gate.in_use_by(project) == model.used(project)
    finally:
        for name in list(gate._names):
            gate.cancel(name)
        line.close()


def _released(line: Line, model: Model) -> int:
    """Leases handed out whose holder has released them since."""
    return sum(1 for name in line.leases if name not in model.held)

"""The Swarm backend without an engine: configuration, and the task poller on a fake engine."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dockyard import ConfigError, ProjectConfig, RouterConfig
from dockyard._driver import ExitResult
from dockyard._drivers import check_projects
from dockyard._errors import EngineNotFoundError, ExitWaitClosedError
from dockyard._swarm_tasks import TaskPoller, exit_code_of


def test_backend_defaults_to_docker_and_takes_swarm() -> None:
    assert RouterConfig().backend == "docker"
    assert RouterConfig(backend="swarm").backend == "swarm"


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="backend: must be one of docker, swarm"):
        RouterConfig(backend="kubernetes")


def test_swarm_with_snapshots_is_refused_saying_why() -> None:
    with pytest.raises(ConfigError, match="committed on the node that ran the job"):
        RouterConfig(backend="swarm", snapshot_enabled=True)


def test_swarm_with_a_snapshotting_project_is_refused() -> None:
    config = RouterConfig(backend="swarm")
    with pytest.raises(ConfigError, match=r"ProjectConfig.snapshot_enabled \(p1\)"):
        check_projects(config.backend, [ProjectConfig(id="p1", snapshot_enabled=True)])
    check_projects(RouterConfig().backend, [ProjectConfig(id="p1", snapshot_enabled=True)])


def test_backend_settings_from_the_environment() -> None:
    config = RouterConfig.from_env(
        {"DOCKYARD_BACKEND": "swarm", "DOCKYARD_SWARM_PENDING_TIMEOUT_MS": "2500"}
    )
    assert config.backend == "swarm"
    assert config.swarm_pending_timeout_s == 2.5
    with pytest.raises(ConfigError, match="DOCKYARD_BACKEND"):
        RouterConfig.from_env({"DOCKYARD_BACKEND": "podman"})
    with pytest.raises(ConfigError, match="DOCKYARD_SWARM_PENDING_TIMEOUT_MS"):
        RouterConfig.from_env({"DOCKYARD_SWARM_PENDING_TIMEOUT_MS": "0"})


def task(service: str, state: str, code: int | None = None, err: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"State": state, "Err": err}
    if code is not None:
        status["ContainerStatus"] = {"ContainerID": "c" * 64, "ExitCode": code}
    return {"ID": f"t-{service}", "ServiceID": service, "Version": {"Index": 1}, "Status": status}


class FakeSwarm:
    """Answers `tasks` from a dict of service id -> task; counts the calls."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.services: set[str] = set()
        self.task_calls = 0
        self.service_calls = 0

    def list_tasks(self, ids: list[str]) -> list[dict[str, Any]]:
        self.task_calls += 1
        if any(i not in self.services for i in ids):
            raise EngineNotFoundError("task_list", 404, "service not found")  # as translated
        return [self.tasks[i] for i in ids if i in self.tasks]

    def list_services(self) -> set[str]:
        self.service_calls += 1
        return set(self.services)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def poller(fake: FakeSwarm, clock: Clock, pending_s: float = 30.0) -> TaskPoller:
    # No thread: the tests drive `tick()` themselves.
    return TaskPoller(
        fake.list_tasks,
        fake.list_services,
        interval_s=3600,
        pending_timeout_s=pending_s,
        unreachable_window_s=60,
        clock=clock,
        autostart=False,
    )


@pytest.mark.parametrize("workers", [10, 200])
def test_one_engine_call_per_tick_whatever_the_number_of_workers(workers: int) -> None:
    fake, clock = FakeSwarm(), Clock()
    p = poller(fake, clock)
    ids = [f"s{i}" for i in range(workers)]
    fake.services.update(ids)
    tickets = [p.register(i) for i in ids]
    for i in ids:
        fake.tasks[i] = task(i, "running")
    p.tick()
    p.tick()
    assert not any(t.done() for t in tickets)
    for n, i in enumerate(ids):
        fake.tasks[i] = task(i, "failed" if n % 2 else "complete", n % 2)
    p.tick()
    assert fake.task_calls == p.ticks == 3  # one call per tick, never one per worker
    assert [t.result().exit_code for t in tickets] == [n % 2 for n in range(workers)]
    assert p.watched() == 0
    p.close(1)


def test_rejected_task_has_no_exit_code() -> None:
    rejected = task("s", "rejected", err="No such image: x")
    rejected["Status"]["ContainerStatus"] = {"ContainerID": "", "ExitCode": 0}
    assert exit_code_of(rejected) is None
    assert exit_code_of(task("s", "complete")) == 0
    assert exit_code_of(task("s", "running", 0)) is None


def test_task_pending_past_the_timeout_ends_with_the_scheduler_reason() -> None:
    fake, clock = FakeSwarm(), Clock()
    p = poller(fake, clock, pending_s=5)
    fake.services.add("s")
    ticket = p.register("s")
    fake.tasks["s"] = task("s", "pending", err="no suitable node (insufficient resources)")
    p.tick()
    assert not ticket.done()
    clock.now = 6
    p.tick()
    assert ticket.result() == ExitResult(exit_code=None)
    ending = p.ending("s")
    assert ending is not None and ending.unplaced is not None
    assert "insufficient resources" in ending.unplaced
    p.close(1)


def test_a_service_removed_behind_our_back_answers_without_failing_the_others() -> None:
    fake, clock = FakeSwarm(), Clock()
    p = poller(fake, clock)
    fake.services.update({"a", "b"})
    a, b = p.register("a"), p.register("b")
    fake.tasks["a"] = task("a", "running")
    fake.tasks["b"] = task("b", "running")
    p.tick()
    fake.services.discard("a")  # removed by an operator
    del fake.tasks["a"]
    p.tick()  # 404 for the pair -> one service listing -> the survivor asked again
    assert fake.service_calls == 1
    assert a.done() and a.result().exit_code is None
    assert not b.done()
    p.close(1)
    with pytest.raises(ExitWaitClosedError):
        b.result()


def test_a_blip_keeps_the_tickets_and_a_long_outage_fails_them() -> None:
    fake, clock = FakeSwarm(), Clock()
    p = poller(fake, clock)
    fake.services.add("s")
    ticket = p.register("s")
    broken = threading.Event()

    def failing(ids: list[str]) -> list[dict[str, Any]]:
        broken.set()
        raise ConnectionError("engine restarting")

    p._list_tasks = failing
    p.tick()
    assert broken.is_set() and not ticket.done()
    clock.now = 61
    p.tick()
    assert ticket.done()
    with pytest.raises(ConnectionError):
        ticket.result()
    p.close(1)


def test_close_wakes_a_blocked_start_wait() -> None:
    fake, clock = FakeSwarm(), Clock()
    p = poller(fake, clock)
    started = threading.Event()
    p._ensure_thread = started.set  # type: ignore[method-assign]
    fake.services.add("s")
    waiter = threading.Thread(target=p.await_running, args=("s", 60))
    waiter.start()
    assert started.wait(5)
    p.close(1)
    waiter.join(5)
    assert not waiter.is_alive()

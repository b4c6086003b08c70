"""Fork safety on the fake engine: in a real forked child every public call of a manager
created before the fork raises `ForkedManagerError` at once, without an engine call, and
`close()` does nothing; the parent's manager keeps working; a manager made in the child works.
"""

from __future__ import annotations

import inspect
import os
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dockyard import ContainerManager, DockyardError, ForkedManagerError, RouterConfig, WorkerJob
from dockyard.testing import DEFAULT_IMAGE, FakeDockerAPI, RecordingReporter
from forking import in_forked_child


def public_methods() -> list[str]:
    return sorted(
        name
        for name, member in inspect.getmembers(ContainerManager, inspect.isfunction)
        if not name.startswith("_")
    )


@pytest.fixture
def api() -> FakeDockerAPI:
    return FakeDockerAPI(images={DEFAULT_IMAGE})


@pytest.fixture
def manager(api: FakeDockerAPI) -> Iterator[ContainerManager]:
    config = RouterConfig(worker_image=DEFAULT_IMAGE, router_instance_id="fork-unit")
    with ContainerManager(config, docker_client=api, reporter=RecordingReporter()) as made:  # type: ignore[arg-type]
        yield made


def test_every_public_call_raises_in_the_child_without_touching_the_engine(
    api: FakeDockerAPI, manager: ContainerManager
) -> None:
    running = manager.spawn_worker(WorkerJob("parent-job", "build", {}))
    methods = public_methods()
    assert {"spawn_worker", "wait_for_worker", "kill_worker", "close"} <= set(methods)

    def child() -> dict[str, Any]:
        calls_before = len(api.calls)
        answers: dict[str, Any] = {}
        for name in [*methods, "__enter__", "_outcome_future"]:
            started = time.monotonic()
            try:
                returned = getattr(manager, name)()  # the refusal never looks at arguments
            except ForkedManagerError as err:
                answers[name] = ["raised", str(err), time.monotonic() - started]
            else:
                answers[name] = ["returned", repr(returned), time.monotonic() - started]
        try:
            manager.snapshots.get("p", "w")
        except ForkedManagerError:
            answers["snapshots"] = ["raised", "", 0.0]
        return {
            "answers": answers,
            "engine_calls": len(api.calls) - calls_before,
            "config": manager.config.router_instance_id,  # plain data stays readable
            "is_manager": isinstance(manager, ContainerManager),
        }

    got = in_forked_child(child)
    answers = got["answers"]
    assert answers.pop("close")[:2] == ["returned", "None"]  # quiet in the child
    assert {name: kind for name, (kind, _, _) in answers.items()} == dict.fromkeys(
        answers, "raised"
    )
    assert all(seconds < 0.1 for _, _, seconds in answers.values())
    message = answers["spawn_worker"][1]
    assert f"created in process {os.getpid()}" in message
    assert "Create the ContainerManager in the child, after the fork" in message
    assert got["engine_calls"] == 0
    assert got["config"] == "fork-unit"
    assert got["is_manager"] is True

    # The parent's manager is untouched: its worker still ends, a new one starts.
    assert type(manager) is ContainerManager
    api.exit(running.container_id, 0)
    assert manager.wait_for_worker("parent-job", timeout=5).status == "succeeded"
    again = manager.spawn_worker(WorkerJob("parent-job-2", "build", {}))
    api.exit(again.container_id, 1)
    assert manager.wait_for_worker("parent-job-2", timeout=5).status == "failed"


def test_closing_in_the_child_leaves_the_parents_threads_and_containers_alone(
    api: FakeDockerAPI, manager: ContainerManager
) -> None:
    running = manager.spawn_worker(WorkerJob("held", "build", {}))
    threads_before = {t.name for t in threading.enumerate()}

    def child() -> str:
        with manager:  # __enter__ refuses; nothing was entered
            pass
        return "entered"

    refused = in_forked_child(child)
    assert refused["raised"] == "ForkedManagerError"
    assert in_forked_child(lambda: (manager.close(), manager.close(), len(api.calls))) == [
        None,
        None,
        len(api.calls),
    ]
    assert {t.name for t in threading.enumerate()} >= threads_before
    assert manager.get_active_worker_count() == 1
    assert api.containers_by_id[running.container_id].status == "running"
    api.exit(running.container_id, 0)
    assert manager.wait_for_worker("held", timeout=5).status == "succeeded"


def test_a_manager_created_in_the_child_works() -> None:
    parent_api = FakeDockerAPI(images={DEFAULT_IMAGE})
    config = RouterConfig(worker_image=DEFAULT_IMAGE, router_instance_id="fork-unit")
    parent = ContainerManager(config, docker_client=parent_api)  # type: ignore[arg-type]

    def child() -> str:
        api = FakeDockerAPI(images={DEFAULT_IMAGE})
        with ContainerManager(parent.config, docker_client=api) as own:  # type: ignore[arg-type]
            worker = own.spawn_worker(WorkerJob("child-job", "build", {}))
            api.exit(worker.container_id, 0)
            return own.wait_for_worker("child-job", timeout=5).status

    try:
        assert in_forked_child(child) == "succeeded"
    finally:
        parent.close()


def test_a_subclass_of_the_manager_is_refused_too(api: FakeDockerAPI) -> None:
    class RouterManager(ContainerManager):
        def spawn_named(self, name: str) -> Any:
            return self.spawn_worker(WorkerJob(name, "build", {}))

    config = RouterConfig(worker_image=DEFAULT_IMAGE, router_instance_id="fork-unit")
    with RouterManager(config, docker_client=api) as made:  # type: ignore[arg-type]
        got = in_forked_child(lambda: made.spawn_named("x"))
        assert got["raised"] == "ForkedManagerError"
        assert type(made) is RouterManager


def test_a_bound_method_taken_before_the_fork_refuses_too(
    api: FakeDockerAPI, manager: ContainerManager
) -> None:
    spawn = manager.spawn_worker  # a host that hands the method around, taken in the parent

    def child() -> list[Any]:
        before = len(api.calls)
        try:
            spawn(WorkerJob("bound", "build", {}))
        except ForkedManagerError:
            return ["refused", len(api.calls) - before]
        return ["spawned", len(api.calls) - before]

    assert in_forked_child(child) == ["refused", 0]


def test_a_grandchild_refuses_a_manager_its_parent_created() -> None:
    def child() -> Any:
        api = FakeDockerAPI(images={DEFAULT_IMAGE})
        config = RouterConfig(worker_image=DEFAULT_IMAGE, router_instance_id="fork-unit")
        with ContainerManager(config, docker_client=api) as own:  # type: ignore[arg-type]
            return in_forked_child(own.get_active_workers)["raised"]

    assert in_forked_child(child) == "ForkedManagerError"


def test_the_error_is_typed_picklable_and_names_both_processes() -> None:
    err = ForkedManagerError(100, 200)
    assert isinstance(err, DockyardError)
    assert isinstance(err, RuntimeError)
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), copy.owner_pid, copy.pid, str(copy)) == (
        ForkedManagerError,
        100,
        200,
        str(err),
    )
    assert "created in process 100" in str(err)
    assert "process 200" in str(err)

"""Launch, exit-handling and timeout paths against a fake Docker API: order and error paths.

`dockyard.testing.FakeDockerAPI` stands in for docker-py's low-level ``APIClient`` (passed
to ``ContainerManager`` as ``docker_client``), so the real gateway, launcher, exit watcher
and timers run against an engine whose failures the test chooses. Exits arrive as `die`
events on the fake engine's events stream, as with the real engine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import docker.errors
import pytest
import requests

from dockyard import (
    ActiveWorker,
    DockerUnavailableError,
    DuplicateJobError,
    ProjectConfig,
    WorkerImageResolutionError,
    WorkerSpawnError,
)
from dockyard.testing import (
    FakeDockerAPI,
    api_error,
)
from support.hosts import StaticProjects
from support.rig import (
    BASE_IMAGE,
    INSTANCE,
    PROJECT_DIGEST,
    Rig,
    job,
    verified_project,
)
from support.threads import ThreadBaseline, eventually

# --------------------------------------------------------------------------- launch


def test_launch_order(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    api, manager = rig.api, rig.manager
    seen_at_listener: dict[str, Any] = {}

    def record(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            api._record(name)
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        manager._parts.timeouts, "arm", record("arm_timer", manager._parts.timeouts.arm)
    )
    monkeypatch.setattr(
        manager._parts.registry, "register", record("register", manager._parts.registry.register)
    )
    monkeypatch.setattr(manager._parts.exits, "watch", record("watch", manager._parts.exits.watch))

    def on_started(worker: ActiveWorker) -> None:
        api._record("listener")
        seen_at_listener["active"] = [w.job_id for w in manager.get_active_workers()]

    rig.listener._on_started = on_started
    worker = manager.spawn_worker(job())

    # The engine is asked once which it is (on Podman an auto-removed worker is made without
    # AutoRemove); the events stream is connected (its first use), and the output attached,
    # before the container starts.
    assert api.call_names() == [
        "ping",
        "create_container",
        "events",
        "attach",
        "start",
        "arm_timer",
        "register",
        "listener",
        "watch",
    ]
    assert len(api.streams) == 1
    assert seen_at_listener["active"] == ["job-1"]
    assert worker.container_id == api.only_container().id
    api.exit(worker.container_id, 0)
    assert manager.wait_for_worker("job-1", timeout=10).status == "succeeded"


def test_instant_exit_is_seen_and_started_comes_before_finished(rig: Rig) -> None:
    rig.api.exit_on_start = 0  # exits during `start`, before anything else happens
    rig.manager.spawn_worker(job())
    outcome = rig.manager.wait_for_worker("job-1", timeout=10)
    assert outcome.status == "succeeded"
    rig.listener.wait_finished("job-1")
    assert [kind for kind, _, _ in rig.listener.events] == ["started", "finished"]


def test_create_failure_registers_nothing_and_frees_the_slot(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(max_workers=1)
    boom = api_error(500, "engine exploded")
    rig.api.failures["create_container"] = [boom]

    with pytest.raises(WorkerSpawnError) as info:
        rig.manager.spawn_worker(job())
    assert info.value.status_code == 500
    assert info.value.__cause__ is boom  # the engine's error, for the host to inspect

    assert rig.manager.get_active_worker_count() == 0
    assert rig.listener.events == []
    assert "start" not in rig.api.call_names()
    with pytest.raises(KeyError):
        rig.manager.wait_for_worker("job-1", timeout=0.1)
    (report,) = rig.reporter.reports
    assert report.err.__cause__ is boom
    assert report.source == "worker_spawn"
    assert report.extras == {"jobId": "job-1"}
    assert report.tags == {"jobType": "trello"}
    # The single slot and the id are free again.
    rig.manager.spawn_worker(job(), slot_timeout=0.1)
    assert rig.manager.get_active_worker_count() == 1


def test_start_failure_removes_the_created_container(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(max_workers=1)
    rig.api.failures["start"] = [api_error(500, "cannot start container")]

    with pytest.raises(WorkerSpawnError):
        rig.manager.spawn_worker(job())

    created = rig.api.calls_of("start")[0]
    assert rig.api.calls_of("remove_container") == [created]
    assert rig.api.containers_by_id == {}
    assert rig.manager.get_active_worker_count() == 0
    assert rig.listener.events == []
    assert rig.reporter.sources() == ["worker_spawn"]
    rig.manager.spawn_worker(job(), slot_timeout=0.1)  # the slot came back


def test_unreachable_engine_is_a_docker_unavailable_error(rig: Rig) -> None:
    rig.api.failures["create_container"] = [
        requests.exceptions.ConnectionError("refused"),
        requests.exceptions.ConnectionError("refused"),
    ]
    with pytest.raises(DockerUnavailableError):
        rig.manager.spawn_worker(job())
    assert rig.reporter.sources() == ["worker_spawn"]
    assert rig.manager.get_active_worker_count() == 0


def _leftover_labels(job_id: str, instance: str) -> dict[str, str]:
    return {
        "cascade.managed": "true",
        "cascade.router.instance": instance,
        "cascade.job.id": job_id,
    }


def test_conflict_with_a_stopped_leftover_of_the_same_job_is_removed_and_retried(
    rig: Rig,
) -> None:
    leftover = rig.api.add_container(
        "cascade-worker-job-1", _leftover_labels("job-1", INSTANCE), "exited"
    )

    worker = rig.manager.spawn_worker(job())

    assert rig.api.call_names()[:8] == [
        "ping",  # which engine it is, asked once (see test_launch_order)
        "create_container",
        "inspect_container",
        "remove_container",
        "create_container",
        "events",
        "attach",
        "start",
    ]
    assert rig.api.calls_of("inspect_container")[0] == "cascade-worker-job-1"
    assert rig.api.calls_of("remove_container") == [leftover.id]
    assert worker.container_id != leftover.id
    assert rig.reporter.reports == []


def test_conflict_twice_is_not_retried_again(rig: Rig) -> None:
    rig.api.add_container("cascade-worker-job-1", _leftover_labels("job-1", INSTANCE), "exited")
    conflict = api_error(409, "Conflict. The container name is already in use")
    rig.api.failures["create_container"] = [conflict, conflict]
    with pytest.raises(WorkerSpawnError) as info:
        rig.manager.spawn_worker(job())
    assert info.value.status_code == 409
    assert rig.api.call_names().count("create_container") == 2
    assert rig.manager.get_active_worker_count() == 0


def test_conflict_with_a_running_leftover_of_the_same_job_is_a_duplicate(rig: Rig) -> None:
    leftover = rig.api.add_container(
        "cascade-worker-job-1", _leftover_labels("job-1", INSTANCE), "running"
    )
    with pytest.raises(DuplicateJobError):
        rig.manager.spawn_worker(job())
    assert rig.api.calls_of("remove_container") == []
    assert leftover.id in rig.api.containers_by_id
    assert rig.reporter.reports == []


@pytest.mark.parametrize(
    "labels",
    [
        _leftover_labels("job-1", "another-router"),
        {"unrelated": "container"},
    ],
    ids=["other-instance", "foreign"],
)
def test_conflict_with_someone_elses_container_is_reraised(
    rig: Rig, labels: dict[str, str]
) -> None:
    leftover = rig.api.add_container("cascade-worker-job-1", labels, "exited")
    with pytest.raises(WorkerSpawnError) as info:
        rig.manager.spawn_worker(job())
    assert info.value.status_code == 409
    assert rig.api.calls_of("remove_container") == []
    assert leftover.id in rig.api.containers_by_id
    assert rig.api.call_names().count("create_container") == 1
    assert rig.reporter.sources() == ["worker_spawn"]
    assert rig.manager.get_active_worker_count() == 0


def test_conflict_with_another_job_of_the_same_name_is_a_clear_duplicate(rig: Rig) -> None:
    # `another-job` took the name first (say `job:1` vs `job/1` in another manager).
    leftover = rig.api.add_container(
        "cascade-worker-job-1", _leftover_labels("another-job", INSTANCE), "exited"
    )
    with pytest.raises(DuplicateJobError) as info:
        rig.manager.spawn_worker(job())
    assert (info.value.job_id, info.value.other_job_id) == ("job-1", "another-job")
    assert "another-job" in str(info.value) and "job-1" in str(info.value)
    assert rig.api.calls_of("remove_container") == []
    assert leftover.id in rig.api.containers_by_id
    assert rig.manager.get_active_worker_count() == 0


# --------------------------------------------------------------------------- images


def _snapshot_rig(rig_factory: Callable[..., Rig], images: set[str] | None = None) -> Rig:
    rig = rig_factory(snapshot_enabled=True, images=images)
    rig.manager.snapshots.register("p1", "w1", "cascade-snapshot-gone:latest")
    return rig


def test_missing_snapshot_image_falls_back_to_the_base_image(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = _snapshot_rig(rig_factory)

    worker = rig.manager.spawn_worker(job(projectId="p1", workItemId="w1"))

    first, second = rig.api.calls_of("create_container")
    assert first["image"] == "cascade-snapshot-gone:latest"
    assert "CASCADE_SNAPSHOT_REUSE=true" in first["env"]
    assert second["image"] == BASE_IMAGE
    assert "CASCADE_SNAPSHOT_REUSE=true" not in second["env"]
    assert "CASCADE_SNAPSHOT_ENABLED=true" in second["env"]
    assert worker.image == BASE_IMAGE
    assert rig.manager.snapshots.get("p1", "w1") is None
    assert rig.api.calls_of("pull") == []
    assert rig.reporter.reports == []


def test_failed_snapshot_fallback_is_reported_as_worker_spawn_fallback(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = _snapshot_rig(rig_factory)
    missing = api_error(404, "No such image: cascade-snapshot-gone:latest", docker.errors.NotFound)
    broken = api_error(500, "no space left on device")
    rig.api.failures["create_container"] = [missing, broken]

    with pytest.raises(WorkerSpawnError) as info:
        rig.manager.spawn_worker(job(projectId="p1", workItemId="w1"))
    assert info.value.__cause__ is broken

    (report,) = rig.reporter.reports  # reported once, not again as worker_spawn
    assert report.source == "worker_spawn_fallback"
    assert report.err.__cause__ is broken
    assert report.tags == {"jobType": "trello"}
    assert report.extras == {"jobId": "job-1", "staleImage": "cascade-snapshot-gone:latest"}
    assert rig.manager.snapshots.get("p1", "w1") is None
    assert rig.manager.get_active_worker_count() == 0


def test_a_404_that_is_not_about_the_image_is_no_fallback(rig_factory: Callable[..., Rig]) -> None:
    rig = _snapshot_rig(rig_factory, images={BASE_IMAGE, "cascade-snapshot-gone:latest"})
    rig.api.failures["create_container"] = [
        api_error(404, "network cascade-net not found", docker.errors.NotFound)
    ]
    with pytest.raises(WorkerSpawnError) as info:
        rig.manager.spawn_worker(job(projectId="p1", workItemId="w1"))
    assert info.value.status_code == 404
    assert rig.manager.snapshots.get("p1", "w1") is not None
    assert rig.reporter.sources() == ["worker_spawn"]
    assert rig.api.calls_of("pull") == []


def test_missing_base_image_is_pulled_once_then_retried(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(images=set())

    worker = rig.manager.spawn_worker(job())

    assert rig.api.calls_of("pull") == [BASE_IMAGE]
    assert [c["image"] for c in rig.api.calls_of("create_container")] == [BASE_IMAGE] * 2
    assert worker.image == BASE_IMAGE
    assert rig.reporter.reports == []


def test_missing_base_image_in_the_snapshot_fallback_is_pulled_not_looped(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = _snapshot_rig(rig_factory, images=set())

    worker = rig.manager.spawn_worker(job(projectId="p1", workItemId="w1"))

    images = [c["image"] for c in rig.api.calls_of("create_container")]
    assert images == ["cascade-snapshot-gone:latest", BASE_IMAGE, BASE_IMAGE]
    assert rig.api.calls_of("pull") == [BASE_IMAGE]
    assert worker.image == BASE_IMAGE


def test_pull_failure_of_the_global_image_raises_the_pull_error(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(images=set())
    rig.api.pull_error = "manifest unknown"

    with pytest.raises(WorkerSpawnError, match="manifest unknown"):
        rig.manager.spawn_worker(job())

    (report,) = rig.reporter.reports
    assert report.source == "worker_image_pull_fallback"
    assert report.tags == {"jobType": "trello"}
    assert report.extras["jobId"] == "job-1"
    assert rig.api.calls_of("pull") == [BASE_IMAGE]
    assert rig.manager.get_active_worker_count() == 0


def test_verified_project_image_runs_on_its_digest(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(images={PROJECT_DIGEST}, projects=StaticProjects(verified_project()))
    worker = rig.manager.spawn_worker(job(projectId="proj"))
    assert worker.image == PROJECT_DIGEST
    assert [c["image"] for c in rig.api.calls_of("create_container")] == [PROJECT_DIGEST]


def test_pull_failure_of_a_project_image_is_a_resolution_error(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(images={BASE_IMAGE}, projects=StaticProjects(verified_project()))
    rig.api.pull_error = "manifest unknown"

    with pytest.raises(WorkerImageResolutionError):
        rig.manager.spawn_worker(job(projectId="proj"))

    assert rig.reporter.sources() == ["worker_image_pull_fallback"]
    # Never silently on the global image instead.
    assert {c["image"] for c in rig.api.calls_of("create_container")} == {PROJECT_DIGEST}
    assert rig.manager.get_active_worker_count() == 0


@pytest.mark.parametrize(
    "project",
    [
        verified_project(worker_image_status="pending"),
        verified_project(worker_image_status=None),
        verified_project(worker_image_digest=None),
        verified_project(worker_image_digest=""),
    ],
    ids=["pending", "no-status", "no-digest", "empty-digest"],
)
def test_unverified_project_image_is_refused_before_any_docker_call(
    rig_factory: Callable[..., Rig], project: ProjectConfig
) -> None:
    rig = rig_factory(projects=StaticProjects(project))
    with pytest.raises(WorkerImageResolutionError):
        rig.manager.spawn_worker(job(projectId="proj"))
    assert rig.api.calls == []
    assert rig.reporter.reports == []


# --------------------------------------------------------------------------- timeouts


def test_timer_fires_reports_and_gives_one_timed_out_outcome(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(worker_timeout_s=0.2)
    worker = rig.manager.spawn_worker(job())

    outcome = rig.manager.wait_for_worker("job-1", timeout=10)

    assert outcome.status == "timed_out"
    assert rig.api.calls_of("stop") == [(worker.container_id, 1)]
    (report,) = rig.reporter.reports
    assert report.source == "worker_timeout"
    assert report.level == "warning"
    assert str(report.err).startswith("Worker timeout after ")
    assert report.extras["jobId"] == "job-1"
    assert report.extras["durationMs"] >= 200
    assert rig.listener.wait_finished("job-1") == outcome
    time.sleep(0.2)
    assert len(rig.listener.outcomes("job-1")) == 1


def test_exit_while_the_kill_is_under_way_stays_timed_out(rig: Rig) -> None:
    """The original's race: the kill starts, the worker exits by itself, then stop returns."""
    rig.api.stop_exits = False
    exited = threading.Event()

    def exit_during_stop(container_id: str) -> None:
        rig.api.exit(container_id, 1)  # a failure exit that lands inside the kill path
        exited.set()

    rig.api.before_stop = exit_during_stop
    rig.manager.spawn_worker(job())

    assert rig.manager.kill_worker("job-1") is True
    outcome = rig.manager.wait_for_worker("job-1", timeout=10)

    assert exited.is_set()
    assert outcome.status == "timed_out"
    assert outcome.exit_code == 1
    assert rig.reporter.of("worker_exit") == []
    rig.listener.wait_finished("job-1")
    time.sleep(0.2)
    assert len(rig.listener.outcomes("job-1")) == 1
    assert rig.manager.kill_worker("job-1") is False


def test_timer_after_the_exit_does_nothing(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(worker_timeout_s=0.3)
    rig.api.exit_on_start = 0
    rig.manager.spawn_worker(job())
    assert rig.manager.wait_for_worker("job-1", timeout=10).status == "succeeded"
    time.sleep(0.5)  # past the deadline: the cancelled timer must stay silent
    assert rig.api.calls_of("stop") == []
    assert rig.reporter.reports == []


def test_stop_failure_falls_back_to_kill(rig: Rig) -> None:
    rig.api.failures["stop"] = [api_error(500, "stop failed")]
    rig.manager.spawn_worker(job())
    assert rig.manager.kill_worker("job-1") is True
    assert rig.manager.wait_for_worker("job-1", timeout=10).status == "timed_out"
    assert len(rig.api.calls_of("kill")) == 1


# --------------------------------------------------------------------------- waits


def resumed(api: FakeDockerAPI, container_id: str) -> bool:
    """The broken wait was followed by an inspect and a new wait on a new events stream."""
    return (
        len(api.calls_of("events")) >= 2
        and api.calls_of("inspect_container").count(container_id) >= 2
        and any(not stream.closed for stream in api.streams)
    )


def test_broken_wait_on_a_running_worker_resumes(rig: Rig) -> None:
    worker = rig.manager.spawn_worker(job())
    rig.api.break_event_streams()
    eventually(lambda: resumed(rig.api, worker.container_id))
    rig.api.exit(worker.container_id, 5)

    outcome = rig.manager.wait_for_worker("job-1", timeout=10)

    assert (outcome.status, outcome.exit_code) == ("failed", 5)
    assert rig.reporter.sources() == ["worker_exit"]
    assert rig.reporter.of("worker_exit")[0].extras["statusCode"] == 5


def test_broken_wait_on_an_exited_worker_is_handled_as_its_exit(rig: Rig) -> None:
    worker = rig.manager.spawn_worker(job())
    # Exit without telling the open wait, then break it: only inspect knows the code.
    with rig.api.lock:
        container = rig.api.containers_by_id[worker.container_id]
        container.status, container.exit_code = "exited", 3
    rig.api.break_event_streams()

    outcome = rig.manager.wait_for_worker("job-1", timeout=10)

    assert (outcome.status, outcome.exit_code) == ("failed", 3)
    assert outcome.duration_s == 1.5
    assert rig.reporter.sources() == ["worker_exit"]


def test_inspect_and_log_failures_after_the_exit_never_cost_the_outcome(rig: Rig) -> None:
    worker = rig.manager.spawn_worker(job())
    rig.api.failures["inspect_container"] = [api_error(500, "inspect broke")]
    rig.api.failures["logs"] = [api_error(500, "logs broke")]
    rig.api.exit(worker.container_id, 3)

    outcome = rig.manager.wait_for_worker("job-1", timeout=10)

    assert (outcome.status, outcome.exit_code) == ("failed", 3)
    assert (outcome.oom_killed, outcome.exit_reason) == (None, None)
    # The run's length still comes from the engine's `start` and `die` events.
    assert outcome.duration_s is not None and outcome.duration_s >= 0
    assert outcome.describe().startswith("Worker crashed with exit code 3")
    (report,) = rig.reporter.of("worker_exit")
    assert report.extras == {
        "jobId": "job-1",
        "statusCode": 3,
        "oomKilled": None,
        "exitReason": None,
        "durationMs": int(outcome.duration_s * 1000),
    }


@pytest.mark.parametrize(
    ("started", "finished", "duration"),
    [
        ("2024-05-01T10:00:00.25Z", "2024-05-01T10:00:02.75Z", 2.5),
        ("2024-05-01T10:00:00.000000001Z", "2024-05-01T10:00:00.000000001Z", 0.0),
        # The engine can stamp an instant exit as finishing before it started.
        ("2024-05-01T10:00:01.000Z", "2024-05-01T10:00:00.999Z", None),
    ],
)
def test_duration_only_when_it_makes_sense(
    rig: Rig, started: str, finished: str, duration: float | None
) -> None:
    worker = rig.manager.spawn_worker(job())
    with rig.api.lock:
        container = rig.api.containers_by_id[worker.container_id]
        container.started_at, container.finished_at = started, finished
    rig.api.exit(worker.container_id, 0)
    assert rig.manager.wait_for_worker("job-1", timeout=10).duration_s == duration


@pytest.mark.parametrize(
    ("started", "finished"),
    [("2024-05-01T10:00:00Z", "0001-01-01T00:00:00Z"), ("garbage", "2024-05-01T10:00:00Z")],
)
def test_without_both_inspect_times_the_events_times_give_the_duration(
    rig: Rig, started: str, finished: str
) -> None:
    worker = rig.manager.spawn_worker(job())
    with rig.api.lock:
        container = rig.api.containers_by_id[worker.container_id]
        container.started_at, container.finished_at = started, finished
    time.sleep(0.05)
    rig.api.exit(worker.container_id, 0)
    duration = rig.manager.wait_for_worker("job-1", timeout=10).duration_s
    # The fake's `start` and `die` events, this test's sleep apart (never a mix of sources).
    assert duration is not None and 0.05 <= duration < 5


def test_oom_kill_is_read_from_inspect(rig: Rig) -> None:
    worker = rig.manager.spawn_worker(job())
    rig.api.exit(worker.container_id, 137, oom=True)
    outcome = rig.manager.wait_for_worker("job-1", timeout=10)
    assert outcome.oom_killed is True
    assert outcome.describe() == "Worker crashed with exit code 137 · OOMKilled=true"
    assert rig.reporter.of("worker_exit")[0].extras["oomKilled"] is True


def test_vanished_container_is_lost_and_reported(rig: Rig) -> None:
    worker = rig.manager.spawn_worker(job())
    rig.api.vanish(worker.container_id)

    outcome = rig.manager.wait_for_worker("job-1", timeout=10)

    assert outcome.status == "lost"
    assert outcome.describe().startswith("Worker lost")
    (report,) = rig.reporter.reports
    assert report.source == "worker_wait"
    assert report.extras == {"jobId": "job-1"}
    assert rig.listener.wait_finished("job-1") == outcome


def engine_down(api: FakeDockerAPI) -> None:
    for method in ("inspect_container", "events"):
        api.failures[method] = [requests.exceptions.ConnectionError("down") for _ in range(1000)]


def test_engine_unreachable_past_the_window_is_lost(rig: Rig) -> None:
    rig.manager.spawn_worker(job())
    engine_down(rig.api)
    rig.api.break_event_streams()

    outcome = rig.manager.wait_for_worker("job-1", timeout=20)

    assert outcome.status == "lost"
    assert rig.reporter.sources() == ["worker_wait"]


def test_lost_snapshot_worker_is_removed(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(snapshot_enabled=True)
    worker = rig.manager.spawn_worker(job(projectId="p"))  # no project id: no snapshot mode
    engine_down(rig.api)
    rig.api.break_event_streams()
    assert rig.manager.wait_for_worker("job-1", timeout=20).status == "lost"
    assert worker.container_id in rig.api.calls_of("remove_container")


def test_detach_during_a_resumed_wait_ends_the_watcher(
    thread_baseline: ThreadBaseline, rig_factory: Callable[..., Rig]
) -> None:
    rig = rig_factory()
    worker = rig.manager.spawn_worker(job())
    rig.api.break_event_streams()
    eventually(lambda: resumed(rig.api, worker.container_id))

    rig.manager.close()

    thread_baseline.assert_no_new_threads(timeout=5.0)
    assert rig.listener.outcomes("job-1") == []
    assert worker.container_id in rig.api.containers_by_id  # detached, still running


# --------------------------------------------------------------------------- manager


def test_close_during_a_launch_detaches_the_new_worker_too(
    thread_baseline: ThreadBaseline, rig_factory: Callable[..., Rig]
) -> None:
    rig = rig_factory()
    in_create, release = threading.Event(), threading.Event()

    def block() -> None:
        in_create.set()
        release.wait(10)

    rig.api.before_create = block
    results: list[Any] = []
    spawner = threading.Thread(target=lambda: results.append(rig.manager.spawn_worker(job())))
    spawner.start()
    assert in_create.wait(10)
    closer = threading.Thread(target=rig.manager.close)
    closer.start()
    time.sleep(0.2)  # close() is now waiting for the launch under way
    release.set()
    closer.join(10)
    spawner.join(10)

    assert not closer.is_alive(), "close() hangs on the worker launched while closing"
    assert len(results) == 1 and isinstance(results[0], ActiveWorker)
    assert rig.manager.get_active_worker_count() == 0
    thread_baseline.assert_no_new_threads(timeout=5.0)


def test_jobs_without_id_in_one_millisecond_get_distinct_ids(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dockyard._jobs.time.time", lambda: 1_700_000_000.123)
    first = rig.manager.spawn_worker(job(None))
    second = rig.manager.spawn_worker(job(None))
    assert first.job_id.startswith("unknown-1700000000123-")
    assert second.job_id.startswith("unknown-1700000000123-")
    assert first.job_id != second.job_id
    assert len(rig.api.containers_by_id) == 2  # both run side by side
    env = rig.api.calls_of("create_container")[1]["env"]
    assert f"JOB_ID={second.job_id}" in env


def test_explicit_duplicate_id_is_still_refused(rig: Rig) -> None:
    rig.manager.spawn_worker(job("same"))
    with pytest.raises(DuplicateJobError):
        rig.manager.spawn_worker(job("same"))
    assert rig.api.call_names().count("create_container") == 1


def test_a_lost_start_whose_container_the_engine_removes_is_waited_for(
    rig_factory: Callable[..., Rig],
) -> None:
    # Docker 26+ cancels a start whose answer is lost and AutoRemove takes the container:
    # the discard's remove meets "removal already in progress" and waits for the removal.
    rig = rig_factory(max_workers=1)
    rig.api.failures["start"] = [requests.exceptions.ConnectionError("cut")]
    rig.api.failures["remove_container"] = [
        api_error(409, "removal of container abc is already in progress")
    ]

    with pytest.raises(DockerUnavailableError):
        rig.manager.spawn_worker(job())

    created = rig.api.calls_of("start")[0]
    assert rig.api.calls_of("remove_container") == [created]
    assert rig.api.calls_of("blocking_wait")[-1] == "removed"
    assert rig.manager.get_active_worker_count() == 0


def test_an_oom_kill_the_inspect_came_too_late_for_is_known_from_the_events(rig: Rig) -> None:
    worker = rig.manager.spawn_worker(job())
    # The engine removed the container (AutoRemove) before dockyard's inspect.
    rig.api.failures["inspect_container"] = [api_error(404, "No such container")]
    rig.api.exit(worker.container_id, 137, oom=True)
    outcome = rig.manager.wait_for_worker("job-1", timeout=10)
    assert (outcome.status, outcome.exit_code, outcome.oom_killed) == ("failed", 137, True)
    assert outcome.duration_s is not None and outcome.duration_s >= 0
    assert rig.reporter.of("worker_exit")[0].extras["oomKilled"] is True


def test_the_oom_event_counts_when_the_inspect_says_no_oom_kill(rig: Rig) -> None:
    worker = rig.manager.spawn_worker(job())
    with rig.api.lock:  # held: no inspect before the record is changed
        rig.api.exit(worker.container_id, 137, oom=True)
        # The engine recorded the kill as OOMKilled=false (20.10 now and then does).
        rig.api.containers_by_id[worker.container_id].oom_killed = False
    outcome = rig.manager.wait_for_worker("job-1", timeout=10)
    assert outcome.oom_killed is True
    # The inspect's times, as a pair, over the events'.
    assert outcome.duration_s == 1.5

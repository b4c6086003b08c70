"""Faults injected into the Docker API (through tests/faultproxy.py) on a real engine.

Each fault must end in a typed spawn error or in exactly one outcome, and leave no
container, slot, timer or thread behind. Managers run with ``max_workers=1``, so a
follow-up spawn with ``slot_timeout=0`` proves the slot (and the job id) came back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors
import pytest

from dockyard import (
    ContainerManager,
    DockerUnavailableError,
    WorkerJob,
    WorkerSpawnError,
)
from dockyard._errors import NameInUseError, translate
from faultproxy import FaultProxy, FaultRule
from support.engine import is_podman
from support.listeners import ListenerRecorder
from support.threads import ThreadBaseline, eventually

pytestmark = pytest.mark.docker

OUTCOME_TIMEOUT_S = 30.0


def shell(script: str) -> list[str]:
    return ["sh", "-c", script]


@pytest.fixture
def proxy_seed() -> int:
    return 4


@pytest.fixture
def baseline(proxy: FaultProxy) -> ThreadBaseline:
    """Threads alive once the proxy listens (its accept thread is not the library's)."""
    return ThreadBaseline()


@pytest.fixture
def rig(
    proxy: FaultProxy,
    proxied: docker.APIClient,
    baseline: ThreadBaseline,
    make_manager: Callable[..., ContainerManager],
) -> Callable[..., tuple[ContainerManager, ListenerRecorder]]:
    def make(**overrides: Any) -> tuple[ContainerManager, ListenerRecorder]:
        recorder = ListenerRecorder()
        settings: dict[str, Any] = {"max_workers": 1, "docker_network": "none"}
        settings.update(overrides)
        manager = make_manager(docker_client=proxied, listener=recorder, **settings)
        return manager, recorder

    return make


def instance_containers(client: docker.DockerClient, instance_id: str) -> list[dict[str, Any]]:
    return list(
        client.api.containers(all=True, filters={"label": f"cascade.router.instance={instance_id}"})
    )


def timer_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith(("dockyard-timeout-", "dockyard-kill-retry-")) and t.is_alive()
    ]


def assert_clean(
    manager: ContainerManager,
    recorder: ListenerRecorder,
    proxy: FaultProxy,
    docker_client: docker.DockerClient,
    instance_id: str,
    baseline: ThreadBaseline,
) -> None:
    """No worker, timer, slot, container or thread left; every outcome delivered once."""
    proxy.clear_rules()
    assert manager.get_active_worker_count() == 0
    eventually(lambda: not timer_threads(), timeout=5)
    # The one slot and the job ids are free again: a spawn that may not wait succeeds.
    manager.spawn_worker(WorkerJob(id="follow-up", type="check", command=["true"]), slot_timeout=0)
    assert manager.wait_for_worker("follow-up", OUTCOME_TIMEOUT_S).status == "succeeded"
    try:
        eventually(lambda: not instance_containers(docker_client, instance_id), timeout=10)
    except AssertionError:
        left = [(c["Names"], c["State"]) for c in instance_containers(docker_client, instance_id)]
        raise AssertionError(f"containers left: {left}") from None
    manager.close()
    with recorder.lock:
        finished = [job_id for job_id, _ in recorder.finished]
        started = list(recorder.started)
    assert sorted(finished) == sorted(set(finished)), f"an outcome arrived twice: {finished}"
    assert sorted(started) == sorted(finished), "a started worker has no outcome"
    baseline.assert_no_new_threads()


# -- launch faults -----------------------------------------------------------------------


def test_create_failing_with_500_is_a_typed_error(
    rig, proxy, docker_client, instance_id, baseline, sentry_events
):
    manager, recorder = rig()
    proxy.add_rule(FaultRule(op="create", action="fail", status=500, message="disk full"))
    with pytest.raises(WorkerSpawnError) as info:
        manager.spawn_worker(WorkerJob(id="create-500", type="t", command=["true"]))
    assert info.value.status_code == 500
    assert proxy.count("create") == 1  # an answer (even an error) is never retried
    assert recorder.started == []
    assert instance_containers(docker_client, instance_id) == []
    (event,) = sentry_events.with_source("worker_spawn")
    assert event["extra"]["jobId"] == "create-500"
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


def test_start_failing_after_create_removes_the_container(
    rig, proxy, docker_client, instance_id, baseline
):
    manager, recorder = rig()
    proxy.add_rule(FaultRule(op="start", action="fail", status=500))
    with pytest.raises(WorkerSpawnError) as info:
        manager.spawn_worker(WorkerJob(id="start-500", type="t", command=["true"]))
    assert info.value.status_code == 500
    assert proxy.count("create") == 1
    assert proxy.count("remove") >= 1
    assert instance_containers(docker_client, instance_id) == []  # removed synchronously
    assert recorder.started == []
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


def test_start_answer_lost_after_the_engine_started_it(
    rig, proxy, docker_client, instance_id, baseline
):
    # The engine runs the container but the answer never arrives: the launch cannot
    # know it started, so it fails with a typed error and the container must go.
    manager, recorder = rig()
    proxy.add_rule(FaultRule(op="start", action="cut_after", delay_s=0.0))
    with pytest.raises(DockerUnavailableError):
        manager.spawn_worker(WorkerJob(id="start-cut", type="t", command=["sleep", "30"]))
    assert instance_containers(docker_client, instance_id) == []
    assert recorder.started == []
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


def test_exit_wait_registration_failing_aborts_the_spawn(
    rig, proxy, docker_client, instance_id, baseline
):
    manager, recorder = rig()
    # The exit waits' events stream cannot be connected: the container must not start.
    proxy.add_rule(FaultRule(op="events", action="fail", status=500))
    with pytest.raises(WorkerSpawnError):
        manager.spawn_worker(WorkerJob(id="wait-500", type="t", command=["true"]))
    assert proxy.count("start") == 0  # never started without a wait in place
    assert instance_containers(docker_client, instance_id) == []
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


def test_create_answer_lost_the_retry_finds_the_created_container(
    rig, proxy, docker_client, instance_id, baseline
):
    # The engine creates the container, the answer is cut: the retry meets a 409 name
    # conflict with exactly the container asked for, and uses it.
    manager, recorder = rig()
    proxy.add_rule(FaultRule(op="create", action="cut_after", delay_s=0.0))
    worker = manager.spawn_worker(WorkerJob(id="create-cut", type="t", command=["true"]))
    outcome = manager.wait_for_worker("create-cut", OUTCOME_TIMEOUT_S)
    assert outcome.status == "succeeded"
    assert proxy.count("create") == 2  # cut, then 409 conflict
    starts = [path for _, path in proxy.calls if path.split("?")[0].endswith("/start")]
    assert len(starts) == 1 and worker.container_id in starts[0]
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


def test_create_answers_lost_twice_leave_nothing_behind(
    rig, proxy, docker_client, instance_id, baseline
):
    manager, recorder = rig()
    proxy.add_rule(FaultRule(op="create", action="cut_after", delay_s=0.0, times=2))
    with pytest.raises(DockerUnavailableError):
        manager.spawn_worker(WorkerJob(id="create-cut2", type="t", command=["true"]))
    assert proxy.count("create") == 2
    assert instance_containers(docker_client, instance_id) == []  # the first one went
    assert recorder.started == []
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


def leftover_labels(instance: str, job_id: str) -> dict[str, str]:
    return {
        "cascade.managed": "true",
        "cascade.router.instance": instance,
        "cascade.job.id": job_id,
        "cascade.deadline": "2000-01-01T00:00:00.000+00:00",
    }


def test_a_stopped_leftover_of_the_same_job_is_replaced(
    rig, proxy, docker_client, instance_id, baseline, test_image
):
    # A leftover from an earlier launch of this job (an old router's, say) holds the name.
    manager, recorder = rig()
    api = docker_client.api
    old = api.create_container(
        test_image,
        ["true"],
        name="cascade-worker-again",
        labels=leftover_labels(instance_id, "again"),
        host_config=api.create_host_config(network_mode="none"),
    )["Id"]
    worker = manager.spawn_worker(WorkerJob(id="again", type="t", command=["true"]))
    assert worker.container_id != old
    assert manager.wait_for_worker("again", OUTCOME_TIMEOUT_S).status == "succeeded"
    with pytest.raises(docker.errors.NotFound):
        api.inspect_container(old)
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


def test_a_container_of_another_router_holding_the_name_is_left_alone(
    rig, proxy, docker_client, instance_id, baseline, test_image
):
    manager, recorder = rig()
    api = docker_client.api
    foreign = api.create_container(
        test_image,
        ["true"],
        name=f"cascade-worker-{instance_id}-taken",
        labels=leftover_labels("another-router", f"{instance_id}-taken"),
        host_config=api.create_host_config(network_mode="none"),
    )["Id"]
    try:
        with pytest.raises(WorkerSpawnError) as info:
            manager.spawn_worker(WorkerJob(id=f"{instance_id}-taken", type="t", command=["true"]))
        # The engine's own status: Docker's 409, Podman's 500 "name ... is already in use".
        assert info.value.status_code == (500 if is_podman(docker_client) else 409)
        assert isinstance(translate("create", info.value.__cause__), NameInUseError)
        assert api.inspect_container(foreign)["State"]["Status"] == "created"
    finally:
        api.remove_container(foreign, force=True)
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


# -- wait faults -------------------------------------------------------------------------


@pytest.mark.parametrize(("exit_code", "status"), [(0, "succeeded"), (5, "failed")])
def test_wait_stream_cut_mid_run_resumes(
    rig, proxy, docker_client, instance_id, baseline, sentry_events, exit_code, status
):
    manager, recorder = rig()
    job = WorkerJob(
        id=f"wait-cut-{exit_code}", type="t", command=shell(f"sleep 2; exit {exit_code}")
    )
    manager.spawn_worker(job)
    eventually(lambda: proxy.active("events") == 1)
    before = proxy.count("events")
    assert proxy.cut_active("events") == 1
    eventually(lambda: proxy.count("events") > before)  # a new stream replaced the broken one
    eventually(lambda: proxy.active("events") == 1 or manager.get_active_worker_count() == 0)
    proxy.cut_active("events")  # and that one breaks too
    outcome = manager.wait_for_worker(job.id, OUTCOME_TIMEOUT_S)
    assert outcome.status == status
    assert outcome.exit_code == exit_code
    assert sentry_events.with_source("worker_wait") == []
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


def test_exit_while_no_wait_is_open_is_still_seen(rig, proxy, docker_client, instance_id, baseline):
    # The container exits between the broken wait and the next one (delayed here): the
    # resumed wait answers at once with the exit code of the stopped container.
    manager, recorder = rig(auto_remove_workers=False)
    manager.spawn_worker(WorkerJob(id="gap", type="t", command=shell("sleep 1; exit 4")))
    eventually(lambda: proxy.active("events") == 1)
    proxy.add_rule(FaultRule(op="events", action="delay", delay_s=2.5))
    before = proxy.count("events")
    assert proxy.cut_active("events") == 1
    outcome = manager.wait_for_worker("gap", OUTCOME_TIMEOUT_S)
    assert outcome.status == "failed"
    assert outcome.exit_code == 4
    assert proxy.count("events") > before  # waited again on a new stream
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


def test_wait_cut_and_container_gone_is_lost(
    rig, proxy, docker_client, instance_id, baseline, sentry_events
):
    # Auto-removed while nobody waited: the exit code is gone with it, the worker is lost.
    manager, recorder = rig()
    manager.spawn_worker(WorkerJob(id="gone", type="t", command=shell("sleep 1; exit 0")))
    eventually(lambda: proxy.active("events") == 1)
    proxy.add_rule(FaultRule(op="inspect", action="delay", delay_s=3.0))
    assert proxy.cut_active("events") == 1
    outcome = manager.wait_for_worker("gone", OUTCOME_TIMEOUT_S)
    if is_podman(docker_client):
        # There dockyard removes its workers itself: the container is still there to say.
        assert (outcome.status, outcome.exit_code) == ("succeeded", 0)
        assert recorder.outcomes("gone") == [outcome]
        assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)
        return
    assert outcome.status == "lost"
    assert "gone" in (outcome.error or "")
    (event,) = sentry_events.wait_for("worker_wait")
    assert event["extra"]["jobId"] == "gone"
    assert recorder.outcomes("gone") == [outcome]
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


def test_engine_unreachable_past_the_window_is_lost_and_the_reaper_cleans_up(
    rig, proxy, docker_client, instance_id, baseline, sentry_events
):
    manager, recorder = rig(wait_retry_window_s=1.0, worker_timeout_s=3.0)
    worker = manager.spawn_worker(WorkerJob(id="unreachable", type="t", command=["sleep", "60"]))
    eventually(lambda: proxy.active("events") == 1)
    # Every wait and inspect loses its connection: to the library, the engine is gone.
    proxy.add_rule(FaultRule(op="inspect", action="cut", times=None))
    proxy.add_rule(FaultRule(op="events", action="cut", times=None))
    assert proxy.cut_active("events") == 1
    outcome = manager.wait_for_worker("unreachable", OUTCOME_TIMEOUT_S)
    assert outcome.status == "lost"
    assert "unreachable" in (outcome.error or "")
    sentry_events.wait_for("worker_wait")
    proxy.clear_rules()
    # Nobody tracks the still-running container now; once past its deadline label the
    # orphan scan stops and removes it.
    eventually(lambda: time.time() > worker.deadline.timestamp(), timeout=10)
    assert manager.scan_and_cleanup_orphans() == [worker.container_id]
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


# -- after the exit, and the kill path ------------------------------------------------------


def test_inspect_failing_after_exit_still_delivers_the_exit_code(
    rig, proxy, docker_client, instance_id, baseline, sentry_events
):
    manager, recorder = rig(auto_remove_workers=False)
    proxy.add_rule(FaultRule(op="inspect", action="fail", status=500, times=None))
    manager.spawn_worker(WorkerJob(id="no-inspect", type="t", command=shell("exit 3")))
    outcome = manager.wait_for_worker("no-inspect", OUTCOME_TIMEOUT_S)
    assert outcome.status == "failed"
    assert outcome.exit_code == 3
    assert (outcome.oom_killed, outcome.exit_reason) == (None, None)
    # Without the inspect the duration can only come from the engine's `start` and `die`
    # events, when the start was seen (the watch may begin after it): never a made-up one.
    assert outcome.duration_s is None or 0 <= outcome.duration_s < 10, outcome
    assert proxy.count("inspect") >= 1
    (event,) = sentry_events.wait_for("worker_exit")
    assert event["extra"]["statusCode"] == 3
    assert instance_containers(docker_client, instance_id) == []  # removed all the same
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


PODMAN_STOPS = (
    "on Podman dockyard sends no stop call (it counts the grace itself: the stop signal, "
    "then SIGKILL); this test injects faults into that call"
)


def test_stop_failing_in_the_kill_path_falls_back_to_kill(
    rig, proxy, docker_client, instance_id, baseline, sentry_events
):
    if is_podman(docker_client):
        pytest.skip(PODMAN_STOPS)
    manager, recorder = rig(worker_timeout_s=1.0)
    proxy.add_rule(FaultRule(op="stop", action="fail", status=500, times=None))
    manager.spawn_worker(WorkerJob(id="no-stop", type="t", command=["sleep", "60"]))
    outcome = manager.wait_for_worker("no-stop", OUTCOME_TIMEOUT_S)
    assert outcome.status == "timed_out"
    assert proxy.count("stop") == 1
    assert proxy.count("kill") == 1
    (event,) = sentry_events.wait_for("worker_timeout")
    assert event["extra"]["jobId"] == "no-stop"
    assert recorder.outcomes("no-stop") == [outcome]
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


def test_stop_and_kill_failing_are_retried(rig, proxy, docker_client, instance_id, baseline):
    if is_podman(docker_client):
        pytest.skip(PODMAN_STOPS)
    manager, recorder = rig()
    proxy.add_rule(FaultRule(op="stop", action="cut"))
    proxy.add_rule(FaultRule(op="kill", action="fail", status=500))
    manager.spawn_worker(WorkerJob(id="kill-retry", type="t", command=["sleep", "60"]))
    assert manager.kill_worker("kill-retry")
    outcome = manager.wait_for_worker("kill-retry", OUTCOME_TIMEOUT_S)
    assert outcome.status == "timed_out"
    assert proxy.count("stop") == 2  # the second round succeeded
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)


def test_remove_failing_after_exit_is_retried(rig, proxy, docker_client, instance_id, baseline):
    manager, recorder = rig(auto_remove_workers=False)
    proxy.add_rule(FaultRule(op="remove", action="fail", status=500, times=2))
    manager.spawn_worker(WorkerJob(id="remove-500", type="t", command=["true"]))
    assert manager.wait_for_worker("remove-500", OUTCOME_TIMEOUT_S).status == "succeeded"
    assert proxy.count("remove") == 3
    assert instance_containers(docker_client, instance_id) == []
    assert_clean(manager, recorder, proxy, docker_client, instance_id, baseline)

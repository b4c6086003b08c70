"""The Swarm backend under injected engine faults: 5% of its calls fail, drop or lose answers.

The fault proxy sits between docker-py and the swarm manager engine. Every job must end in
a typed spawn error or in exactly one outcome, and no service (nor task container) of the
run's router instance may be left. ``DOCKYARD_SWARM_LOAD_JOBS`` changes the job count.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import docker.errors
import pytest
import requests

from dockyard import (
    ContainerManager,
    DockyardError,
    WorkerOutcome,
)
from faultproxy import FaultProxy, FaultRule, operation_of
from support.listeners import ListenerRecorder
from support.load import (
    LoadProjects,
    add_load_faults,
    assert_each_job_ended_once,
    load_job,
    split_load_results,
)
from support.swarm import swarm_host, worker_host

pytestmark = pytest.mark.swarm

JOBS = int(os.environ.get("DOCKYARD_SWARM_LOAD_JOBS", "200"))
SEED = 20261201
CONCURRENCY = 8
FAULTS: tuple[tuple[str, float, float], ...] = (
    ("fail", 0.025, 0.0),  # a 500 answer; the engine never sees the request
    ("cut", 0.015, 0.0),  # connection dropped before the engine sees it
    ("cut_after", 0.01, 0.0),  # the engine acts, the answer is lost
)
TYPED_SPAWN_ERRORS = (DockyardError, docker.errors.APIError, requests.exceptions.RequestException)


def faulted(method: str, path: str) -> bool:
    return operation_of(method, path) is not None and "/info" not in path


@pytest.fixture
def swarm_proxy(swarm_client: docker.DockerClient) -> Iterator[FaultProxy]:
    host = swarm_host()
    assert host.startswith("unix://"), "the fault proxy relays to a unix socket"
    proxy = FaultProxy(upstream=host[len("unix://") :], seed=SEED).start()
    yield proxy
    proxy.stop()


def run_job(manager: ContainerManager, index: int) -> tuple[str, WorkerOutcome | BaseException]:
    job = load_job("sload", index)
    job_id = job.id
    try:
        manager.spawn_worker(job, slot_timeout=300)
    except TYPED_SPAWN_ERRORS as err:
        return job_id, err
    return job_id, manager.wait_for_worker(job_id, timeout=300)


def leftovers(client: docker.DockerClient, instance: str) -> tuple[list[Any], list[Any]]:
    label = f"cascade.router.instance={instance}"
    # The engine removes a removed service's task containers itself, asynchronously: on a
    # loaded machine one took over 20 s (and was gone later). A leak is one that stays.
    deadline = time.monotonic() + 60
    while True:
        services = client.api.services(filters={"label": [label]})
        containers = client.api.containers(all=True, filters={"label": label})
        if (not services and not containers) or time.monotonic() > deadline:
            return services, containers
        time.sleep(0.3)


def remove_remote_containers(instance: str) -> int | None:
    """Remove (and count) the run's task containers on the second node, when there is one."""
    try:
        worker = docker.APIClient(base_url=worker_host(), timeout=30)
        found = worker.containers(
            all=True, filters={"label": f"cascade.router.instance={instance}"}
        )
    except Exception:
        return None
    for container in found:
        with contextlib.suppress(docker.errors.APIError):
            worker.remove_container(container["Id"], force=True)
    worker.close()
    return len(found)


def test_swarm_load_with_injected_faults(
    swarm_proxy: FaultProxy,
    swarm_client: docker.DockerClient,
    swarm_instance: str,
    make_swarm_manager: Callable[..., ContainerManager],
    record_property: Callable[[str, object], None],
) -> None:
    proxied = docker.APIClient(base_url=swarm_proxy.base_url, timeout=30, max_pool_size=64)
    recorder = ListenerRecorder()
    manager = make_swarm_manager(
        docker_client=proxied,
        listener=recorder,
        projects=LoadProjects(),
        max_workers=CONCURRENCY,
        launch_concurrency=CONCURRENCY,
        kill_buffer_s=0.0,
        slot_wait_timeout_s=300,
        swarm_pending_timeout_s=60,
    )
    rules = add_load_faults(swarm_proxy, FAULTS, faulted, "injected by the swarm load test")
    started_at = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="swarm-load-client") as clients:
        results = dict(clients.map(lambda i: run_job(manager, i), range(JOBS)))
    elapsed_s = time.monotonic() - started_at
    swarm_proxy.clear_rules()
    assert manager.get_active_worker_count() == 0
    manager.close()
    proxied.close()
    services, containers = leftovers(swarm_client, swarm_instance)
    remote = remove_remote_containers(swarm_instance)

    outcomes, errors = split_load_results(results)
    summary = {
        "jobs": JOBS,
        "concurrency": CONCURRENCY,
        "faults_injected": sum(rule.hits for rule in rules),
        "faults_by_action": {rule.action: rule.hits for rule in rules},
        "outcomes": dict(collections.Counter(o.status for o in outcomes.values())),
        "spawn_errors": dict(collections.Counter(type(e).__name__ for e in errors.values())),
        "leaked_services": len(services),
        "leaked_containers": len(containers),
        # Finished task containers on the second node, if any: engine 20.10 keeps them
        # after their service is removed (moby#42789) and no API call reaches them.
        "remote_node_task_containers": remote,
        "elapsed_s": round(elapsed_s, 1),
    }
    line = "swarm load summary: " + json.dumps(summary, sort_keys=True)
    print(line)
    record_property("swarm_load_summary", line)

    assert len(results) == JOBS
    assert_each_job_ended_once(
        recorder, outcomes, errors, TYPED_SPAWN_ERRORS, failed_exit_code_known=False
    )
    assert summary["faults_injected"] > 0
    assert not services, [(s["Spec"]["Name"]) for s in services]
    assert not containers, [(c["Names"], c["State"]) for c in containers]


def is_service_create(method: str, path: str) -> bool:
    return method == "POST" and path.split("?", 1)[0].endswith("/services/create")


def test_a_failed_launch_removes_the_service_its_lost_create_made_and_its_task_container(
    swarm_proxy: FaultProxy,
    swarm_client: docker.DockerClient,
    swarm_instance: str,
    make_swarm_manager: Callable[..., ContainerManager],
    swarm_local_node: str,
) -> None:
    # The engine makes the service but its answer is lost; the retry's connection drops
    # after the task has run: the launch fails, and neither the service nor the task's
    # container may stay.
    proxied = docker.APIClient(base_url=swarm_proxy.base_url, timeout=30)
    manager = make_swarm_manager(docker_client=proxied)
    swarm_proxy.add_rule(FaultRule(op="any", action="cut_after", match=is_service_create))
    swarm_proxy.add_rule(FaultRule(op="any", action="cut", delay_s=3.0, match=is_service_create))

    with pytest.raises(DockyardError):
        manager.spawn_worker(load_job("lost-create", 0))

    services, containers = leftovers(swarm_client, swarm_instance)
    manager.close()
    proxied.close()
    assert not services, [s["Spec"]["Name"] for s in services]
    assert not containers, [(c["Names"], c["State"]) for c in containers]


def is_service_inspect(method: str, path: str) -> bool:
    bare = path.split("?", 1)[0]
    return method == "GET" and "/services/" in bare and bare.rsplit("/", 1)[-1] != "tasks"


def test_a_lost_create_is_recognised_through_a_failing_inspect(
    swarm_proxy: FaultProxy,
    swarm_client: docker.DockerClient,
    swarm_instance: str,
    make_swarm_manager: Callable[..., ContainerManager],
) -> None:
    # The engine makes the service but its answer is lost; the retry meets the name (409),
    # and the first look at the service fails too: looked at again, it is this launch's.
    proxied = docker.APIClient(base_url=swarm_proxy.base_url, timeout=30)
    manager = make_swarm_manager(docker_client=proxied)
    lost = swarm_proxy.add_rule(FaultRule(op="any", action="cut_after", match=is_service_create))
    blip = swarm_proxy.add_rule(
        FaultRule(op="any", action="fail", status=500, match=is_service_inspect)
    )

    worker = manager.spawn_worker(load_job("lost-create", 1))
    outcome = manager.wait_for_worker(worker.job_id, timeout=60)

    assert outcome.status in {"succeeded", "failed"}  # the job ran, once
    assert (lost.hits, blip.hits) == (1, 1)
    services, _ = leftovers(swarm_client, swarm_instance)
    manager.close()
    proxied.close()
    assert not services, [s["Spec"]["Name"] for s in services]

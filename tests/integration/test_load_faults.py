"""A load run with faults: 200 jobs at concurrency 8, about 5% of the Docker calls faulted.

Every job must end in a typed spawn error or in exactly one outcome; afterwards no
container of the run's router instance is left and the thread count is back to its
baseline. The run prints a one-line summary (see it with ``pytest -s``) and records it as
the ``load_summary`` property of the test.

``DOCKYARD_LOAD_JOBS`` and ``DOCKYARD_LOAD_SEED`` change the job count and the fault seed.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import docker.errors
import pytest

from dockyard import (
    ContainerManager,
    DockyardError,
    WorkerOutcome,
)
from faultproxy import FaultProxy, operation_of
from support.listeners import ListenerRecorder
from support.load import (
    LoadProjects,
    add_load_faults,
    assert_each_job_ended_once,
    load_job,
    split_load_results,
)
from support.threads import ThreadBaseline

pytestmark = pytest.mark.docker

JOBS = int(os.environ.get("DOCKYARD_LOAD_JOBS", "200"))
SEED = int(os.environ.get("DOCKYARD_LOAD_SEED", "20261128"))
CONCURRENCY = 8
FAULTED_OPS = frozenset({"create", "start", "events", "inspect", "stop", "remove"})
# (action, probability, delay_s): about 5% of the faulted operations' requests in all.
FAULTS: tuple[tuple[str, float, float], ...] = (
    ("fail", 0.025, 0.0),  # a 500 answer; the engine never sees the request
    ("cut", 0.015, 0.3),  # connection dropped (the events stream: cut 0.3 s into it)
    ("cut_after", 0.01, 0.0),  # the engine acts, the answer is lost
)
TYPED_SPAWN_ERRORS = (DockyardError,)  # spawn_worker raises nothing else


def faulted(method: str, path: str) -> bool:
    return operation_of(method, path) in FAULTED_OPS


@pytest.fixture
def proxy_seed() -> int:
    return SEED


def instance_containers(client: docker.DockerClient, instance_id: str) -> list[dict[str, Any]]:
    return list(
        client.api.containers(all=True, filters={"label": f"cascade.router.instance={instance_id}"})
    )


def settle_leftovers(client: docker.DockerClient, instance_id: str) -> list[dict[str, Any]]:
    """Containers still there once auto-removals had a moment to finish."""
    deadline = time.monotonic() + 15
    left = instance_containers(client, instance_id)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = instance_containers(client, instance_id)
    return left


def error_kind(err: BaseException) -> str:
    status = getattr(err, "status_code", None)
    return type(err).__name__ + (f" {status}" if status else "")


def run_job(manager: ContainerManager, index: int) -> tuple[str, WorkerOutcome | BaseException]:
    job = load_job("load", index)
    job_id = job.id
    try:
        manager.spawn_worker(job, slot_timeout=120)
    except TYPED_SPAWN_ERRORS as err:
        return job_id, err
    return job_id, manager.wait_for_worker(job_id, timeout=120)


def test_load_with_injected_faults(
    proxy: FaultProxy,
    proxied: docker.APIClient,
    docker_client: docker.DockerClient,
    instance_id: str,
    make_manager: Callable[..., ContainerManager],
    record_property: Callable[[str, object], None],
) -> None:
    baseline = ThreadBaseline()  # after the proxy started: its threads are not ours
    recorder = ListenerRecorder()
    manager = make_manager(
        docker_client=proxied,
        listener=recorder,
        projects=LoadProjects(),
        max_workers=CONCURRENCY,
        launch_concurrency=CONCURRENCY,
        docker_network="none",
        kill_buffer_s=0.0,
        slot_wait_timeout_s=120,
    )
    rules = add_load_faults(proxy, FAULTS, faulted, "injected by the load test")
    started_at = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="load-client") as clients:
        results = dict(clients.map(lambda i: run_job(manager, i), range(JOBS)))
    elapsed_s = time.monotonic() - started_at
    proxy.clear_rules()
    assert manager.get_active_worker_count() == 0
    assert manager._parts.slots.in_use == 0
    faulted_calls = sum(proxy.count(op) for op in FAULTED_OPS)
    manager.close()
    leftovers = settle_leftovers(docker_client, instance_id)
    extra_threads = baseline.new_threads()

    outcomes, errors = split_load_results(results)
    summary = {
        "jobs": JOBS,
        "concurrency": CONCURRENCY,
        "seed": SEED,
        "faulted_op_calls": faulted_calls,
        "faults_injected": sum(rule.hits for rule in rules),
        "faults_by_action": {rule.action: rule.hits for rule in rules},
        "outcomes": dict(collections.Counter(o.status for o in outcomes.values())),
        "spawn_errors": dict(collections.Counter(error_kind(e) for e in errors.values())),
        "leaked_containers": len(leftovers),
        "leaked_threads": len(extra_threads),
        "elapsed_s": round(elapsed_s, 1),
    }
    line = "load summary: " + json.dumps(summary, sort_keys=True)
    print(line)
    record_property("load_summary", line)

    assert len(results) == JOBS
    assert_each_job_ended_once(
        recorder, outcomes, errors, TYPED_SPAWN_ERRORS, failed_exit_code_known=True
    )
    assert summary["faults_injected"] > 0
    assert not leftovers, [(c["Names"], c["State"]) for c in leftovers]
    assert not extra_threads, [t.name for t in extra_threads]

"""Job ids on the real engine: generated ids never collide, ids that share a container name
are refused clearly, and a refused job leaves no payload in the store."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import docker
import pytest

from dockyard import ContainerManager, DuplicateJobError, InvalidJobError, WorkerJob
from faultproxy import FaultProxy
from support.hosts import RecordingStore

WAIT_S = 60.0
MakeManager = Callable[..., ContainerManager]


def sleeper(job_id: str) -> WorkerJob:
    return WorkerJob(job_id, "t", {}, command=["sleep", "30"])


@pytest.mark.parametrize(("first", "second"), [("a:b", "a/b"), ("jöb", "jäb")])
def test_ids_sharing_a_container_name_are_refused_before_docker(
    make_manager: MakeManager,
    proxy: FaultProxy,
    proxied: docker.APIClient,
    first: str,
    second: str,
) -> None:
    manager = make_manager(docker_client=proxied)
    worker = manager.spawn_worker(sleeper(first))
    creates = proxy.count("create")
    with pytest.raises(DuplicateJobError) as info:
        manager.spawn_worker(sleeper(second))
    assert proxy.count("create") == creates  # refused before any Docker call
    assert (info.value.job_id, info.value.other_job_id) == (second, first)
    assert worker.container_name in str(info.value)
    assert manager.kill_worker(first)
    assert manager.wait_for_worker(first, WAIT_S).status == "timed_out"


def test_another_router_holding_the_name_is_a_clear_duplicate_not_a_409(
    make_manager: MakeManager, other_instance: str
) -> None:
    router_a = make_manager()
    router_b = make_manager(router_instance_id=other_instance)
    router_a.spawn_worker(sleeper("x:1"))
    with pytest.raises(DuplicateJobError) as info:
        router_b.spawn_worker(sleeper("x/1"))
    assert (info.value.job_id, info.value.other_job_id) == ("x/1", "x:1")
    assert router_a.kill_worker("x:1")
    router_a.wait_for_worker("x:1", WAIT_S)


def test_generated_ids_of_two_managers_and_two_routers_differ(
    make_manager: MakeManager, other_instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dockyard._jobs.time.time", lambda: 1_700_000_000.123)  # one ms for all
    first, second = make_manager(), make_manager()
    third = make_manager(router_instance_id=other_instance)
    workers = [
        m.spawn_worker(WorkerJob(None, "t", {}, command=["true"])) for m in (first, second, third)
    ]
    ids = [w.job_id for w in workers]
    assert len(set(ids)) == 3, ids
    assert all(i.startswith("unknown-1700000000123-") for i in ids)
    # unknown-<ms>-<instance>-<8 hex>: each router's own instance, then a random part.
    instances = [re.fullmatch(r"unknown-1700000000123-(.+)-[0-9a-f]{8}", i) for i in ids]
    assert [m.group(1) if m else None for m in instances] == [
        first.config.router_instance_id,
        second.config.router_instance_id,
        other_instance,
    ]
    for manager, worker in zip((first, second, third), workers, strict=True):
        assert manager.wait_for_worker(worker.job_id, WAIT_S).status == "succeeded"


class Credentials:
    def __init__(self, values: Mapping[str, object]) -> None:
        self.values = values

    def get_project_credentials(self, project_id: str) -> Mapping[str, str]:
        return dict(self.values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "credentials", [{"TOKEN": 42}, {"TOKEN": "nul\x00inside"}], ids=["not-a-string", "nul"]
)
def test_a_job_refused_by_validation_writes_no_payload(
    make_manager: MakeManager, credentials: Mapping[str, object]
) -> None:
    store = RecordingStore()
    manager = make_manager(job_data_store=store, credentials=Credentials(credentials))
    big = {"projectId": "p-1", "blob": "x" * (100 * 1024)}  # over the inline limit
    with pytest.raises(InvalidJobError):
        manager.spawn_worker(WorkerJob("refused", "t", big, command=["true"]))
    assert store.puts == []
    assert manager.get_active_worker_count() == 0
    # The same payload with sound credentials does go to the store.
    manager_ok = make_manager(job_data_store=store, credentials=Credentials({"TOKEN": "t"}))
    manager_ok.spawn_worker(WorkerJob("accepted", "t", big, command=["true"]))
    assert store.puts == ["accepted"]
    manager_ok.wait_for_worker("accepted", WAIT_S)

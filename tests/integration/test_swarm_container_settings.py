"""Container controls on the swarm backend: the service spec carries each mapped field, the
task container honours them (observed from inside: the worker prints what it sees), and a
field the service API cannot express is refused before any service exists."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import docker
import pytest
from docker.types import ContainerSpec, Resources, RestartPolicy, ServiceMode, TaskTemplate

from dockyard import (
    ConfigError,
    ContainerManager,
    ContainerSettings,
    InvalidJobError,
    Mount,
    ProjectConfig,
    RouterConfig,
    Ulimit,
    WorkerJob,
    WorkerSpawnError,
)
from support.engine import LABEL_PREFIX
from support.hosts import LogCapture, StaticProjects
from support.swarm import instance_services

pytestmark = [pytest.mark.swarm, pytest.mark.usefixtures("swarm_local_node")]

MakeManager = Callable[..., ContainerManager]
MIB = 1024 * 1024

SETTINGS = ContainerSettings(
    cpus=0.5,
    memory_mb=40,
    mounts=(Mount("tmpfs", "/scratch", size_bytes=4 * MIB),),
    working_dir="/bin",
    user="1000:1000",
    ulimits=(Ulimit("nofile", 321, 321),),
    cap_add=("NET_RAW",),
    cap_drop=("CHOWN",),
    read_only_rootfs=True,
    extra_hosts={"db.internal": "10.1.2.3"},
    dns=("10.9.9.9",),
    init=True,
)
SCRIPT = (
    "echo id=$(id -u):$(id -g); echo pwd=$(pwd); echo nofile=$(ulimit -n); "
    "echo x > /root-file 2>/dev/null && echo root-write-ok || echo root-write-failed; "
    "echo x > /scratch/f && echo tmpfs-write-ok; "
    "if [ -f /sys/fs/cgroup/cpu.max ]; then echo quota $(cat /sys/fs/cgroup/cpu.max); "
    "else echo quota $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) "
    "$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); fi; "
    "grep db.internal /etc/hosts; echo pid1=$(cat /proc/1/comm); sleep 1"
)


def test_the_service_spec_carries_every_mapped_field_and_the_task_honours_them(
    make_swarm_manager: MakeManager,
    swarm_client: docker.DockerClient,
    dockyard_logs: LogCapture,
) -> None:
    manager = make_swarm_manager(container=SETTINGS, pids_limit=64)
    worker = manager.spawn_worker(WorkerJob("swarm-set", "t", {}, command=["sh", "-c", SCRIPT]))
    assert worker.settings == SETTINGS
    template = swarm_client.api.inspect_service(worker.container_id)["Spec"]["TaskTemplate"]
    spec = template["ContainerSpec"]
    assert spec["User"] == "1000:1000"
    assert spec["Dir"] == "/bin"
    assert spec["ReadOnly"] is True
    assert spec["Init"] is True
    assert spec["Hosts"] == ["10.1.2.3 db.internal"]
    assert spec["DNSConfig"] == {"Nameservers": ["10.9.9.9"]}
    assert spec["CapabilityAdd"] == ["NET_RAW"]
    assert spec["CapabilityDrop"] == ["CHOWN"]
    assert spec["Ulimits"] == [{"Name": "nofile", "Soft": 321, "Hard": 321}]
    (mount,) = spec["Mounts"]
    assert (mount["Type"], mount["Target"]) == ("tmpfs", "/scratch")
    assert mount["TmpfsOptions"]["SizeBytes"] == 4 * MIB
    resources = template["Resources"]
    assert resources["Limits"]["NanoCPUs"] == 500_000_000
    assert resources["Limits"]["MemoryBytes"] == 40 * MIB
    assert resources["Limits"]["Pids"] == 64
    assert resources["Reservations"]["NanoCPUs"] == 500_000_000

    outcome = manager.wait_for_worker("swarm-set", timeout=60)
    assert outcome.status == "succeeded", outcome
    output = "\n".join(
        r.getMessage()
        for r in dockyard_logs.records
        if getattr(r, "job_id", None) == "swarm-set" and "worker output" in r.msg
    )
    assert "id=1000:1000" in output
    assert "pwd=/bin" in output
    assert "nofile=321" in output
    assert "root-write-failed" in output and "root-write-ok" not in output
    assert "tmpfs-write-ok" in output
    assert "quota 50000 100000" in output
    assert re.search(r"10\.1\.2\.3\s+db\.internal", output), output
    assert "pid1=docker-init" in output


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cpu_shares", 512),
        ("cpuset_cpus", "0"),
        ("shm_size_bytes", MIB),
        ("gpus", "all"),
        ("gpus", "device=0"),
        ("security_opt", ("apparmor=unconfined",)),
    ],
)
def test_an_inexpressible_field_is_refused_in_every_layer(
    make_swarm_manager: MakeManager,
    swarm_client: docker.DockerClient,
    swarm_instance: str,
    field: str,
    value: object,
) -> None:
    settings = ContainerSettings(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"container\.{field}: not available with backend"):
        RouterConfig(backend="swarm", container=settings)
    project = ProjectConfig(id="p-sw", container=settings)
    with pytest.raises(ConfigError, match=rf"ProjectConfig\.container\.{field}.*project 'p-sw'"):
        make_swarm_manager(projects=StaticProjects(project))
    manager = make_swarm_manager(job_settings_allowed=frozenset({field}))
    job = WorkerJob("sw-bad", "t", {}, command=["true"], container=settings)
    with pytest.raises(InvalidJobError, match=rf"job\.container\.{field}: not available"):
        manager.spawn_worker(job)
    assert instance_services(swarm_client, swarm_instance) == []


def _advertised_gpus(client: docker.DockerClient) -> int:
    return sum(
        1
        for node in client.api.nodes()
        for resource in ((node.get("Description") or {}).get("Resources") or {}).get(
            "GenericResources"
        )
        or []
        if "NVIDIA-GPU" in str(resource)
    )


def test_a_gpu_count_no_node_advertises_is_refused_before_any_service(
    make_swarm_manager: MakeManager, swarm_client: docker.DockerClient, swarm_instance: str
) -> None:
    """Without the check the task would wait for a node until the pending timeout, after
    the spawn returned (see the next test): the spawn fails at once, naming the request."""
    if _advertised_gpus(swarm_client):
        pytest.skip("a node of this swarm advertises NVIDIA-GPU generic resources")
    manager = make_swarm_manager(job_settings_allowed=frozenset({"gpus"}))
    job = WorkerJob("sw-gpu", "t", {}, command=["true"], container=ContainerSettings(gpus=1))
    began = time.monotonic()
    with pytest.raises(WorkerSpawnError) as err:
        manager.spawn_worker(job)
    assert time.monotonic() - began < 5  # no pending wait (swarm_pending_timeout_s=10)
    assert str(err.value).startswith(
        "the swarm refused the GPU request (gpus=1): no ready, active node advertises "
        "1 NVIDIA-GPU ("
    ), str(err.value)
    assert "node-generic-resources" in str(err.value)
    assert instance_services(swarm_client, swarm_instance) == []
    assert manager.get_active_worker_count() == 0


def test_the_engine_leaves_a_task_no_node_can_take_pending(
    swarm_client: docker.DockerClient, swarm_image: str, swarm_instance: str
) -> None:
    """Engine fact behind the refusal above: a service asking for a GPU count no node
    advertises is accepted, and its task stays `pending` (insufficient resources) with no
    error of its own. Made here without dockyard (its labels let the fixture remove it)."""
    if _advertised_gpus(swarm_client):
        pytest.skip("a node of this swarm advertises NVIDIA-GPU generic resources")
    api: Any = swarm_client.api
    template = TaskTemplate(
        ContainerSpec(swarm_image, ["true"]),
        resources=Resources(generic_resources={"NVIDIA-GPU": 1}),
        restart_policy=RestartPolicy(condition="none"),
    )
    labels = {f"{LABEL_PREFIX}.router.instance": swarm_instance}
    name = f"{swarm_instance}-gpu"
    mode = ServiceMode("replicated-job")
    service = api.create_service(template, name=name, labels=labels, mode=mode)["ID"]
    try:
        deadline = time.monotonic() + 15
        tasks: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            tasks = api.tasks(filters={"service": service})
            if tasks and "insufficient resources" in str(tasks[0]["Status"].get("Err")):
                break
            time.sleep(0.5)
        assert [t["Status"]["State"] for t in tasks] == ["pending"], tasks
        assert "insufficient resources" in str(tasks[0]["Status"].get("Err")), tasks
    finally:
        api.remove_service(service)

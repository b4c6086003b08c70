"""Container controls on the real engine, each observed from inside the worker: the worker
prints what it sees, and dockyard's log of its output (read before removal, auto-removal
off) is what the test checks."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from dockyard import (
    ConfigError,
    ContainerManager,
    ContainerSettings,
    InvalidJobError,
    Mount,
    ProjectConfig,
    Ulimit,
    WorkerJob,
    WorkerOutcome,
    WorkerSpawnError,
)
from support.engine import is_podman
from support.hosts import LogCapture, StaticProjects

pytestmark = pytest.mark.docker

MakeManager = Callable[..., ContainerManager]
MIB = 1024 * 1024


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def run(
    manager: ContainerManager,
    logs: LogCapture,
    job_id: str,
    script: str,
    container: ContainerSettings | None = None,
    **fields: str,
) -> tuple[WorkerOutcome, str]:
    """Run one job to its end; its outcome and its output as dockyard logged it."""
    job = WorkerJob(job_id, "settings", {}, command=sh(script), container=container, **fields)
    manager.spawn_worker(job)
    outcome = manager.wait_for_worker(job_id, timeout=60)
    output = [
        record.getMessage()
        for record in logs.records
        if getattr(record, "job_id", None) == job_id and "worker output" in record.msg
    ]
    return outcome, "\n".join(output)


@pytest.fixture
def manager(make_manager: MakeManager) -> ContainerManager:
    """A manager whose output is readable (no auto-removal), every control a job may set."""
    return make_manager(
        auto_remove_workers=False,
        job_settings_allowed=frozenset(
            {
                "cpus",
                "mounts",
                "read_only_rootfs",
                "cap_drop",
                "user",
                "working_dir",
                "ulimits",
                "extra_hosts",
                "dns",
                "init",
                "gpus",
                "shm_size_bytes",
            }
        ),
    )


def containers_of(client: docker.DockerClient, instance: str) -> list[object]:
    label = f"cascade.router.instance={instance}"
    return list(client.containers.list(all=True, filters={"label": label}))


def test_cpus_show_in_the_cgroup_quota(
    manager: ContainerManager, dockyard_logs: LogCapture
) -> None:
    script = (
        "if [ -f /sys/fs/cgroup/cpu.max ]; then echo quota $(cat /sys/fs/cgroup/cpu.max); "
        "else echo quota $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) "
        "$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); fi"
    )
    outcome, output = run(manager, dockyard_logs, "cpus", script, ContainerSettings(cpus=0.5))
    assert outcome.status == "succeeded", outcome
    assert "quota 50000 100000" in output


def test_active_worker_carries_the_merged_settings(make_manager: MakeManager) -> None:
    project = ProjectConfig(id="p-set", container=ContainerSettings(memory_mb=48, init=True))
    manager = make_manager(
        container=ContainerSettings(cpus=1.0, init=False),
        job_settings_allowed=frozenset({"cpus"}),
        projects=StaticProjects(project),
    )
    job = WorkerJob(
        "merged",
        "settings",
        {"projectId": "p-set"},
        command=sh("sleep 0.2"),
        container=ContainerSettings(cpus=0.5),
    )
    worker = manager.spawn_worker(job)
    assert worker.settings == ContainerSettings(cpus=0.5, memory_mb=48, init=True)
    assert manager.wait_for_worker("merged", timeout=30).status == "succeeded"


def test_project_memory_caps_its_workers(
    make_manager: MakeManager, docker_client: docker.DockerClient
) -> None:
    # The router allows 256 MiB; the project caps its workers at 32: 100 MiB is an OOM kill.
    # Kept until handled: an auto-removed worker's OOM kill is unknown on Podman (no `oom`
    # event, the container gone before its inspect), and this test is about the cap.
    project = ProjectConfig(id="p-mem", container=ContainerSettings(memory_mb=32))
    manager = make_manager(
        worker_memory_mb=256, projects=StaticProjects(project), auto_remove_workers=False
    )
    hog = sh("head -c 100m /dev/zero | tail")
    capped = manager.spawn_worker(WorkerJob("oom", "t", {"projectId": "p-mem"}, command=hog))
    info = docker_client.api.inspect_container(capped.container_id)["HostConfig"]
    assert info["Memory"] == info["MemorySwap"] == 32 * MIB
    outcome = manager.wait_for_worker("oom", timeout=60)
    assert outcome.oom_killed is True
    assert outcome.exit_code == 137
    # Without the project's cap the router's 256 MiB holds the same work.
    manager.spawn_worker(WorkerJob("no-oom", "t", {}, command=hog))
    assert manager.wait_for_worker("no-oom", timeout=60).status == "succeeded"


def test_tmpfs_and_read_only_root(manager: ContainerManager, dockyard_logs: LogCapture) -> None:
    settings = ContainerSettings(
        read_only_rootfs=True, mounts=(Mount("tmpfs", "/scratch", size_bytes=8 * MIB),)
    )
    script = (
        "df -k /scratch | tail -1; "
        "echo x > /scratch/ok && echo tmpfs-write-ok; "
        "echo x > /root-file 2>/dev/null && echo root-write-ok || echo root-write-failed"
    )
    outcome, output = run(manager, dockyard_logs, "ro", script, settings)
    assert outcome.status == "succeeded", outcome
    assert "tmpfs-write-ok" in output
    assert "root-write-failed" in output and "root-write-ok" not in output
    size_kb = re.search(r"tmpfs\s+(\d+)", output)
    assert size_kb is not None, output
    assert int(size_kb.group(1)) == 8 * 1024


def test_dropped_capabilities_make_chown_fail(
    manager: ContainerManager, dockyard_logs: LogCapture
) -> None:
    script = "touch /f; chown 1234 /f && echo chown-ok || echo chown-failed"
    _, with_caps = run(manager, dockyard_logs, "caps-default", script)
    assert "chown-ok" in with_caps
    settings = ContainerSettings(cap_drop=("ALL",))
    _, dropped = run(manager, dockyard_logs, "caps-dropped", script, settings)
    assert "chown-failed" in dropped


def test_user_workdir_ulimit_hosts_dns_init(
    manager: ContainerManager, dockyard_logs: LogCapture, docker_client: docker.DockerClient
) -> None:
    settings = ContainerSettings(
        user="1000:1000",
        working_dir="/tmp",
        ulimits=(Ulimit("nofile", 321, 321),),
        extra_hosts={"db.internal": "10.1.2.3"},
        dns=("10.9.9.9",),
        init=True,
    )
    script = (
        "echo id=$(id -u):$(id -g); echo pwd=$(pwd); echo nofile=$(ulimit -n); "
        "grep db.internal /etc/hosts; grep nameserver /etc/resolv.conf; "
        "echo pid1=$(cat /proc/1/comm)"
    )
    outcome, output = run(manager, dockyard_logs, "identity", script, settings)
    assert outcome.status == "succeeded", outcome
    assert "id=1000:1000" in output
    assert "pwd=/tmp" in output
    assert "nofile=321" in output
    assert re.search(r"10\.1\.2\.3\s+db\.internal", output), output
    assert "nameserver 10.9.9.9" in output
    # The engine's own init: Docker's tini (`docker-init`), Podman's catatonit (`podman-init`).
    init = "podman-init" if is_podman(docker_client) else "docker-init"
    assert f"pid1={init}" in output
    _, plain = run(manager, dockyard_logs, "no-init", "echo pid1=$(cat /proc/1/comm)")
    assert "pid1=sh" in plain


def test_shm_size(manager: ContainerManager, dockyard_logs: LogCapture) -> None:
    settings = ContainerSettings(shm_size_bytes=16 * MIB)
    _, output = run(manager, dockyard_logs, "shm", "df -k /dev/shm | tail -1", settings)
    size_kb = re.search(r"shm\s+(\d+)", output)
    assert size_kb is not None, output
    assert int(size_kb.group(1)) == 16 * 1024


def test_a_gpu_request_on_a_gpu_less_engine_is_a_clear_refusal(
    manager: ContainerManager, docker_client: docker.DockerClient, instance_id: str
) -> None:
    # The request is on the created container (read from the engine just before its start).
    requested: list[object] = []
    gateway = manager._parts.driver
    start = gateway.start

    def start_seen(container_id: str) -> None:
        info = docker_client.api.inspect_container(container_id)
        requested.append(info["HostConfig"]["DeviceRequests"])
        start(container_id)

    gateway.start = start_seen  # type: ignore[method-assign]
    job = WorkerJob("gpu", "t", {}, command=["true"], container=ContainerSettings(gpus=1))
    with pytest.raises(WorkerSpawnError) as err:
        manager.spawn_worker(job)
    assert "the engine refused the GPU request (gpus=1)" in str(err.value)
    if is_podman(docker_client):
        # Podman's Docker API creates the container without the request: refused (and
        # removed) at its create, before any start, rather than run without its GPU.
        assert requested == []
    else:
        assert requested == [
            [{"Driver": "", "Count": 1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]
        ]
    assert containers_of(docker_client, instance_id) == []
    assert manager.get_active_worker_count() == 0


def test_a_job_setting_what_it_may_not_is_refused_before_docker(
    make_manager: MakeManager, docker_client: docker.DockerClient, instance_id: str
) -> None:
    manager = make_manager(job_settings_allowed=frozenset({"cpus"}))
    job = WorkerJob("root", "t", {}, command=["true"], container=ContainerSettings(user="0"))
    with pytest.raises(InvalidJobError, match=r"job\.container\.user: a job may not set this"):
        manager.spawn_worker(job)
    assert containers_of(docker_client, instance_id) == []


def test_binds_only_under_the_allowed_roots(
    make_manager: MakeManager,
    dockyard_logs: LogCapture,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    instance_id: str,
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "hello.txt").write_text("from the host\n")
    os.chmod(allowed, 0o755)
    manager = make_manager(
        auto_remove_workers=False,
        allowed_bind_roots=(str(allowed),),
        job_settings_allowed=frozenset({"mounts"}),
    )
    inside = ContainerSettings(mounts=(Mount("bind", "/in", source=str(allowed), read_only=True),))
    outcome, output = run(manager, dockyard_logs, "bind-ok", "cat /in/hello.txt", inside)
    assert outcome.status == "succeeded", outcome
    assert "from the host" in output
    escape = ContainerSettings(mounts=(Mount("bind", "/in", source=str(allowed / ".." / "..")),))
    with pytest.raises(InvalidJobError, match="outside the allowed bind roots"):
        manager.spawn_worker(WorkerJob("bind-bad", "t", {}, command=["true"], container=escape))
    with pytest.raises(ConfigError, match="outside the allowed bind roots"):
        make_manager(
            container=ContainerSettings(mounts=(Mount("bind", "/etc-host", source="/etc"),))
        )
    assert [c for c in containers_of(docker_client, instance_id)] == []


def test_a_snapshot_keeps_the_filesystem_not_a_mounts_content(
    make_manager: MakeManager, dockyard_logs: LogCapture
) -> None:
    """The warm run gets the same tmpfs (empty again) while the root's file came along."""
    manager = make_manager(
        snapshot_enabled=True,
        container=ContainerSettings(mounts=(Mount("tmpfs", "/scratch", size_bytes=MIB),)),
    )
    ids = {"project_id": "p-snap", "work_item_id": "w-1"}
    first, _ = run(
        manager, dockyard_logs, "snap-1", "echo kept > /kept && echo gone > /scratch/f", **ids
    )
    assert first.status == "succeeded", first
    assert manager.snapshots.get("p-snap", "w-1") is not None
    script = (
        "cat /kept; test -e /scratch/f && echo scratch-kept || echo scratch-empty; "
        "grep ' /scratch ' /proc/mounts | cut -d' ' -f3"
    )
    second, output = run(manager, dockyard_logs, "snap-2", script, **ids)
    assert second.status == "succeeded", second
    assert "kept" in output
    assert "scratch-empty" in output and "scratch-kept" not in output
    assert "tmpfs" in output


def test_an_anonymous_volume_goes_with_its_container(
    manager: ContainerManager, docker_client: docker.DockerClient
) -> None:
    """dockyard removes the container itself here (no auto-removal): its anonymous volume
    goes too, as with AutoRemove."""
    settings = ContainerSettings(mounts=(Mount("volume", "/anon"),))
    job = WorkerJob("anon", "t", {}, command=sh("sleep 1"), container=settings)
    worker = manager.spawn_worker(job)
    info = docker_client.api.inspect_container(worker.container_id)
    (mount,) = [m for m in info["Mounts"] if m["Destination"] == "/anon"]
    assert manager.wait_for_worker("anon", timeout=30).status == "succeeded"
    names = {v.name for v in docker_client.volumes.list()}
    assert mount["Name"] not in names

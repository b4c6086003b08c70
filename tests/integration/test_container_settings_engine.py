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
                "cpu_shares",
                "cpuset_cpus",
                "cap_add",
                "security_opt",
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


# Two busy loops for 3 s (by the container's own clock, /proc/uptime in centiseconds, read
# without a fork), with the cgroup's CPU time before and after: cgroup v1's cpuacct.usage
# (ns) or v2's cpu.stat usage_usec.
CPU_LOAD = r"""
usage() {
  if [ -f /sys/fs/cgroup/cpu.stat ]; then sed -n 's/^usage_usec //p' /sys/fs/cgroup/cpu.stat
  else echo $(( $(cat /sys/fs/cgroup/cpuacct/cpuacct.usage) / 1000 )); fi
}
spin() {
  read up _ < /proc/uptime; end=$(( ${up%.*}${up#*.} + 300 ))
  while :; do read up _ < /proc/uptime; [ "${up%.*}${up#*.}" -ge "$end" ] && break; done
}
read up0 _ < /proc/uptime; u0=$(usage)
spin & spin & wait
read up1 _ < /proc/uptime; u1=$(usage)
echo "cpu-usec=$((u1 - u0)) wall-cs=$(( ${up1%.*}${up1#*.} - ${up0%.*}${up0#*.} ))"
"""


def cpu_per_second(output: str) -> float:
    """CPU-seconds the container used per wall second, from what `CPU_LOAD` printed."""
    found = re.search(r"cpu-usec=(\d+) wall-cs=(\d+)", output)
    assert found is not None, output
    usec, centis = (int(n) for n in found.groups())
    assert centis >= 300, output  # the loops ran their 3 s
    return (usec / 1e6) / (centis / 100)


def test_a_cpu_bound_loop_gets_at_most_its_cpus(
    manager: ContainerManager, dockyard_logs: LogCapture
) -> None:
    """`cpus=0.5` next to an unlimited worker, both spinning two loops at once: the capped
    one uses at most ~0.5 CPU-seconds per second (0.6 with a CFS period of slack), however
    much the host has free. The unlimited one's share is the host's to give: on this
    2-core host 1.1 CPU-s/s with other tests running, 0.16 at a load average of 20 (below
    the capped one's 0.25 then). So it is only shown (`-s`), and both must have run."""
    capped = WorkerJob(
        "spin-capped", "t", {}, command=sh(CPU_LOAD), container=ContainerSettings(cpus=0.5)
    )
    free = WorkerJob("spin-free", "t", {}, command=sh(CPU_LOAD))
    manager.spawn_worker(capped)
    manager.spawn_worker(free)
    for job_id in ("spin-capped", "spin-free"):
        assert manager.wait_for_worker(job_id, timeout=60).status == "succeeded"
    by_job = {
        job_id: cpu_per_second(
            "\n".join(
                r.getMessage()
                for r in dockyard_logs.records
                if getattr(r, "job_id", None) == job_id and "worker output" in r.msg
            )
        )
        for job_id in ("spin-capped", "spin-free")
    }
    shown = f"CPU-s per s: capped {by_job['spin-capped']:.2f}, free {by_job['spin-free']:.2f}"
    print(shown)
    assert 0.02 < by_job["spin-capped"] <= 0.6, shown
    assert by_job["spin-free"] > 0.02, shown


CPU_CGROUP = (
    "if [ -f /sys/fs/cgroup/cpu.weight ]; then echo weight=$(cat /sys/fs/cgroup/cpu.weight); "
    "else echo shares=$(cat /sys/fs/cgroup/cpu/cpu.shares); fi; "
    "if [ -f /sys/fs/cgroup/cpuset.cpus.effective ]; "
    "then echo cpuset=$(cat /sys/fs/cgroup/cpuset.cpus.effective); "
    "else echo cpuset=$(cat /sys/fs/cgroup/cpuset/cpuset.cpus); fi; "
    "grep Cpus_allowed_list /proc/self/status"
)


def test_cpu_shares_and_cpuset_in_the_cgroup(
    manager: ContainerManager, dockyard_logs: LogCapture
) -> None:
    """`cpu_shares` in cgroup v1's `cpu.shares` (v2: a `cpu.weight` below the default's:
    the conversion differs between runc versions); `cpuset_cpus` in the cgroup's CPU set
    and in the CPUs the process may run on."""
    settings = ContainerSettings(cpu_shares=512, cpuset_cpus="1")
    outcome, output = run(manager, dockyard_logs, "cpu-set", CPU_CGROUP, settings)
    assert outcome.status == "succeeded", outcome
    _, plain = run(manager, dockyard_logs, "cpu-plain", CPU_CGROUP)
    assert "cpuset=1\n" in output + "\n"
    assert re.search(r"Cpus_allowed_list:\s+1$", output, re.MULTILINE), output
    assert "cpuset=1\n" not in plain + "\n"  # the default set: every CPU of the host
    shares = re.search(r"shares=(\d+)", output)
    if shares is not None:
        assert int(shares.group(1)) == 512, output
        assert "shares=1024" in plain
    else:
        weights = [re.search(r"weight=(\d+)", text) for text in (output, plain)]
        assert weights[0] is not None and weights[1] is not None, (output, plain)
        assert int(weights[0].group(1)) < int(weights[1].group(1)), (output, plain)


CAP_NET_ADMIN, CAP_SYS_TIME = 12, 25


def test_added_capabilities_show_in_the_effective_set(
    manager: ContainerManager, dockyard_logs: LogCapture
) -> None:
    """The engine's default set has neither NET_ADMIN nor SYS_TIME: added, their bits are in
    `CapEff`, and an action needing NET_ADMIN (an interface's MTU) succeeds."""
    script = (
        "grep CapEff /proc/self/status; "
        "ip link set dev lo mtu 1280 2>/dev/null && echo mtu-ok || echo mtu-failed"
    )
    settings = ContainerSettings(cap_add=("NET_ADMIN", "CAP_SYS_TIME"))
    _, added = run(manager, dockyard_logs, "cap-add", script, settings)
    _, plain = run(manager, dockyard_logs, "cap-plain", script)

    def effective(output: str) -> int:
        found = re.search(r"CapEff:\s+([0-9a-f]+)", output)
        assert found is not None, output
        return int(found.group(1), 16)

    for bit in (CAP_NET_ADMIN, CAP_SYS_TIME):
        assert effective(added) & (1 << bit), added
        assert not effective(plain) & (1 << bit), plain
    assert "mtu-ok" in added
    assert "mtu-failed" in plain


SECURITY = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status"


def test_security_options_show_in_the_process_status(
    make_manager: MakeManager, dockyard_logs: LogCapture
) -> None:
    """`no-new-privileges` sets the process's NoNewPrivs, `seccomp=unconfined` turns the
    engine's default filter (mode 2) off; the router's `no_new_privileges` stays on whatever
    a job's options say."""
    manager = make_manager(
        auto_remove_workers=False, job_settings_allowed=frozenset({"security_opt"})
    )
    settings = ContainerSettings(security_opt=("no-new-privileges", "seccomp=unconfined"))
    _, hardened = run(manager, dockyard_logs, "sec-set", SECURITY, settings)
    _, plain = run(manager, dockyard_logs, "sec-plain", SECURITY)
    assert re.search(r"NoNewPrivs:\s+1", hardened), hardened
    assert re.search(r"Seccomp:\s+0", hardened), hardened
    assert re.search(r"NoNewPrivs:\s+0", plain), plain
    assert re.search(r"Seccomp:\s+2", plain), plain
    # AppArmor turned off needs no AppArmor: it runs on any engine.
    off = ContainerSettings(security_opt=("apparmor=unconfined",))
    outcome, _ = run(manager, dockyard_logs, "sec-unconfined", SECURITY, off)
    assert outcome.status == "succeeded", outcome
    router = make_manager(
        auto_remove_workers=False,
        no_new_privileges=True,
        job_settings_allowed=frozenset({"security_opt"}),
    )
    loosened = ContainerSettings(security_opt=("no-new-privileges:false",))
    _, kept = run(router, dockyard_logs, "sec-router", SECURITY, loosened)
    assert re.search(r"NoNewPrivs:\s+1", kept), kept


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


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        # The engine takes a seccomp option's value as the profile's JSON (`docker run`
        # reads a path itself): a path, as the engine sees it, is a profile it cannot load.
        (
            ContainerSettings(security_opt=("seccomp=/no/such/file.json",)),
            "the security options (security_opt=('seccomp=/no/such/file.json',))",
        ),
        # An engine with AppArmor refuses the unknown profile at start; one without it
        # (both engines here) would run the worker unconfined: dockyard refuses first.
        (
            ContainerSettings(security_opt=("apparmor=dockyard-no-such-profile",)),
            "the security options (security_opt=('apparmor=dockyard-no-such-profile',))",
        ),
        (ContainerSettings(user="nosuchuser"), "the user (user='nosuchuser')"),
        (ContainerSettings(user="1000:nosuchgroup"), "the user (user='1000:nosuchgroup')"),
    ],
    ids=["seccomp-profile", "apparmor-profile", "user", "group"],
)
def test_an_engine_refusal_names_the_control_and_leaves_nothing(
    manager: ContainerManager,
    docker_client: docker.DockerClient,
    instance_id: str,
    settings: ContainerSettings,
    named: str,
) -> None:
    job = WorkerJob("refused", "t", {}, command=["true"], container=settings)
    with pytest.raises(WorkerSpawnError) as err:
        manager.spawn_worker(job)
    assert str(err.value).startswith(f"the engine refused {named}: "), str(err.value)
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

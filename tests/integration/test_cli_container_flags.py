"""`dockyard run` with container flags and a job line's `container` object, on the real
engine: the controls reach the container (it checks them itself and exits non-zero when one
is missing), and a job setting what it may not is refused before anything starts."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from dockyard import ContainerManager, ContainerSettings, WorkerJob
from support.cli import dockyard_cli, run_env, run_jobs, write_jobs


def _json_lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


QUOTA = (  # cgroup v1, else v2
    "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max)"
)
CHECK = (
    'test "$(id -u)" = 1000 && test "$(pwd)" = /work-dir && test "$(ulimit -n)" = 222 '
    "&& ! touch /rootfs-file 2>/dev/null && touch /scratch/f "
    f'&& test "{QUOTA}" = 25000'
)
# The job's `cpus` (0.75) over the router's `--cpus 0.25`, the router's user kept.
JOB_CHECK = f'test "$(id -u)" = 1000 && test "{QUOTA}" = 75000'


def test_flags_and_job_settings_reach_the_container(
    tmp_path: Path, instance_id: str, test_image: str
) -> None:
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "flags", "type": "t", "command": ["sh", "-c", CHECK]},
        {
            "id": "job-cpus",
            "type": "t",
            "command": ["sh", "-c", JOB_CHECK],
            "container": {"cpus": 0.75},
        },
    )
    flags = [
        *("--user", "1000:1000", "--workdir", "/work-dir", "--read-only"),
        *("--tmpfs", "/scratch:size=1m", "--ulimit", "nofile=222", "--cpus", "0.25"),
        *("--allow-job-setting", "cpus", "--json"),
    ]
    result = run_jobs(jobs, test_image, instance_id, *flags)
    assert result.returncode == 0, result.stderr
    statuses = {r["job_id"]: r["status"] for r in _json_lines(result.stdout)}
    assert statuses == {"flags": "succeeded", "job-cpus": "succeeded"}


# The flags the test above leaves out, each checked inside: NET_ADMIN's bit in CapEff and
# CHOWN's gone, NoNewPrivs, the extra host, the DNS server, an init as PID 1 (not the
# shell: docker-init on Docker), the CPUs the process may run on and the size of /dev/shm.
MORE_CHECK = (
    "cap=$(awk '/^CapEff/{print $2}' /proc/self/status) "
    "&& test $(( (0x$cap >> 12) & 1 )) = 1 && test $(( 0x$cap & 1 )) = 0 "
    "&& grep -Eq '^NoNewPrivs:[[:space:]]+1$' /proc/self/status "
    "&& grep -Eq '^10\\.1\\.2\\.3[[:space:]]+db\\.internal' /etc/hosts "
    "&& grep -q 'nameserver 10.9.9.9' /etc/resolv.conf "
    '&& test "$(cat /proc/1/comm)" != sh '
    "&& grep -Eq '^Cpus_allowed_list:[[:space:]]+1$' /proc/self/status "
    "&& test \"$(df -k /dev/shm | awk 'NR==2{print $2}')\" = 16384"
)


def test_more_flags_reach_the_container(tmp_path: Path, instance_id: str, test_image: str) -> None:
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "more", "type": "t", "command": ["sh", "-c", MORE_CHECK]},
    )
    flags = [
        *("--cap-add", "NET_ADMIN", "--cap-drop", "CHOWN"),
        *("--security-opt", "no-new-privileges", "--add-host", "db.internal:10.1.2.3"),
        *("--dns", "10.9.9.9", "--init", "--cpuset-cpus", "1", "--shm-size", "16m"),
        "--json",
    ]
    # On a network: without one Podman writes no /etc/resolv.conf for `--dns` to show in.
    bridged = run_env(DOCKER_NETWORK="bridge")
    result = run_jobs(jobs, test_image, instance_id, *flags, env=bridged)
    assert result.returncode == 0, result.stderr
    statuses = {r["job_id"]: r["status"] for r in _json_lines(result.stdout)}
    assert statuses == {"more": "succeeded"}
    # Without the flags the same check fails.
    plain_jobs = write_jobs(
        tmp_path / "plain.jsonl",
        {"id": "plain", "type": "t", "command": ["sh", "-c", MORE_CHECK]},
    )
    plain = run_jobs(plain_jobs, test_image, instance_id, "--json", env=bridged)
    assert [r["status"] for r in _json_lines(plain.stdout)] == ["failed"], plain.stderr


@pytest.mark.parametrize(
    ("container", "allow", "field"),
    [
        ({"user": "0"}, ("--allow-job-setting", "cpus"), "user"),
        ({"cpus": 0.5}, (), "cpus"),  # no --allow-job-setting at all: a job sets nothing
    ],
    ids=["not-allowed", "none-allowed"],
)
def test_a_job_setting_what_it_may_not_exits_2_before_anything_starts(
    tmp_path: Path,
    instance_id: str,
    test_image: str,
    docker_client: docker.DockerClient,
    container: dict[str, object],
    allow: tuple[str, ...],
    field: str,
) -> None:
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "ok", "type": "t", "command": ["true"]},
        {"id": "bad", "type": "t", "command": ["true"], "container": container},
    )
    result = run_jobs(jobs, test_image, instance_id, *allow)
    assert result.returncode == 2
    assert f"jobs.jsonl:2: job.container.{field}: a job may not set this" in result.stderr
    label = f"cascade.router.instance={instance_id}"
    assert docker_client.containers.list(all=True, filters={"label": label}) == []


def test_a_bad_flag_value_exits_2_naming_the_field(
    tmp_path: Path, instance_id: str, test_image: str
) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"id": "a", "type": "t", "command": ["true"]})
    result = run_jobs(jobs, test_image, instance_id, "--mount", "type=bind,src=/etc,dst=/e")
    assert result.returncode == 2
    assert "container.mounts[0].source" in result.stderr
    assert "outside the allowed bind roots" in result.stderr


def test_ps_shows_cpu_and_memory_per_worker(
    make_manager: Callable[..., ContainerManager], instance_id: str
) -> None:
    manager = make_manager(container=ContainerSettings(cpus=0.5), worker_memory_mb=48)
    manager.spawn_worker(WorkerJob("ps-limits", "t", {}, command=["sleep", "30"]))
    try:
        ps = dockyard_cli("ps", "--instance", instance_id)
        assert ps.returncode == 0, ps.stderr
        header, row = ps.stdout.splitlines()[:2]
        assert header.split()[5:7] == ["CPUS", "MEMORY"]
        assert "cascade-worker-ps-limits" in row
        assert re.search(r"\s0\.5\s+48MiB\s", row), row  # after STATUS ("Up 2 seconds")
    finally:
        manager.kill_worker("ps-limits")
        manager.wait_for_worker("ps-limits", timeout=30)  # removed before the manager closes

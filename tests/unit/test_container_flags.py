"""`dockyard run`'s container flags and a job line's `container` object, parsed into
`ContainerSettings` (no engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dockyard import ConfigError, ContainerSettings, InvalidJobError, Mount, Ulimit
from dockyard._cli._container_flags import settings_from_args
from dockyard._cli._containers import format_limits
from dockyard._cli._exits import UsageError
from dockyard._cli._jobfile import check_job_for, load_jobs, parse_job
from dockyard._cli._parser import build_parser
from dockyard._cli._run import _run_config
from dockyard._container_syntax import parse_add_host, parse_mount, parse_size, parse_tmpfs

MIB = 1024 * 1024
RUN = ["run", "jobs.jsonl", "--image", "busybox:latest"]

ALL_FLAGS = [
    *("--cpus", "0.5", "--cpu-shares", "512", "--cpuset-cpus", "0-1"),
    *("--shm-size", "64m", "--gpus", "all"),
    *("--mount", "type=bind,source=/srv/data,target=/data,readonly"),
    *("--mount", "type=volume,src=cache,dst=/cache"),
    *("--mount", "type=tmpfs,target=/scratch,tmpfs-size=16m"),
    *("--tmpfs", "/run/x:size=1m"),
    *("--user", "1000:1000", "--workdir", "/work", "--read-only"),
    *("--cap-add", "NET_ADMIN", "--cap-drop", "ALL"),
    *("--ulimit", "nofile=1024:2048", "--ulimit", "nproc=64"),
    *("--security-opt", "seccomp=unconfined", "--add-host", "db:10.0.0.5"),
    *("--add-host", "v6:::1", "--dns", "1.1.1.1", "--dns", "8.8.8.8", "--init"),
]


def test_every_flag_parses_into_the_router_layer() -> None:
    args = build_parser().parse_args([*RUN, *ALL_FLAGS])
    assert settings_from_args(args) == ContainerSettings(
        cpus=0.5,
        cpu_shares=512,
        cpuset_cpus="0-1",
        shm_size_bytes=64 * MIB,
        gpus="all",
        mounts=(
            Mount("bind", "/data", source="/srv/data", read_only=True),
            Mount("volume", "/cache", source="cache"),
            Mount("tmpfs", "/scratch", size_bytes=16 * MIB),
            Mount("tmpfs", "/run/x", size_bytes=MIB),
        ),
        working_dir="/work",
        user="1000:1000",
        read_only_rootfs=True,
        cap_add=("NET_ADMIN",),
        cap_drop=("ALL",),
        ulimits=(Ulimit("nofile", 1024, 2048), Ulimit("nproc", 64, 64)),
        security_opt=("seccomp=unconfined",),
        extra_hosts={"db": "10.0.0.5", "v6": "::1"},
        dns=("1.1.1.1", "8.8.8.8"),
        init=True,
    )


def test_no_container_flag_means_no_router_layer() -> None:
    assert settings_from_args(build_parser().parse_args(RUN)) is None
    assert settings_from_args(build_parser().parse_args([*RUN, "--gpus", "2"])) == (
        ContainerSettings(gpus=2)
    )


@pytest.mark.parametrize(
    "flags",
    [
        ["--cpus", "half"],
        ["--shm-size", "64q"],
        ["--mount", "type=tmpfs,target=/x,mode=1777"],
        ["--mount", "type=tmpfs"],
        ["--tmpfs", "/x:noexec"],
        ["--ulimit", "nofile"],
        ["--add-host", "nohost"],
    ],
)
def test_malformed_flags_are_usage_errors(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*RUN, *flags])
    assert exit_.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_run_config_puts_the_flags_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_CPUS", "2")
    monkeypatch.setenv("WORKER_USER", "nobody")
    monkeypatch.setenv("JOB_SETTINGS_ALLOWED", "cpus")
    args = build_parser().parse_args(
        [*RUN, "--cpus", "0.25", "--allow-job-setting", "memory_mb", "--allow-bind-root", "/srv"]
    )
    config = _run_config(args)
    assert config.container == ContainerSettings(cpus=0.25, user="nobody")
    assert config.job_settings_allowed == frozenset({"memory_mb"})
    assert config.allowed_bind_roots == ("/srv",)
    bad = build_parser().parse_args([*RUN, "--cpus", "-1"])
    with pytest.raises(ConfigError, match=r"container\.cpus.*router layer"):
        _run_config(bad)
    outside = build_parser().parse_args([*RUN, "--mount", "type=bind,src=/etc,dst=/e"])
    with pytest.raises(ConfigError, match="outside the allowed bind roots"):
        _run_config(outside)


def test_a_job_line_carries_its_container_object() -> None:
    line = {
        "id": "j1",
        "type": "t",
        "container": {
            "cpus": 0.5,
            "memory_mb": 64,
            "mounts": [{"type": "tmpfs", "target": "/t", "size_bytes": 1024}],
            "ulimits": [{"name": "nofile", "soft": 10, "hard": 20}],
            "extra_hosts": {"db": "10.0.0.1"},
            "init": True,
        },
    }
    job = parse_job(json.dumps(line))
    assert job.container == ContainerSettings(
        cpus=0.5,
        memory_mb=64,
        mounts=(Mount("tmpfs", "/t", size_bytes=1024),),
        ulimits=(Ulimit("nofile", 10, 20),),
        extra_hosts={"db": "10.0.0.1"},
        init=True,
    )
    assert parse_job('{"id": "j", "type": "t", "container": null}').container is None


@pytest.mark.parametrize(
    ("container", "problem"),
    [
        ({"cpus": "half"}, r"job\.container\.cpus: has the wrong JSON type"),
        ({"cpu": 1}, r"job\.container\.cpu: unknown container setting"),
        ({"cpus": -1}, r"job\.container\.cpus: must be at least"),
        ({"mounts": [{"type": "tmpfs"}]}, r"job\.container\.mounts\[0\]\.target: is missing"),
        ({"cap_drop": "ALL"}, r"job\.container\.cap_drop: has the wrong JSON type"),
        ([1], r"job\.container\.: must be a JSON object"),
    ],
)
def test_a_bad_container_object_names_the_field(container: object, problem: str) -> None:
    with pytest.raises(InvalidJobError, match=problem):
        parse_job(json.dumps({"id": "j", "type": "t", "container": container}))


def test_job_lines_are_checked_against_the_router_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        '{"id": "a", "type": "t", "container": {"cpus": 0.5}}\n'
        '{"id": "b", "type": "t", "container": {"user": "0"}}\n'
    )
    args = build_parser().parse_args([*RUN, "--allow-job-setting", "cpus"])
    config = _run_config(args)
    with pytest.raises(UsageError, match=r"jobs\.jsonl:2: job\.container\.user: a job may not"):
        load_jobs(path, check=lambda job: check_job_for(config, job))
    path.write_text('{"id": "a", "type": "t", "container": {"cpus": 0.5}}\n')
    assert len(load_jobs(path, check=lambda job: check_job_for(config, job))) == 1


def test_docker_run_syntax_helpers() -> None:
    assert parse_size("1048576") == MIB
    assert parse_size("1.5g") == 3 * 512 * MIB
    assert parse_size("64MiB") == 64 * MIB
    assert parse_mount("target=/v") == Mount("volume", "/v")  # docker's default type
    assert parse_mount("type=bind,src=/a,dst=/b,ro=false") == Mount("bind", "/b", source="/a")
    assert parse_tmpfs("/t") == Mount("tmpfs", "/t")
    assert parse_tmpfs("/t:ro,size=2k") == Mount("tmpfs", "/t", read_only=True, size_bytes=2048)
    assert parse_add_host("h=10.0.0.1") == ("h", "10.0.0.1")
    assert parse_add_host("h:[::1]") == ("h", "::1")


def test_ps_formats_cpu_and_memory_limits() -> None:
    assert format_limits({"NanoCpus": 500_000_000, "Memory": 48 * MIB}) == ("0.5", "48MiB")
    assert format_limits({"CpuQuota": 150_000, "CpuPeriod": 100_000}) == ("1.5", "-")
    assert format_limits({}) == ("-", "-")

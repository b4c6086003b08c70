"""`ContainerSettings`: validation per layer, the merge, what a job may set, bind roots, the
router's environment variables and the JSON edges."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

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
)
from dockyard._container_checks import resolve_container_settings, validate_settings
from dockyard._container_settings import (
    FIELD_NAMES,
    JOB,
    ROUTER,
    check_bind_sources,
    check_job_allowed,
    merge_settings,
    project_layer,
)
from dockyard._jobs import validate_job
from dockyard.testing import DEFAULT_IMAGE, FakeDockerAPI, RecordingReporter

FULL = ContainerSettings(
    cpus=1.5,
    cpu_shares=512,
    cpuset_cpus="0-1,3",
    memory_mb=256,
    shm_size_bytes=64 * 1024 * 1024,
    gpus=1,
    mounts=(
        Mount("tmpfs", "/scratch", size_bytes=1 << 20),
        Mount("volume", "/cache", source="pip-cache"),
        Mount("bind", "/data", source="/srv/data", read_only=True),
    ),
    working_dir="/work",
    user="1000:1000",
    ulimits=(Ulimit("nofile", 1024, 2048),),
    cap_add=("NET_ADMIN",),
    cap_drop=("ALL",),
    read_only_rootfs=True,
    security_opt=("no-new-privileges", "seccomp=unconfined"),
    extra_hosts={"db.internal": "10.0.0.5"},
    dns=("1.1.1.1",),
    init=True,
)


def test_every_field_is_optional_and_none_by_default() -> None:
    empty = ContainerSettings()
    assert all(getattr(empty, name) is None for name in FIELD_NAMES)
    assert empty.set_fields() == ()
    assert len(FIELD_NAMES) == 17


def test_settings_are_frozen_hashable_and_keep_lists_as_tuples() -> None:
    settings = ContainerSettings(cap_drop=["ALL"], dns=["8.8.8.8"], cpus=2)  # type: ignore[arg-type]
    assert settings.cap_drop == ("ALL",)
    assert settings.dns == ("8.8.8.8",)
    assert settings.cpus == 2.0 and isinstance(settings.cpus, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.cpus = 1.0  # type: ignore[misc]
    hash(FULL)


def test_a_full_set_validates_in_every_layer() -> None:
    for layer in (ROUTER, project_layer("p1"), JOB):
        validate_settings(FULL, layer)


def test_json_round_trip() -> None:
    assert ContainerSettings.from_dict(FULL.to_dict()) == FULL
    assert ContainerSettings.from_json(FULL.to_json()) == FULL


BAD: list[tuple[dict[str, Any], str]] = [
    ({"cpus": -1.0}, "cpus"),
    ({"cpus": 0.0}, "cpus"),
    ({"cpus": float("nan")}, "cpus"),
    ({"cpus": True}, "cpus"),
    ({"cpu_shares": 1}, "cpu_shares"),
    ({"cpuset_cpus": "0-"}, "cpuset_cpus"),
    ({"cpuset_cpus": "a,b"}, "cpuset_cpus"),
    ({"cpuset_cpus": "3-1"}, "cpuset_cpus"),
    ({"memory_mb": 5}, "memory_mb"),
    ({"shm_size_bytes": 0}, "shm_size_bytes"),
    ({"gpus": 0}, "gpus"),
    ({"gpus": "some"}, "gpus"),
    ({"gpus": "device="}, "gpus"),
    ({"mounts": (Mount("tmpfs", "scratch"),)}, "mounts[0].target"),
    ({"mounts": (Mount("tmpfs", "/"),)}, "mounts[0].target"),
    ({"mounts": (Mount("tmpfs", "/t", source="/x"),)}, "mounts[0].source"),
    ({"mounts": (Mount("bind", "/t"),)}, "mounts[0].source"),
    ({"mounts": (Mount("bind", "/t", source="rel/path"),)}, "mounts[0].source"),
    ({"mounts": (Mount("volume", "/t", source="bad name"),)}, "mounts[0].source"),
    ({"mounts": (Mount("nfs", "/t"),)}, "mounts[0].type"),
    ({"mounts": (Mount("volume", "/t", size_bytes=5),)}, "mounts[0].size_bytes"),
    ({"mounts": (Mount("tmpfs", "/t"), Mount("tmpfs", "/t/"))}, "mounts[1].target"),
    ({"working_dir": "work"}, "working_dir"),
    ({"user": "root; rm"}, "user"),
    ({"user": ""}, "user"),
    ({"ulimits": (Ulimit("nofile", 10, 5),)}, "ulimits[0]"),
    ({"ulimits": (Ulimit("files", 1, 1),)}, "ulimits[0].name"),
    ({"ulimits": (Ulimit("nofile", 1, 1), Ulimit("nofile", 2, 2))}, "ulimits[1].name"),
    ({"ulimits": (Ulimit("nofile", -2, 1),)}, "ulimits[0].soft"),
    ({"cap_add": ("net_admin",)}, "cap_add[0]"),
    ({"cap_drop": ("CAP-CHOWN",)}, "cap_drop[0]"),
    ({"cap_add": ("CHOWN",), "cap_drop": ("CAP_CHOWN",)}, "cap_add"),
    ({"read_only_rootfs": "yes"}, "read_only_rootfs"),
    ({"security_opt": ("seccomp",)}, "security_opt[0]"),
    ({"security_opt": ("privileged=true",)}, "security_opt[0]"),
    ({"extra_hosts": {"bad host": "1.2.3.4"}}, "extra_hosts['bad host']"),
    ({"extra_hosts": {"db": "1.2.3"}}, "extra_hosts['db']"),
    ({"dns": ("dns.google",)}, "dns[0]"),
    ({"init": 1}, "init"),
]


@pytest.mark.parametrize(("values", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_values_name_field_and_layer(values: dict[str, Any], field: str) -> None:
    settings = ContainerSettings(**values)
    with pytest.raises(ConfigError) as router:
        validate_settings(settings, ROUTER)
    assert router.value.name == f"container.{field}"
    assert "(router layer)" in str(router.value)
    with pytest.raises(ConfigError) as project:
        validate_settings(settings, project_layer("p1"))
    assert project.value.name == f"ProjectConfig.container.{field}"
    assert "(project 'p1' layer)" in str(project.value)
    with pytest.raises(InvalidJobError) as job:
        validate_settings(settings, JOB)
    assert not isinstance(job.value, ConfigError)
    assert str(job.value).startswith(f"job.container.{field}:")
    assert "(job layer)" in str(job.value)


@pytest.mark.parametrize(
    "values",
    [
        {"gpus": "all"},
        {"gpus": "device=0,1"},
        {"gpus": "device=GPU-3a2b"},
        {"cap_add": ("CAP_SYS_PTRACE", "ALL")},
        {"ulimits": (Ulimit("core", -1, -1), Ulimit("nproc", 10, -1))},
        {"extra_hosts": {"gw": "host-gateway", "v6.local": "::1"}},
        {"dns": ("2001:4860:4860::8888",)},
        {"security_opt": ("apparmor=unconfined", "label=disable", "no-new-privileges:true")},
        {"user": "nobody"},
        {"mounts": (Mount("volume", "/anon"),)},
    ],
)
def test_good_values_pass(values: dict[str, Any]) -> None:
    validate_settings(ContainerSettings(**values), JOB)


def test_merge_is_per_field_and_tuples_replace() -> None:
    router = ContainerSettings(cpus=2.0, memory_mb=512, cap_drop=("ALL",), dns=("1.1.1.1",))
    project = ContainerSettings(memory_mb=1024, dns=("9.9.9.9", "8.8.8.8"), user="1000")
    job = ContainerSettings(cpus=0.5)
    merged = merge_settings(router, project, job)
    assert merged == ContainerSettings(
        cpus=0.5, memory_mb=1024, cap_drop=("ALL",), dns=("9.9.9.9", "8.8.8.8"), user="1000"
    )
    # A project's mounts replace the router's whole.
    router_mounts = ContainerSettings(mounts=(Mount("tmpfs", "/a"),))
    project_mounts = ContainerSettings(mounts=(Mount("tmpfs", "/b"),))
    assert merge_settings(router_mounts, project_mounts).mounts == (Mount("tmpfs", "/b"),)
    assert merge_settings(None, None, None) == ContainerSettings()
    # A False is set (not None): it overrides a True below.
    assert merge_settings(ContainerSettings(init=True), ContainerSettings(init=False)).init is False


def test_a_job_sets_only_allowed_fields() -> None:
    job = ContainerSettings(cpus=1.0, user="0")
    with pytest.raises(InvalidJobError, match=r"job\.container\.user: a job may not set this"):
        check_job_allowed(job, {"cpus"})
    check_job_allowed(job, {"cpus", "user"})
    check_job_allowed(None, set())
    with pytest.raises(InvalidJobError, match="allows jobs to set: none"):
        check_job_allowed(ContainerSettings(cpus=1.0), frozenset())


def test_bind_sources_resolve_under_allowed_roots(tmp_path: Path) -> None:
    root = tmp_path / "allowed"
    (root / "cache").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    ok = ContainerSettings(mounts=(Mount("bind", "/c", source=str(root / "cache")),))
    check_bind_sources(ok, [str(root)], ROUTER)
    check_bind_sources(ok, [str(root) + "/"], ROUTER)
    escapes = [
        str(root / ".." / "secret"),  # `..` out of the root
        str(root / "link"),  # a symlink out of the root
        str(root) + "-sibling",  # a prefix of the root's name is not under it
    ]
    for source in escapes:
        bad = ContainerSettings(mounts=(Mount("bind", "/c", source=source),))
        with pytest.raises(ConfigError, match=r"mounts\[0\]\.source.*outside the allowed"):
            check_bind_sources(bad, [str(root)], ROUTER)
        with pytest.raises(InvalidJobError, match="outside the allowed"):
            check_bind_sources(bad, [str(root)], JOB)
    # No roots: every bind is refused, whichever layer; volumes and tmpfs need none.
    with pytest.raises(ConfigError, match="none are allowed"):
        check_bind_sources(ok, [], project_layer("p"))
    check_bind_sources(ContainerSettings(mounts=(Mount("volume", "/v", source="v1"),)), [], JOB)


def test_resolve_checks_then_merges(tmp_path: Path) -> None:
    router = ContainerSettings(cpus=1.0, mounts=(Mount("bind", "/r", source=str(tmp_path)),))
    project = ContainerSettings(memory_mb=64)
    job = ContainerSettings(cpus=0.25)
    merged = resolve_container_settings(
        router,
        project,
        job,
        project_id="p",
        job_settings_allowed={"cpus"},
        allowed_bind_roots=[str(tmp_path)],
    )
    assert (merged.cpus, merged.memory_mb, merged.mounts) == (0.25, 64, router.mounts)
    bad_project = ContainerSettings(mounts=(Mount("bind", "/p", source="/etc"),))
    with pytest.raises(ConfigError, match=r"ProjectConfig\.container\.mounts\[0\]\.source"):
        resolve_container_settings(
            None,
            bad_project,
            None,
            project_id="p",
            job_settings_allowed=(),
            allowed_bind_roots=[str(tmp_path)],
        )
    with pytest.raises(InvalidJobError, match="may not set"):
        resolve_container_settings(
            None,
            None,
            ContainerSettings(memory_mb=64),
            project_id=None,
            job_settings_allowed={"cpus"},
            allowed_bind_roots=(),
        )


# --------------------------------------------------------------------------- the three holders


def test_router_config_holds_the_router_layer(tmp_path: Path) -> None:
    config = RouterConfig(
        container=FULL.__class__(cpus=0.5, mounts=(Mount("bind", "/d", source=str(tmp_path)),)),
        job_settings_allowed=["cpus", "memory_mb"],  # type: ignore[arg-type]
        allowed_bind_roots=[str(tmp_path)],  # type: ignore[arg-type]
    )
    assert config.job_settings_allowed == frozenset({"cpus", "memory_mb"})
    assert config.allowed_bind_roots == (str(tmp_path),)
    assert RouterConfig().container is None
    assert RouterConfig().job_settings_allowed == frozenset()
    assert RouterConfig().allowed_bind_roots == ()
    with pytest.raises(ConfigError, match=r"container\.cpus.*router layer"):
        RouterConfig(container=ContainerSettings(cpus=-1.0))
    with pytest.raises(ConfigError, match=r"container\.mounts\[0\]\.source.*outside"):
        RouterConfig(container=ContainerSettings(mounts=(Mount("bind", "/d", source="/etc"),)))
    with pytest.raises(ConfigError, match=r"job_settings_allowed.*'cpu' is not a container"):
        RouterConfig(job_settings_allowed=frozenset({"cpu"}))
    with pytest.raises(ConfigError, match=r"allowed_bind_roots: entry 0 must be an absolute path"):
        RouterConfig(allowed_bind_roots=("relative",))


def test_router_config_json_round_trip_with_settings() -> None:
    config = RouterConfig(
        container=ContainerSettings(cpus=0.5, ulimits=(Ulimit("nofile", 64, 64),)),
        job_settings_allowed=frozenset({"cpus"}),
        allowed_bind_roots=("/srv",),
    )
    again = RouterConfig.from_dict(config.to_dict())
    assert again == config
    with pytest.raises(ConfigError, match=r"container\.cpus: has the wrong JSON type"):
        RouterConfig.from_dict({"container": {"cpus": "1"}})
    with pytest.raises(ConfigError, match=r"container\.cpu: unknown container setting"):
        RouterConfig.from_dict({"container": {"cpu": 1}})
    with pytest.raises(ConfigError, match=r"container\.mounts\[0\]\.target: is missing"):
        RouterConfig.from_dict({"container": {"mounts": [{"type": "tmpfs"}]}})


def test_project_config_holds_the_project_layer() -> None:
    project = ProjectConfig(id="p1", container=ContainerSettings(memory_mb=64))
    assert project.container is not None and project.container.memory_mb == 64
    with pytest.raises(ConfigError) as err:
        ProjectConfig(id="p1", container=ContainerSettings(memory_mb=1))
    assert err.value.name == "ProjectConfig.container.memory_mb"
    assert "project 'p1' layer" in str(err.value)
    again = ProjectConfig.from_dict({"id": "p2", "container": {"cpus": 2, "init": True}})
    assert again.container == ContainerSettings(cpus=2.0, init=True)
    with pytest.raises(ConfigError, match=r"ProjectConfig\.container\.init: has the wrong"):
        ProjectConfig.from_dict({"id": "p2", "container": {"init": "yes"}})


def test_worker_job_holds_the_job_layer() -> None:
    validate_job(WorkerJob(id="j", type="t", container=ContainerSettings(cpus=0.5)))
    with pytest.raises(InvalidJobError, match=r"job\.container\.cpus: .*\(job layer\)"):
        validate_job(WorkerJob(id="j", type="t", container=ContainerSettings(cpus=-0.5)))
    with pytest.raises(InvalidJobError, match="must be a ContainerSettings"):
        validate_job(WorkerJob(id="j", type="t", container={"cpus": 1}))  # type: ignore[arg-type]


def test_swarm_backend_refuses_inexpressible_router_settings() -> None:
    RouterConfig(backend="swarm", container=ContainerSettings(cpus=0.5, user="1000"))
    for values in ({"cpu_shares": 512}, {"cpuset_cpus": "0"}, {"gpus": "all"}):
        with pytest.raises(ConfigError, match="not available with backend 'swarm'"):
            RouterConfig(backend="swarm", container=ContainerSettings(**values))


# --------------------------------------------------------------------------- environment

ENV_FULL = {
    "WORKER_CPUS": "1.5",
    "WORKER_CPU_SHARES": "512",
    "WORKER_CPUSET_CPUS": "0-1,3",
    "WORKER_SHM_SIZE": "64m",
    "WORKER_GPUS": "1",
    "WORKER_MOUNTS": "type=tmpfs,target=/scratch,tmpfs-size=1m;"
    "type=volume,src=pip-cache,dst=/cache;type=bind,source=/srv/data,target=/data,readonly",
    "WORKER_WORKDIR": "/work",
    "WORKER_USER": "1000:1000",
    "WORKER_ULIMITS": "nofile=1024:2048",
    "WORKER_CAP_ADD": "NET_ADMIN",
    "WORKER_CAP_DROP": "ALL",
    "WORKER_READ_ONLY": "true",
    "WORKER_SECURITY_OPT": "no-new-privileges;seccomp=unconfined",
    "WORKER_ADD_HOSTS": "db.internal:10.0.0.5",
    "WORKER_DNS": "1.1.1.1",
    "WORKER_INIT": "true",
    "WORKER_MEMORY_MB": "4096",
    "JOB_SETTINGS_ALLOWED": "cpus, memory_mb",
    "ALLOWED_BIND_ROOTS": "/srv:/mnt/cache",
}


def test_from_env_reads_every_control() -> None:
    config = RouterConfig.from_env(ENV_FULL)
    assert config.container == dataclasses.replace(FULL, memory_mb=None)
    assert config.job_settings_allowed == frozenset({"cpus", "memory_mb"})
    assert config.allowed_bind_roots == ("/srv", "/mnt/cache")
    assert RouterConfig.from_env({}).container is None


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("WORKER_CPUS", "lots"),
        ("WORKER_CPUS", "-1"),
        ("WORKER_SHM_SIZE", "64x"),
        ("WORKER_MOUNTS", "type=bind,target=/x"),
        ("WORKER_MOUNTS", "type=tmpfs,target=/x,mode=1777"),
        ("WORKER_ULIMITS", "nofile=10:5"),
        ("WORKER_ULIMITS", "nofile"),
        ("WORKER_READ_ONLY", "maybe"),
        ("WORKER_ADD_HOSTS", "db"),
        ("WORKER_CAP_DROP", "all"),
        ("JOB_SETTINGS_ALLOWED", "cpus,bogus"),
        ("ALLOWED_BIND_ROOTS", "srv"),
    ],
)
def test_from_env_errors_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        RouterConfig.from_env({var: value})
    assert err.value.name == var


def test_os_path_realpath_is_what_the_roots_use(tmp_path: Path) -> None:
    # The documented rule: `os.path.realpath` on the router's host.
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "alias").symlink_to(target)
    settings = ContainerSettings(mounts=(Mount("bind", "/x", source=str(tmp_path / "alias")),))
    check_bind_sources(settings, [os.path.realpath(target)], ROUTER)


# --------------------------------------------------------------------------- through a manager


class _Projects:
    def __init__(self, *projects: ProjectConfig) -> None:
        self.projects = list(projects)

    def list_projects(self) -> list[ProjectConfig]:
        return list(self.projects)

    def find_project_by_repo(self, repo_full_name: str) -> ProjectConfig | None:
        return None


def test_a_spawn_merges_the_layers_into_the_create_and_the_worker() -> None:
    api = FakeDockerAPI(images={DEFAULT_IMAGE})
    config = RouterConfig(
        worker_image=DEFAULT_IMAGE,
        router_instance_id="settings-unit",
        container=ContainerSettings(cpus=2.0, user="1000", cap_drop=("ALL",)),
        job_settings_allowed=frozenset({"cpus"}),
        no_new_privileges=True,
    )
    project = ProjectConfig(id="p", container=ContainerSettings(memory_mb=64, working_dir="/w"))
    with ContainerManager(
        config, docker_client=api, projects=_Projects(project), reporter=RecordingReporter()
    ) as manager:
        job = WorkerJob("j", "t", {"projectId": "p"}, container=ContainerSettings(cpus=0.5))
        worker = manager.spawn_worker(job)
        assert worker.settings == ContainerSettings(
            cpus=0.5, user="1000", cap_drop=("ALL",), memory_mb=64, working_dir="/w"
        )
        container = api.containers_by_id[worker.container_id]
        assert container.host_config["nano_cpus"] == 500_000_000
        assert container.host_config["mem_limit"] == 64 * 1024 * 1024
        assert container.host_config["cap_drop"] == ["ALL"]
        assert container.host_config["security_opt"] == ["no-new-privileges:true"]
        info = api.inspect_container(worker.container_id)["Config"]
        assert (info["User"], info["WorkingDir"]) == ("1000", "/w")
        # A job setting what it may not: refused before any create.
        creates = len(api.calls_of("create_container"))
        with pytest.raises(InvalidJobError, match=r"job\.container\.user"):
            manager.spawn_worker(WorkerJob("k", "t", {}, container=ContainerSettings(user="0")))
        assert len(api.calls_of("create_container")) == creates
        api.exit(worker.container_id, 0)
        assert manager.wait_for_worker("j", timeout=10).status == "succeeded"


def test_without_any_layer_a_worker_gets_empty_settings() -> None:
    api = FakeDockerAPI(images={DEFAULT_IMAGE})
    config = RouterConfig(worker_image=DEFAULT_IMAGE, router_instance_id="settings-unit")
    with ContainerManager(config, docker_client=api, reporter=RecordingReporter()) as manager:
        worker = manager.spawn_worker(WorkerJob("j", "t", {}))
        assert worker.settings == ContainerSettings()
        assert "nano_cpus" not in api.containers_by_id[worker.container_id].host_config
        api.exit(worker.container_id, 0)
        manager.wait_for_worker("j", timeout=10)

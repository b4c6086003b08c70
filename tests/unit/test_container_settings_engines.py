"""The engine mappings of `ContainerSettings`: Docker create arguments (checked through
docker-py's own `create_host_config` at API 1.41) and swarm task template pieces."""

from __future__ import annotations

from typing import Any

import pytest
from docker.types import ContainerSpec, HostConfig, TaskTemplate

from dockyard import ConfigError, ContainerSettings, InvalidJobError, Mount, Ulimit
from dockyard._container_settings import JOB, ROUTER, project_layer
from dockyard._docker_settings import docker_create_args
from dockyard._drivers import refuse_settings, settings_check
from dockyard._swarm_settings import (
    INEXPRESSIBLE,
    SWARM_GPU_KIND,
    check_swarm_expressible,
    gpu_shortfall,
    swarm_refusals,
    swarm_task_pieces,
)

MIB = 1024 * 1024
API = "1.41"

FULL = ContainerSettings(
    cpus=0.5,
    cpu_shares=512,
    cpuset_cpus="0",
    memory_mb=64,
    shm_size_bytes=32 * MIB,
    gpus=2,
    mounts=(
        Mount("tmpfs", "/scratch", size_bytes=8 * MIB),
        Mount("volume", "/cache", source="pip-cache", read_only=True),
    ),
    working_dir="/work",
    user="1000:1000",
    ulimits=(Ulimit("nofile", 512, 1024),),
    cap_add=("NET_ADMIN",),
    cap_drop=("ALL",),
    read_only_rootfs=True,
    security_opt=("apparmor=unconfined",),
    extra_hosts={"db.internal": "10.0.0.5"},
    dns=("1.1.1.1",),
    init=True,
)


def host_config(settings: ContainerSettings | None, **base: Any) -> dict[str, Any]:
    kwargs = {
        "memory_bytes": 4096 * MIB,
        "network": "bridge",
        "auto_remove": True,
        "pids_limit": 4096,
        "no_new_privileges": False,
    } | base
    args = docker_create_args(settings, **kwargs)
    return dict(HostConfig(version=API, **args.host_config))


def test_docker_full_mapping() -> None:
    hc = host_config(FULL)
    assert hc["NanoCpus"] == 500_000_000
    assert hc["CpuShares"] == 512
    assert hc["CpusetCpus"] == "0"
    assert hc["Memory"] == hc["MemorySwap"] == 64 * MIB  # the settings' memory, no swap
    assert hc["ShmSize"] == 32 * MIB
    assert hc["DeviceRequests"] == [
        {"Driver": "", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert [(m["Type"], m["Target"], m["Source"], m["ReadOnly"]) for m in hc["Mounts"]] == [
        ("tmpfs", "/scratch", None, False),
        ("volume", "/cache", "pip-cache", True),
    ]
    assert hc["Mounts"][0]["TmpfsOptions"] == {"SizeBytes": 8 * MIB, "Mode": 0o1777}
    assert "TmpfsOptions" not in hc["Mounts"][1]
    assert hc["Ulimits"] == [{"Name": "nofile", "Soft": 512, "Hard": 1024}]
    assert hc["CapAdd"] == ["NET_ADMIN"]
    assert hc["CapDrop"] == ["ALL"]
    assert hc["ReadonlyRootfs"] is True
    assert hc["SecurityOpt"] == ["apparmor=unconfined"]
    assert hc["ExtraHosts"] == ["db.internal:10.0.0.5"]
    assert hc["Dns"] == ["1.1.1.1"]
    assert hc["Init"] is True
    assert hc["NetworkMode"] == "bridge"
    assert hc["AutoRemove"] is True
    assert hc["PidsLimit"] == 4096
    args = docker_create_args(FULL, memory_bytes=1, network="n", auto_remove=False)
    assert args.container == {"working_dir": "/work", "user": "1000:1000"}


def test_docker_without_settings_is_the_router_base() -> None:
    hc = host_config(None)
    assert hc == dict(
        HostConfig(
            version=API,
            mem_limit=4096 * MIB,
            memswap_limit=4096 * MIB,
            network_mode="bridge",
            auto_remove=True,
            pids_limit=4096,
        )
    )
    assert host_config(ContainerSettings()) == hc
    assert docker_create_args(None, memory_bytes=1, network="n", auto_remove=False).container == {}


@pytest.mark.parametrize(
    ("gpus", "count", "ids"),
    [(1, 1, []), ("all", -1, []), ("device=0,2", 0, ["0", "2"]), ("device=GPU-ab", 0, ["GPU-ab"])],
)
def test_docker_gpu_requests(gpus: int | str, count: int, ids: list[str]) -> None:
    (request,) = host_config(ContainerSettings(gpus=gpus))["DeviceRequests"]
    assert (request["Count"], request["DeviceIDs"], request["Capabilities"]) == (
        count,
        ids,
        [["gpu"]],
    )


def test_docker_no_new_privileges_joins_the_security_options() -> None:
    assert host_config(None, no_new_privileges=True)["SecurityOpt"] == ["no-new-privileges:true"]
    settings = ContainerSettings(security_opt=("seccomp=unconfined", "no-new-privileges:false"))
    # The router's hardening stands: a layer cannot turn it off.
    assert host_config(settings, no_new_privileges=True)["SecurityOpt"] == [
        "seccomp=unconfined",
        "no-new-privileges:true",
    ]
    assert host_config(settings)["SecurityOpt"] == ["seccomp=unconfined", "no-new-privileges:false"]


def test_docker_false_flags_are_sent_as_false() -> None:
    hc = host_config(ContainerSettings(read_only_rootfs=False, init=False))
    assert hc["ReadonlyRootfs"] is False
    assert hc["Init"] is False


# --------------------------------------------------------------------------- swarm

SWARM_FULL = ContainerSettings(
    **{
        name: getattr(FULL, name)
        for name in FULL.set_fields()
        if name not in INEXPRESSIBLE and name != "gpus"
    },
    gpus=2,
)


def test_swarm_full_mapping() -> None:
    pieces = swarm_task_pieces(SWARM_FULL, memory_bytes=4096 * MIB, pids_limit=100)
    spec = ContainerSpec("img", **pieces.container_kwargs)
    spec.update(pieces.container_fields)
    template = TaskTemplate(spec, resources=pieces.resources)
    container = template["ContainerSpec"]
    assert container["User"] == "1000:1000"
    assert container["Dir"] == "/work"
    assert [(m["Type"], m["Target"]) for m in container["Mounts"]] == [
        ("tmpfs", "/scratch"),
        ("volume", "/cache"),
    ]
    assert container["Mounts"][0]["TmpfsOptions"] == {"SizeBytes": 8 * MIB, "Mode": 0o1777}
    assert container["ReadOnly"] is True
    assert container["Init"] is True
    assert container["Hosts"] == ["10.0.0.5 db.internal"]
    assert container["DNSConfig"] == {"Nameservers": ["1.1.1.1"]}
    assert container["CapabilityAdd"] == ["NET_ADMIN"]
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["Ulimits"] == [{"Name": "nofile", "Soft": 512, "Hard": 1024}]
    resources = template["Resources"]
    assert resources["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 64 * MIB, "Pids": 100}
    assert resources["Reservations"]["NanoCPUs"] == 500_000_000
    assert resources["Reservations"]["MemoryBytes"] == 64 * MIB
    assert resources["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": SWARM_GPU_KIND, "Value": 2}}
    ]


def test_swarm_without_settings_is_the_router_base() -> None:
    pieces = swarm_task_pieces(None, memory_bytes=256 * MIB)
    assert pieces.container_kwargs == {}
    assert pieces.container_fields == {}
    assert dict(pieces.resources) == {
        "Limits": {"MemoryBytes": 256 * MIB},
        "Reservations": {"MemoryBytes": 256 * MIB},
    }


def test_swarm_gpus_are_a_count_only() -> None:
    """swarmkit takes a task's named generic resources but never places the task (its
    scheduler handles counted ones only): named devices are refused, as `all` is."""
    pieces = swarm_task_pieces(ContainerSettings(gpus=2), memory_bytes=MIB)
    assert pieces.resources["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": SWARM_GPU_KIND, "Value": 2}}
    ]
    for gpus in ("device=GPU-a,GPU-b", "all"):
        (refusal,) = swarm_refusals(ContainerSettings(gpus=gpus))
        assert refusal[0] == "gpus"
        assert "a count of GPUs" in refusal[1]


def _node(
    name: str,
    *gpus: dict[str, object],
    state: str = "ready",
    availability: str = "active",
) -> dict[str, object]:
    return {
        "ID": f"id-{name}",
        "Spec": {"Availability": availability},
        "Status": {"State": state},
        "Description": {"Hostname": name, "Resources": {"GenericResources": list(gpus)}},
    }


def _counted(kind: str, value: int) -> dict[str, object]:
    return {"DiscreteResourceSpec": {"Kind": kind, "Value": value}}


def _named(kind: str, value: str) -> dict[str, object]:
    return {"NamedResourceSpec": {"Kind": kind, "Value": value}}


def test_a_gpu_count_no_node_advertises_is_a_shortfall() -> None:
    plain = _node("plain")
    assert gpu_shortfall(1, [plain]) == (
        "no ready, active node advertises 1 NVIDIA-GPU (plain: 0); a node advertises its "
        "GPUs with node-generic-resources in its daemon configuration"
    )
    assert gpu_shortfall(1, []) is not None
    two = _node("two", _counted(SWARM_GPU_KIND, 2))
    assert gpu_shortfall(2, [plain, two]) is None
    assert gpu_shortfall(3, [plain, two]) is not None  # a task takes its GPUs on one node
    named = _node("named", _named(SWARM_GPU_KIND, "GPU-a"), _named(SWARM_GPU_KIND, "GPU-b"))
    assert gpu_shortfall(2, [named]) is None  # named ones count for a count
    other_kind = _node("fpga", _counted("FPGA", 4))
    assert gpu_shortfall(1, [other_kind]) is not None
    for unusable in (
        _node("down", _counted(SWARM_GPU_KIND, 4), state="down"),
        _node("drained", _counted(SWARM_GPU_KIND, 4), availability="drain"),
        _node("paused", _counted(SWARM_GPU_KIND, 4), availability="pause"),
    ):
        assert gpu_shortfall(1, [unusable]) is not None


def test_swarm_refuses_what_a_service_cannot_express() -> None:
    assert swarm_refusals(SWARM_FULL) == []
    refused = [name for name, _ in swarm_refusals(FULL)]
    assert refused == ["cpu_shares", "cpuset_cpus", "shm_size_bytes", "security_opt"]
    assert [n for n, _ in swarm_refusals(ContainerSettings(gpus="all"))] == ["gpus"]
    check_swarm_expressible(None, ROUTER)
    check_swarm_expressible(SWARM_FULL, JOB)
    for name in INEXPRESSIBLE:
        settings = ContainerSettings(**{name: getattr(FULL, name)})
        with pytest.raises(ConfigError) as router:
            check_swarm_expressible(settings, ROUTER)
        assert router.value.name == f"container.{name}"
        assert "backend 'swarm'" in str(router.value)
        with pytest.raises(ConfigError, match=rf"ProjectConfig\.container\.{name}.*project 'p'"):
            check_swarm_expressible(settings, project_layer("p"))
        with pytest.raises(InvalidJobError, match=rf"job\.container\.{name}.*job layer"):
            check_swarm_expressible(settings, JOB)


def test_the_driver_table_names_each_drivers_settings_check() -> None:
    assert settings_check("docker") is None
    assert settings_check("swarm") is check_swarm_expressible
    refuse_settings("docker", ContainerSettings(cpu_shares=512), ROUTER)  # Docker takes it
    with pytest.raises(ConfigError, match=r"container\.cpu_shares: not available"):
        refuse_settings("swarm", ContainerSettings(cpu_shares=512), ROUTER)
    refuse_settings("swarm", None, JOB)

"""Spawn with a full set of container controls against docker-py creating the same container.

dockyard's side: `spawn_worker` of a job under a router whose `container` sets every control
the engine here can honour (no GPU, no bind). The baseline: docker-py's low-level
`create_host_config` + `create_container` + `start` with the same controls written out by
hand (not through dockyard's mapping), the same env and labels (replayed from dockyard's own
spec). Paired rounds as in `test_1_spawn`: every dockyard round is bracketed by raw
create+starts made just before and after it.
"""

from __future__ import annotations

import itertools
import time

import docker
import pytest

from dockyard import ActiveWorker, ContainerManager, ContainerSettings, Mount, Ulimit, WorkerJob

from .harness import (
    RawDocker,
    bench_config,
    capture_spec,
    end_worker,
    job_id,
    median,
    raw_name,
    record,
)

ROUNDS = 20
SLEEP = ["sleep", "60"]
MIB = 1024 * 1024
CONTROLS = ContainerSettings(
    cpus=0.5,
    cpu_shares=512,
    cpuset_cpus="0",
    memory_mb=64,
    shm_size_bytes=16 * MIB,
    mounts=(Mount("tmpfs", "/scratch", size_bytes=8 * MIB),),
    working_dir="/",
    user="1000:1000",
    ulimits=(Ulimit("nofile", 1024, 1024),),
    cap_add=("NET_RAW",),
    cap_drop=("CHOWN",),
    read_only_rootfs=True,
    security_opt=("no-new-privileges:true",),
    extra_hosts={"db.internal": "10.1.2.3"},
    dns=("10.9.9.9",),
    init=True,
)


class RawControls(RawDocker):
    """The container with every control, through docker-py's low-level API only."""

    def create(self, name: str) -> str:
        spec = self.spec
        host_config = self.api.create_host_config(
            mem_limit=64 * MIB,
            memswap_limit=64 * MIB,
            network_mode=spec.network,
            auto_remove=self.auto_remove,
            pids_limit=spec.pids_limit,
            nano_cpus=500_000_000,
            cpu_shares=512,
            cpuset_cpus="0",
            shm_size=16 * MIB,
            mounts=[
                docker.types.Mount(
                    "/scratch", None, type="tmpfs", tmpfs_size=8 * MIB, tmpfs_mode=0o1777
                )
            ],
            ulimits=[docker.types.Ulimit(name="nofile", soft=1024, hard=1024)],
            cap_add=["NET_RAW"],
            cap_drop=["CHOWN"],
            read_only=True,
            security_opt=["no-new-privileges:true"],
            extra_hosts={"db.internal": "10.1.2.3"},
            dns=["10.9.9.9"],
            init=True,
        )
        created = self.api.create_container(
            image=spec.image,
            name=name,
            command=self.command,
            environment=[f"{k}={v}" for k, v in spec.env.items()],
            labels=dict(spec.labels),
            host_config=host_config,
            detach=True,
            working_dir="/",
            user="1000:1000",
        )
        return str(created["Id"])


@pytest.mark.benchmark(group="spawn-controls")
def test_spawn_with_every_control(benchmark, docker_client, test_image, instance_id):
    """`spawn_worker` with every control, paired with raw create + start of the same."""
    config = bench_config(test_image, instance_id, max_workers=2, container=CONTROLS)
    with ContainerManager(config) as manager:
        spec, first = capture_spec(
            manager, WorkerJob(id=job_id("controls"), type="bench", command=SLEEP)
        )
        assert first.settings == CONTROLS
        end_worker(manager, docker_client, first)
        raw = RawControls(docker_client.api, spec)
        paired: list[float] = []
        running: list[ActiveWorker] = []

        def setup():
            while running:
                end_worker(manager, docker_client, running.pop())
            start = time.perf_counter()
            container_id = raw.create_start(raw_name("controls"))
            paired.append(time.perf_counter() - start)
            raw.remove(container_id)
            return (WorkerJob(id=job_id("controls"), type="bench", command=SLEEP),), {}

        def spawn(job):
            running.append(manager.spawn_worker(job))

        benchmark.pedantic(spawn, setup=setup, rounds=ROUNDS, warmup_rounds=1)
        setup()  # ends the last worker and takes the raw sample after the last round

    total = benchmark.stats.stats.median
    brackets = [(a + b) / 2 for a, b in itertools.pairwise(paired[1:])]
    ratios = [d / r for d, r in zip(benchmark.stats.stats.data, brackets, strict=True)]
    benchmark.extra_info["median_of_paired_ratios"] = round(median(ratios), 4)
    record(
        benchmark,
        "spawn_controls_s",
        total,
        median(brackets),
        "s",
        name="spawn with every control / create+start of the same (paired rounds)",
        target="<= 1.05",
    )

"""Exit-wait latency on the real engine: the engine's `die` event → `ExitWait.result()` returns.

Not a pytest benchmark: run it directly, with the library under test on the path, to
compare exit-wait mechanisms (the same script runs against any version of the gateway)::

    PYTHONPATH=lib python benchmarks/exit_wait_latency.py [containers=200] [concurrency=8]

Each container sleeps 0.3 s; its exit wait is registered before `start`, as the launcher
does. The `die` timestamps come from a separate docker-py events stream of this run.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
import uuid

import docker

from dockyard._docker import DockerGateway
from dockyard._driver import ContainerSpec

IMAGE = "dockyard-test-busybox:latest"


def main(count: int, concurrency: int) -> None:
    run = uuid.uuid4().hex[:8]
    client = docker.from_env()
    gateway = DockerGateway.connect(
        short_pool=concurrency + 4, wait_pool=concurrency + 4, timeout_s=30
    )
    died: dict[str, int] = {}
    resolved: dict[str, int] = {}
    lock = threading.Lock()
    events = client.api.events(
        filters={"type": "container", "event": "die", "label": f"latency.run={run}"}, decode=True
    )

    def listen() -> None:
        for event in events:
            with lock:
                died[event["id"]] = event["timeNano"]

    def one(index: int) -> None:
        spec = ContainerSpec(
            image=IMAGE,
            name=f"exit-latency-{run}-{index}",
            env={},
            labels={"latency.run": run},
            memory_bytes=64 << 20,
            network="none",
            auto_remove=True,
            command=["sh", "-c", "sleep 0.3"],
        )
        container_id = gateway.create(spec)
        wait = gateway.open_exit_wait(container_id)
        gateway.start(container_id)
        wait.result()
        with lock:
            resolved[container_id] = time.time_ns()

    threading.Thread(target=listen, daemon=True).start()
    slots = threading.Semaphore(concurrency)
    threads = []

    def guarded(index: int) -> None:
        try:
            one(index)
        finally:
            slots.release()

    for index in range(count):
        slots.acquire()
        thread = threading.Thread(target=guarded, args=(index,))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 10
    while len(died) < len(resolved) and time.monotonic() < deadline:
        time.sleep(0.05)  # the separate events stream may lag behind the last exits
    events.close()
    gateway.close()
    latencies = sorted((resolved[c] - died[c]) / 1e6 for c in resolved if c in died)
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(
        f"die→result(): n={len(latencies)} p50={statistics.median(latencies):.2f} ms "
        f"p99={p99:.2f} ms max={latencies[-1]:.2f} ms"
    )


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 200, int(sys.argv[2]) if len(sys.argv) > 2 else 8
    )

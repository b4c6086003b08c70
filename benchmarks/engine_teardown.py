"""How fast an engine tears many containers down, and what a removal wait costs it.

Not a pytest benchmark: run it directly against any engine (raw docker-py, no dockyard)::

    DOCKER_HOST=... python benchmarks/engine_teardown.py [containers=100] [extras...]

It starts the containers (`sleep 600`, auto-removed, 16 MB), sends every one SIGTERM,
SIGKILL 3 s later, and prints when the engine saw the deaths and removals. Extras add,
per container once its `die` event arrives, what a router might do: `inspect` (one
inspect), `waitrm` (the engine's `wait?condition=removed`), `pollrm` (inspects until it
is gone, every 0.5 s), `remove` (created without AutoRemove: a forced remove call, what
dockyard does on Podman). On Podman 5 here, 100 containers: none 12 to 14 s, remove 12 s,
waitrm 40 to 55 s, pollrm 21 s; 200 containers: none 33 s.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import docker

IMAGE = "dockyard-test-busybox:latest"
LABEL = "dockyard-bench-teardown"


def main(count: int, extras: set[str]) -> None:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    api = docker.APIClient(base_url=host, timeout=300, max_pool_size=2 * count + 32)
    host_config = api.create_host_config(
        mem_limit=16 * 1024 * 1024, auto_remove="remove" not in extras
    )

    def make(_: int) -> str:
        created = api.create_container(
            IMAGE, ["sleep", "600"], host_config=host_config, labels={LABEL: "1"}
        )
        api.start(created["Id"])
        return str(created["Id"])

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(make, range(count)))

    def after_death(container_id: str) -> None:
        if "inspect" in extras:
            with contextlib.suppress(docker.errors.APIError):
                api.inspect_container(container_id)
        if "pollrm" in extras:
            while True:
                try:
                    api.inspect_container(container_id)
                except docker.errors.APIError:  # 404 (Podman: 500 "no container")
                    break
                time.sleep(0.5)
        if "remove" in extras:
            with contextlib.suppress(docker.errors.APIError):
                api.remove_container(container_id, force=True)
        if "waitrm" in extras:
            with contextlib.suppress(docker.errors.APIError, OSError):
                api.wait(container_id, timeout=60, condition="removed")

    seen: dict[str, list[float]] = {"die": [], "removed": []}
    followers = ThreadPoolExecutor(count)
    events = api.events(filters={"type": "container", "label": f"{LABEL}=1"}, decode=True)

    def read() -> None:
        for event in events:
            action = event.get("Action")
            if action == "die":
                seen["die"].append(event["timeNano"] / 1e9)
                followers.submit(after_death, event["Actor"]["ID"])
            elif action in ("destroy", "remove"):  # Docker's name, Podman's
                seen["removed"].append(event["timeNano"] / 1e9)

    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.5)
    started = time.time()

    def signal_all(signal: str) -> None:
        def one(container_id: str) -> None:
            with contextlib.suppress(docker.errors.APIError):
                api.kill(container_id, signal)

        with ThreadPoolExecutor(32) as pool:
            list(pool.map(one, ids))

    signal_all("SIGTERM")
    time.sleep(max(0.0, 3.0 - (time.time() - started)))
    signal_all("SIGKILL")
    while len(seen["removed"]) < count and time.time() - started < 300:
        time.sleep(0.2)
    deaths = sorted(t - started for t in seen["die"])
    removals = sorted(t - started for t in seen["removed"])
    print(
        f"{count} containers, extras {sorted(extras) or 'none'}: deaths "
        f"{deaths[0]:.2f}..{deaths[-1]:.2f}s, removals {removals[0]:.2f}..{removals[-1]:.2f}s "
        f"({len(removals)} seen)",
        flush=True,
    )
    os._exit(0)  # the event reader and the followers are daemon work: no waiting for them


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100, set(sys.argv[2:]))

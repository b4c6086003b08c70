"""What a flattened snapshot costs on the engine at hand: time and disk per flatten.

    PYTHONPATH=lib python benchmarks/flatten_cost.py [MB ...]   # default: 1 100

For each size, a container of the test image writes that many MB of random data, is
committed (as a snapshot commit is), and the commit is written flattened (`_flatten.flatten`:
the container's export piped into an image import). Prints the median of three rounds of the
commit's and the flatten's time, and the flattened image's size (its one layer: the whole
filesystem, base image included, shared with nothing). Removes everything it made.
"""

from __future__ import annotations

import statistics
import sys
import time

import docker

from dockyard._docker import DockerGateway
from dockyard._flatten import flatten

IMAGE = "dockyard-test-busybox:latest"
ROUNDS = 3


def one_round(
    client: docker.APIClient, gateway: DockerGateway, mb: int
) -> tuple[float, float, int]:
    script = f"head -c {mb * 1024 * 1024} /dev/urandom > /data"
    container = client.create_container(IMAGE, ["sh", "-c", script])["Id"]
    made: list[str] = []
    try:
        client.start(container)
        client.wait(container)
        started = time.monotonic()
        committed = gateway.commit(container, "", "", ["ENV SECRET="])
        made.append(committed)
        commit_s = time.monotonic() - started
        flat, info, flatten_s = flatten(gateway, container, gateway.image_inspect(committed))
        made.append(flat)
        return commit_s, flatten_s, int(info["Size"])
    finally:
        client.remove_container(container, force=True)
        for image in reversed(made):
            client.remove_image(image)


def main(sizes: list[int]) -> None:
    client = docker.APIClient(timeout=600)
    gateway = DockerGateway.from_client(client)
    try:
        for mb in sizes:
            rounds = [one_round(client, gateway, mb) for _ in range(ROUNDS)]
            commit_s = statistics.median(r[0] for r in rounds)
            flatten_s = statistics.median(r[1] for r in rounds)
            size = rounds[-1][2]
            print(
                f"{mb:>5} MB written: commit {commit_s * 1000:7.0f} ms, "
                f"flatten {flatten_s * 1000:7.0f} ms, flattened image {size / 1e6:7.1f} MB"
            )
    finally:
        gateway.close()


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [1, 100])

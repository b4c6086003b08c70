"""Unit tests (no engine) of image answers read back in one form: names as the Docker CLI
writes them (Podman answers `docker.io/library/NAME:TAG` and `localhost/NAME:TAG`), ids with
their `sha256:`, and tag calls with repository and tag apart (Podman refuses `repo=NAME:TAG`
alone)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dockyard import ContainerSettings, WorkerJob, WorkerSpawnError
from dockyard._adoption import launched_image
from dockyard._docker import DockerGateway
from dockyard._docker_images import full_image_id
from dockyard._naming import familiar, same_image
from support.rig import Rig

HEX = "9a16cbbd93e57c286efa2f7a66e49fbc6a13bcf0d9ffb5ccc93d45908258acaa"


@pytest.mark.parametrize(
    ("answered", "expected"),
    [
        ("docker.io/library/busybox:latest", "busybox:latest"),
        ("docker.io/library/busybox", "busybox"),
        ("index.docker.io/library/busybox:1", "busybox:1"),
        ("docker.io/team/worker:2", "team/worker:2"),
        ("docker.io/library/team/worker:2", "library/team/worker:2"),
        ("localhost/cascade-snapshot-p-w-0123:latest", "cascade-snapshot-p-w-0123:latest"),
        ("localhost:5000/worker:1", "localhost:5000/worker:1"),
        ("ghcr.io/org/worker:latest", "ghcr.io/org/worker:latest"),
        ("busybox:latest", "busybox:latest"),
        ("<none>:<none>", "<none>:<none>"),
        (f"docker.io/library/busybox@sha256:{HEX}", f"busybox@sha256:{HEX}"),
    ],
)
def test_familiar_names_are_the_docker_cli_s(answered: str, expected: str) -> None:
    assert familiar(answered) == expected
    assert familiar(expected) == expected


@pytest.mark.parametrize(
    ("configured", "answered"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:latest", "busybox"),
        ("dockyard-test-busybox:latest", "localhost/dockyard-test-busybox:latest"),
        ("team/worker:2", "docker.io/team/worker:2"),
        (f"sha256:{HEX}", HEX),
    ],
)
def test_one_image_however_the_engine_spells_it(configured: str, answered: str) -> None:
    assert same_image(configured, answered)
    assert same_image(answered, configured)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("busybox:1", "busybox:latest"),
        ("busybox", "docker.io/team/busybox:latest"),
        ("localhost:5000/worker:1", "worker:1"),
        ("ghcr.io/org/worker:1", "docker.io/org/worker:1"),
        (f"sha256:{HEX}", "busybox"),
    ],
)
def test_different_images_stay_apart(a: str, b: str) -> None:
    assert not same_image(a, b)


def test_ids_get_their_sha256() -> None:
    assert full_image_id(HEX) == f"sha256:{HEX}"
    assert full_image_id(f"sha256:{HEX}") == f"sha256:{HEX}"
    assert full_image_id("busybox:latest") == "busybox:latest"
    assert full_image_id(HEX[:12]) == HEX[:12]  # a short id is left as it is


def test_an_adopted_worker_s_image_is_what_the_router_named() -> None:
    # Podman's Config.Image of a worker started from `busybox` (its base image label).
    assert launched_image("docker.io/library/busybox:latest", "busybox") == "busybox"
    # From a snapshot: the engine's name, familiar, is the router's snapshot name.
    snapshot = "cascade-snapshot-p-w-0123:latest"
    assert launched_image(f"localhost/{snapshot}", "busybox") == snapshot
    # Docker answers the name as it was given: kept as it is.
    assert launched_image("ghcr.io/org/worker:1", "ghcr.io/org/worker:1") == "ghcr.io/org/worker:1"
    assert launched_image("busybox:1", None) == "busybox:1"


class ImagesAPI:
    """An `APIClient` stand-in answering image calls as Podman does."""

    def __init__(self) -> None:
        self.tags: list[tuple[str, str, str | None]] = []

    def tag(self, image: str, repository: str, tag: str | None = None, force: bool = False) -> bool:
        if tag is None:
            raise AssertionError("Podman refuses a tag call without tag")
        self.tags.append((image, repository, tag))
        return True

    def inspect_image(self, image: str) -> dict[str, Any]:
        return {
            "Id": HEX,
            "Parent": HEX[::-1],
            "RepoTags": ["localhost/cascade-snapshot-x:latest", "docker.io/library/busybox:1"],
        }

    def images(self, **kwargs: Any) -> list[dict[str, Any]]:
        return [
            {"Id": HEX, "RepoTags": ["localhost/cascade-snapshot-x:latest"]},
            {"Id": f"sha256:{HEX[::-1]}", "RepoTags": ["docker.io/library/busybox:1"]},
        ]


def test_image_answers_are_read_back_in_one_form() -> None:
    gateway = DockerGateway(ImagesAPI())  # type: ignore[arg-type]
    info = gateway.image_inspect("cascade-snapshot-x:latest")
    assert info["Id"] == f"sha256:{HEX}" and info["Parent"] == f"sha256:{HEX[::-1]}"
    assert info["RepoTags"] == ["cascade-snapshot-x:latest", "busybox:1"]
    (snapshot,) = gateway.list_images("cascade-snapshot-")
    assert snapshot["Id"] == f"sha256:{HEX}"
    assert snapshot["RepoTags"] == ["cascade-snapshot-x:latest"]
    assert [i["RepoTags"] for i in gateway.list_images()][1] == ["busybox:1"]
    (dangling, _) = gateway.dangling_images(["a=b"])
    assert dangling["Id"] == f"sha256:{HEX}"


def test_a_tag_call_sends_repository_and_tag_apart() -> None:
    api = ImagesAPI()
    gateway = DockerGateway(api)  # type: ignore[arg-type]
    gateway.tag("sha256:abc", "cascade-snapshot-x", "latest")
    gateway.tag("sha256:abc", "localhost:5000/team/worker:2", "")
    gateway.tag("sha256:abc", "worker", "")
    assert api.tags == [
        ("sha256:abc", "cascade-snapshot-x", "latest"),
        ("sha256:abc", "localhost:5000/team/worker", "2"),
        ("sha256:abc", "worker", "latest"),
    ]


def test_a_gpu_request_the_engine_drops_is_refused_and_leaves_nothing(
    rig_factory: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = rig_factory(container=ContainerSettings(gpus=1))
    inspect = rig.api.inspect_container
    kept = {"requests": False}

    def answering(ref: str) -> dict[str, Any]:
        info = inspect(ref)
        host = info["HostConfig"]  # the fake keeps docker-py's create arguments
        host["DeviceRequests"] = host.get("device_requests") if kept["requests"] else None
        return info

    monkeypatch.setattr(rig.api, "inspect_container", answering)
    job = WorkerJob("gpu", "t", {}, command=["true"])
    # Dropped by the engine (Podman's Docker API): refused, the container removed.
    with pytest.raises(WorkerSpawnError, match=r"refused the GPU request \(gpus=1\)"):
        rig.manager.spawn_worker(job)
    assert rig.api.containers_by_id == {}
    assert rig.api.calls_of("start") == []
    # Kept by the engine (Docker): created and started.
    kept["requests"] = True
    worker = rig.manager.spawn_worker(job)
    assert list(rig.api.containers_by_id) == [worker.container_id]
    assert len(rig.api.calls_of("start")) == 1

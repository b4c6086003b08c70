"""The engine the tests run on: whether it is required, its socket, the containers and images
of one router instance, and managers made from base settings."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import docker
import docker.errors

from dockyard._naming import familiar

LABEL_PREFIX = "cascade"
"""Default ``RouterConfig.label_prefix``; the leak detector looks for its labels."""

LEAK_GRACE_S = 5.0
"""How long teardown waits for non-running containers to go away by themselves
(AutoRemove is asynchronous: the daemon removes the container shortly *after* ``wait``
returns)."""


def docker_required() -> bool:
    """True when a missing Docker engine must fail the run instead of skipping."""
    require = os.environ.get("DOCKYARD_REQUIRE_DOCKER", "").strip().lower()
    ci = os.environ.get("CI", "").strip().lower()
    return require in {"1", "true", "yes"} or ci in {"1", "true", "yes"}


def engine_socket() -> str:
    """The engine's unix socket path (DOCKER_HOST when it names one)."""
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://") :] if host.startswith("unix://") else "/var/run/docker.sock"


def is_podman(client: docker.DockerClient) -> bool:
    """Whether the engine is Podman behind its Docker-compatible API."""
    components = client.version().get("Components") or []
    return any("podman" in str(part.get("Name", "")).lower() for part in components)


def instance_containers(client: docker.DockerClient, instance: str) -> list[Any]:
    """Every container (running or not) labelled with router instance ``instance``."""
    label = f"{LABEL_PREFIX}.router.instance={instance}"
    return list(client.containers.list(all=True, filters={"label": label}))


def remove_container(container: Any) -> None:
    """Force-remove a container; gone already (404) or being removed (409) is fine.

    It is killed first: Podman's forced removal stops a running container with a 10 s
    grace (Docker's kills it).
    """
    with contextlib.suppress(docker.errors.APIError):
        container.kill()
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: removal already in progress
            raise


def image_names(client: docker.DockerClient) -> list[str]:
    """Every image name on the engine as the Docker CLI writes it (Podman answers
    `docker.io/library/NAME:TAG` and `localhost/NAME:TAG`)."""
    # The plain list: `images.list()` inspects every image, and one that another user of a
    # shared engine removes meanwhile fails the whole listing with a 404.
    return [familiar(tag) for image in client.api.images() for tag in image.get("RepoTags") or ()]


def tag_image(client: docker.DockerClient, image: str, reference: str) -> None:
    """Give `image` the name `reference` (`NAME:TAG`), repository and tag sent apart as
    every engine takes them (Podman refuses `repo=NAME:TAG` without `tag`)."""
    repository, _, tag = reference.rpartition(":")
    assert repository and "/" not in tag, f"{reference!r} has no tag"
    client.api.tag(image, repository, tag)


def remove_images_with_prefix(client: docker.DockerClient, prefix: str) -> None:
    for name in image_names(client):
        if name.startswith(prefix):
            with contextlib.suppress(docker.errors.NotFound):
                client.images.remove(name, force=True)


def snapshot_prefix_for(instance: str) -> str:
    """The snapshot image prefix of a test's router instance, ``dockyard-test-snap-<8 hex>-``."""
    return "dockyard-test-snap-" + instance.rsplit("-", 1)[-1] + "-"


class ManagerFactory:
    """``factory(**overrides) -> ContainerManager`` from base settings; `close_all` at teardown.

    The keyword arguments named in ``manager_kwargs`` go to the manager itself (``defaults``
    fill the ones not given); every other one overrides a ``RouterConfig`` field.
    """

    def __init__(
        self, settings: dict[str, Any], manager_kwargs: tuple[str, ...], **defaults: Any
    ) -> None:
        self.settings = settings
        self.manager_kwargs = manager_kwargs
        self.defaults = defaults
        self.made: list[Any] = []

    def __call__(self, **overrides: Any) -> Any:
        from dockyard import ContainerManager, RouterConfig  # noqa: PLC0415 - only managers need it

        kwargs = {name: overrides.pop(name) for name in self.manager_kwargs if name in overrides}
        for name, value in self.defaults.items():
            kwargs.setdefault(name, value)
        manager = ContainerManager(RouterConfig(**{**self.settings, **overrides}), **kwargs)
        self.made.append(manager)
        return manager

    def close_all(self) -> None:
        for manager in reversed(self.made):
            manager.close()

"""Registry credentials for image pulls: which server and account; never the password in a repr."""

from __future__ import annotations

import base64
import json
import logging
import threading
from dataclasses import dataclass, field

from ._config import RouterConfig

__all__ = ["DOCKER_HUB_SERVER", "RegistryAuth", "RegistryAuthResolver", "registry_host"]

log = logging.getLogger("dockyard.registry")

# What `docker login` records for Docker Hub images (the original's address too).
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"


def registry_host(image: str) -> str:
    """The registry an image reference names, or Docker Hub's address for a bare name.

    The first path component is a registry host only when the reference has a `/` and
    that component holds a `.` or a `:` (a port) or is `localhost`; a tag colon never
    marks a host (`redis:7`, `library/redis` are Docker Hub images).
    """
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB_SERVER


@dataclass(frozen=True)
class RegistryAuth:
    """One pull's credentials. The password never shows in a repr (Sentry frame locals)."""

    username: str
    password: str = field(repr=False)
    server: str

    def header(self) -> str:
        """The engine's `X-Registry-Auth` header value (base64url JSON, as docker-py sends it)."""
        body = json.dumps(
            {"username": self.username, "password": self.password, "serveraddress": self.server}
        )
        return base64.urlsafe_b64encode(body.encode("utf-8")).decode("ascii")


class RegistryAuthResolver:
    """The credentials for pulling one image, from `RouterConfig.registry_*`.

    Both username and password set: every pull sends them, to `registry_server` or else
    to the registry the image names. Neither: anonymous pulls. Only one of the two: an
    operator mistake; it is logged once (without either value) and pulls go anonymous,
    so public images keep working while failures on private ones stay attributable.
    """

    def __init__(self, config: RouterConfig) -> None:
        self._username = config.registry_username or None
        self._password = config.registry_password or None
        self._server = config.registry_server or None
        self._warned = threading.Event()

    def __repr__(self) -> str:
        return f"RegistryAuthResolver(username={self._username!r}, server={self._server!r})"

    def for_image(self, image: str) -> RegistryAuth | None:
        if self._username is None and self._password is None:
            return None
        if self._username is None or self._password is None:
            if not self._warned.is_set():
                self._warned.set()
                log.warning(
                    "partial worker-image registry credentials ignored; set both "
                    "WORKER_IMAGE_REGISTRY_USERNAME and WORKER_IMAGE_REGISTRY_PASSWORD. "
                    "Pulling anonymously",
                    extra={"image": image},
                )
            return None
        return RegistryAuth(self._username, self._password, self._server or registry_host(image))

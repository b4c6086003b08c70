"""Registry credentials for image pulls: which server and account; never a secret in a repr.

Where a pull's login comes from, first match wins, looked up anew for every pull:

1. `WORKER_IMAGE_REGISTRY_USERNAME`/`_PASSWORD` (`RouterConfig.registry_*`): for the
   registry `registry_server` names, or for every registry when it is unset;
2. the host's hook, `ContainerManager(registry_credentials=...)`;
3. the Docker config (`_docker_config`): the registry's credential helper (`credHelpers`,
   else `credsStore`), then its `auths` entry;
4. the router's login for another `registry_server`: sent with every pull, as before
   these sources existed.

None of them: the pull goes anonymous.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from docker.auth import INDEX_NAME, INDEX_URL, convert_to_hostname, resolve_repository_name
from docker.errors import InvalidRepository

from ._errors import WorkerImageResolutionError
from ._secrets import Secret, reveal

if TYPE_CHECKING:
    from ._config import RouterConfig
    from ._docker_config import DockerConfigLogins

__all__ = [
    "DOCKER_HUB_SERVER",
    "RegistryAuth",
    "RegistryAuthResolver",
    "RegistryCredentialProvider",
    "registry_host",
    "registry_index",
]

log = logging.getLogger("dockyard.registry")

# What `docker login` records for Docker Hub images (the original's address too).
DOCKER_HUB_SERVER = INDEX_URL


def registry_index(image: str) -> str:
    """The registry host an image reference names, as Docker derives it (`docker.io` for
    Docker Hub): `docker.auth.resolve_repository_name`.

    The first path component is a registry host only when the reference has a `/` and
    that component holds a `.` or a `:` (a port) or is `localhost`; a tag colon never
    marks a host (`redis:7`, `library/redis` are Docker Hub images).
    """
    try:
        index, _ = resolve_repository_name(image)
    except InvalidRepository:
        return INDEX_NAME if "/" not in image else image.split("/", 1)[0]
    return index


def registry_host(image: str) -> str:
    """The registry an image reference names, or Docker Hub's address for a bare name."""
    index = registry_index(image)
    return DOCKER_HUB_SERVER if index == INDEX_NAME else index


def _index_of_server(server: str) -> str:
    host = convert_to_hostname(server)
    return INDEX_NAME if host in (INDEX_NAME, f"index.{INDEX_NAME}") else host


class RegistryCredentialProvider(Protocol):
    """The host's registry logins (`registry_credentials=` of `ContainerManager`).

    Consulted before the Docker config, after `WORKER_IMAGE_REGISTRY_*` for their server.
    """

    def get_registry_credentials(self, registry: str) -> tuple[str, str] | None:
        """`(username, password)` for `registry`, or None to let the Docker config or an
        anonymous pull take over.

        Asked before every pull, so a rotating token can be handed out fresh. `registry`
        is a host as Docker derives it from the image (`ghcr.io`, `127.0.0.1:5000`;
        `docker.io` for Docker Hub). dockyard keeps the password out of every repr, log
        line and report; a hook that raises fails the pull with a
        `WorkerImageResolutionError` naming the registry.
        """
        ...


@dataclass(frozen=True)
class RegistryAuth:
    """One pull's credentials. No secret shows in a repr (Sentry frame locals).

    `password` (and `identity_token`, a registry token that replaces the password) are
    kept as `Secret`s; plain strings given are wrapped. `source` says where the login came
    from, for messages and logs.
    """

    username: str
    password: Secret | str = field(repr=False)
    server: str
    identity_token: Secret | str | None = field(default=None, repr=False)
    source: str = field(default="WORKER_IMAGE_REGISTRY_*", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.password, Secret):
            object.__setattr__(self, "password", Secret(self.password))
        if self.identity_token is not None and not isinstance(self.identity_token, Secret):
            object.__setattr__(self, "identity_token", Secret(self.identity_token))

    def header(self) -> str:
        """The engine's `X-Registry-Auth` header value (base64url JSON, as docker-py sends it)."""
        fields: dict[str, str] = {"username": self.username, "password": reveal(self.password)}
        if self.identity_token is not None:
            fields = {"identitytoken": reveal(self.identity_token)}
        body = json.dumps({**fields, "serveraddress": self.server})
        return base64.urlsafe_b64encode(body.encode("utf-8")).decode("ascii")


class RegistryAuthResolver:
    """The credentials for pulling one image: the router's, the host's, the Docker config's.

    `WORKER_IMAGE_REGISTRY_*`: both username and password set, every pull from their
    server (`registry_server`, or any registry when unset) sends them; pulls from other
    registries send them when neither the hook nor the Docker config has a login. Only
    one of the two is an operator mistake; it is logged once (without either value) and
    those pulls go on to the other sources, so public images keep working while failures
    on private ones stay attributable. Nothing is cached: a helper's rotating token is
    fetched per pull.
    """

    def __init__(
        self,
        config: RouterConfig,
        provider: RegistryCredentialProvider | None = None,
        docker_config: DockerConfigLogins | None = None,
    ) -> None:
        self._username = config.registry_username or None
        self._password = Secret(config.registry_password) if config.registry_password else None
        self._server = config.registry_server or None
        self._provider = provider
        self._docker_config = docker_config
        self._warned = threading.Event()

    def __repr__(self) -> str:
        return f"RegistryAuthResolver(username={self._username!r}, server={self._server!r})"

    def for_image(self, image: str) -> RegistryAuth | None:
        """The login for pulling `image`, or None (anonymous)."""
        index = registry_index(image)
        server = DOCKER_HUB_SERVER if index == INDEX_NAME else index
        configured = self._configured(image, server)
        if configured is not None and (
            self._server is None or _index_of_server(self._server) == index
        ):
            return configured
        if self._provider is not None:
            hooked = self._from_provider(index, server)
            if hooked is not None:
                return hooked
        if self._docker_config is not None:
            login = self._docker_config.lookup(index)
            if login is not None:
                return RegistryAuth(
                    login.username,
                    login.password if login.password is not None else Secret(""),
                    server,
                    identity_token=login.identity_token,
                    source=login.origin,
                )
        # The router's login for another server: still sent, as it always was.
        return configured

    def _configured(self, image: str, server: str) -> RegistryAuth | None:
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
        return RegistryAuth(self._username, self._password, self._server or server)

    def _from_provider(self, index: str, server: str) -> RegistryAuth | None:
        assert self._provider is not None
        try:
            answer = self._provider.get_registry_credentials(index)
        except Exception as err:
            log.warning(
                "registry credential hook failed",
                extra={"registry": index, "error_type": type(err).__name__},
            )
            raise WorkerImageResolutionError(
                f"the host's registry credentials for {index} could not be read "
                f"({type(err).__name__})"
            ) from None
        if answer is None:
            return None
        if not isinstance(answer, tuple) or len(answer) != 2:
            raise WorkerImageResolutionError(
                f"the host's registry credentials for {index} are not a (username, password) "
                f"pair (got {type(answer).__name__})"
            )
        username, password = answer
        if not isinstance(username, str) or not isinstance(password, str | Secret):
            raise WorkerImageResolutionError(
                f"the host's registry credentials for {index} are not strings"
            )
        return RegistryAuth(username, password, server, source="registry_credentials hook")

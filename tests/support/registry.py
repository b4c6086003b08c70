"""A real registry for the integration tests: Debian's `docker-registry` with htpasswd auth.

`running_registry(directory, user, password)` starts one on a free 127.0.0.1 port (the
engine allows plain HTTP to 127.0.0.0/8) and stops it by its pid when the block ends.
`push` puts a local image there under a reference, with the registry's login.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker

from support.servers import free_port, missing_tool, stop_process

START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT
    username: str
    password: str
    directory: Path  # its config, data, log and htpasswd file

    def set_password(self, password: str) -> None:
        """Rewrite the htpasswd file; the registry reads it again when it changes."""
        (self.directory / "htpasswd").write_text(htpasswd_entry(self.username, password))


def answers(host: str, login: tuple[str, str] | None = None) -> int | None:
    """The HTTP status of `GET /v2/` (with `login` as basic auth), None when it is down."""
    request = urllib.request.Request(f"http://{host}/v2/")
    if login is not None:
        import base64  # noqa: PLC0415

        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def _binaries() -> tuple[str, str] | None:
    registry = shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if os.path.exists("/usr/bin/docker-registry") else None
    )
    htpasswd = shutil.which("htpasswd")
    return (registry, htpasswd) if registry and htpasswd else None


def htpasswd_entry(user: str, password: str) -> str:
    found = _binaries()
    assert found is not None
    return subprocess.run(
        [found[1], "-Bbn", user, password], check=True, capture_output=True, text=True
    ).stdout


@contextmanager
def running_registry(directory: Path, user: str, password: str) -> Iterator[Registry]:
    """A docker-registry with htpasswd auth on a free 127.0.0.1 port; stopped by pid."""
    found = _binaries()
    if found is None:
        missing_tool("docker-registry or htpasswd (apache2-utils) is not installed", "them")
    binary, _ = found
    (directory / "htpasswd").write_text(htpasswd_entry(user, password))
    for _ in range(3):
        host = f"127.0.0.1:{free_port()}"
        config = directory / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {directory / 'data'}\n"
            f"http:\n  addr: {host}\n"
            "auth:\n  htpasswd:\n    realm: dockyard-test\n"
            f"    path: {directory / 'htpasswd'}\n"
        )
        with (directory / "registry.log").open("ab") as log:
            process = subprocess.Popen(
                [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        # Up, and asking for credentials.
        while process.poll() is None and time.monotonic() < deadline and answers(host) != 401:
            time.sleep(0.05)
        if process.poll() is None and answers(host) == 401:
            break
        stop_process(process)
    else:
        raise RuntimeError(f"docker-registry did not start; see {directory / 'registry.log'}")
    try:
        yield Registry(host, user, password, directory)
    finally:
        stop_process(process)


def push(
    client: docker.DockerClient, registry: Registry, source: str, repository: str, tag: str
) -> None:
    """Tag the local image `source` as `repository:tag` and push it with the registry's login.

    The local tag stays; the caller removes it when the engine must pull the image again.
    """
    client.images.get(source).tag(repository, tag)
    lines = client.api.push(
        repository,
        tag=tag,
        auth_config={"username": registry.username, "password": registry.password},
        stream=True,
        decode=True,
    )
    errors = [line for line in lines if "error" in line or "errorDetail" in line]
    assert not errors, f"push failed: {errors}"

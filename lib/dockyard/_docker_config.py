"""Registry logins as a Docker host keeps them: the Docker CLI's `config.json`.

The file is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, read afresh for
every pull (a `docker login` or a token refresher rewriting it is seen at the next pull).
For a registry the lookup is what docker-py's `docker.auth.AuthConfig.resolve_authconfig`
does: the credential helper named for it in `credHelpers`, else the `credsStore`; when the
helper has no entry, or there is no helper, the `auths` entry (`auth` as base64
`user:password`, or `username` and `password`, or an `identitytoken`).

A helper is run as docker-py's `docker.credentials.Store.get` runs it
(`docker-credential-<name> get`, the server on stdin, JSON `Username`/`Secret` on stdout,
"credentials not found" meaning no entry), with two differences: a timeout (the store
waits for ever, and a helper that asks a cloud API can hang), after which the helper's
whole process group is killed; and no answer is kept beyond the pull that asked for it,
so a rotating token (ECR's lasts 12 hours) is fetched again. Values are `Secret`s from
the moment they are read.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docker.auth import INDEX_NAME, INDEX_URL, TOKEN_USERNAME, resolve_index_name
from docker.credentials.constants import PROGRAM_PREFIX

from ._errors import WorkerImageResolutionError
from ._secrets import Secret

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "DEFAULT_HELPER_TIMEOUT_S",
    "DockerConfigLogins",
    "DockerLogin",
    "docker_config_file",
    "run_credential_helper",
]

log = logging.getLogger("dockyard.registry")

DEFAULT_HELPER_TIMEOUT_S = 15.0
CONFIG_FILENAME = "config.json"
_MESSAGE_CHARS = 200  # of a failing helper's own message, in the error
_NOT_FOUND = "credentials not found"


@dataclass(frozen=True)
class DockerLogin:
    """One registry login from the Docker config; `origin` says where (never the value)."""

    username: str
    password: Secret | None
    identity_token: Secret | None
    origin: str


def docker_config_file(environ: Mapping[str, str] | None = None) -> Path:
    """`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` (as the Docker CLI)."""
    env = os.environ if environ is None else environ
    directory = env.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / CONFIG_FILENAME
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".docker" / CONFIG_FILENAME


class DockerConfigLogins:
    """The Docker config's login for a registry, looked up anew on every call."""

    def __init__(self, helper_timeout_s: float = DEFAULT_HELPER_TIMEOUT_S) -> None:
        self.helper_timeout_s = helper_timeout_s

    def __repr__(self) -> str:
        return f"DockerConfigLogins(helper_timeout_s={self.helper_timeout_s!r})"

    def lookup(self, registry: str) -> DockerLogin | None:
        """The login for `registry` (a host as `docker.auth.resolve_repository_name` gives
        it, `docker.io` for Docker Hub), or None.

        Raises `WorkerImageResolutionError` naming the registry when the config cannot be
        read or its helper fails or does not answer in time.
        """
        path = docker_config_file()
        config = _read_config(path, registry)
        if config is None:
            return None
        helper = _helper_for(config, registry, path)
        if helper is not None:
            found = run_credential_helper(helper, _helper_server(registry), self.helper_timeout_s)
            if found is not None:
                return found
        return _auths_entry(config, registry, path)


def _read_config(path: Path, registry: str) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise WorkerImageResolutionError(
            f"cannot read the Docker config {path} for registry {registry}: {err.strerror}"
        ) from None
    try:
        config = json.loads(text)
    except ValueError:
        config = None
    del text
    if not isinstance(config, dict):
        raise WorkerImageResolutionError(
            f"the Docker config {path} (for registry {registry}) is not a JSON object"
        )
    return config


def _helper_server(registry: str) -> str:
    # The Docker CLI stores Docker Hub logins under the v1 index URL, others by host.
    return INDEX_URL if registry == INDEX_NAME else registry


def _helper_for(config: Mapping[str, Any], registry: str, path: Path) -> str | None:
    helpers = config.get("credHelpers") or {}
    store = config.get("credsStore") or None
    if not isinstance(helpers, dict) or not (store is None or isinstance(store, str)):
        raise WorkerImageResolutionError(
            f"the Docker config {path} has a malformed credHelpers or credsStore "
            f"(looking up registry {registry})"
        )
    for key, name in helpers.items():
        if isinstance(key, str) and resolve_index_name(key) == registry and name:
            return str(name)
    return store


def _auths_entry(config: Mapping[str, Any], registry: str, path: Path) -> DockerLogin | None:
    auths = config.get("auths") or {}
    if not isinstance(auths, dict):
        raise WorkerImageResolutionError(
            f"the Docker config {path} has a malformed auths section (registry {registry})"
        )
    # An exact key first, then any key naming the same host (`https://host/v1/`).
    keys = [registry] if registry in auths else []
    keys += [k for k in auths if isinstance(k, str) and k != registry]
    for key in keys:
        if resolve_index_name(key) != registry:
            continue
        entry = auths[key]
        if not isinstance(entry, dict):
            raise WorkerImageResolutionError(
                f"the Docker config {path} has a malformed auths entry for registry {registry}"
            )
        login = _login_of(entry, registry, path)
        if login is not None:
            return login
    return None


def _login_of(entry: Mapping[str, Any], registry: str, path: Path) -> DockerLogin | None:
    origin = f"auths entry in {path}"
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return DockerLogin(str(entry.get("username") or ""), None, Secret(token), origin)
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        user, colon, password = decoded.partition(":")
        del decoded
        if not user or not colon:
            raise WorkerImageResolutionError(
                f"the auths entry for registry {registry} in {path} is not base64 user:password"
            ) from None
        return DockerLogin(user, Secret(password), None, origin)
    named, given = entry.get("username"), entry.get("password")
    if isinstance(named, str) and named and isinstance(given, str):
        return DockerLogin(named, Secret(given), None, origin)
    return None  # `{}`: `docker login` with a credential store leaves such entries


def run_credential_helper(name: str, server: str, timeout_s: float) -> DockerLogin | None:
    """`docker-credential-<name> get` for `server`: the login, or None when it has none.

    Found on `PATH` at call time. A helper that is missing, fails, answers something that
    is not a login, or does not answer within `timeout_s` (its process group is then
    killed) raises `WorkerImageResolutionError` naming the helper and the registry.
    """
    program = PROGRAM_PREFIX + name
    what = f"credential helper {program} for registry {server}"
    executable = shutil.which(program)
    if executable is None:
        raise WorkerImageResolutionError(f"{what}: {program} is not on PATH")
    try:
        process = subprocess.Popen(
            [executable, "get"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout kills its children too
        )
    except OSError as err:
        raise WorkerImageResolutionError(f"{what} could not be run: {err.strerror}") from None
    try:
        out, err_out = process.communicate(server.encode("utf-8"), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        log.warning(
            "credential helper timed out",
            extra={"helper": program, "registry": server, "timeout_s": timeout_s},
        )
        raise WorkerImageResolutionError(f"{what} did not answer within {timeout_s:g}s") from None
    except BaseException:
        _kill_group(process)
        raise
    if process.returncode != 0:
        message = _first_line(out) or _first_line(err_out)
        del out, err_out
        if _NOT_FOUND in message.lower():
            return None
        raise WorkerImageResolutionError(
            f"{what} failed (exit status {process.returncode})"
            + (f": {message}" if message else "")
        )
    del err_out
    login = _parse_answer(out)
    del out
    if login is None:
        expected = "expected JSON with Username and Secret"
        raise WorkerImageResolutionError(
            f"{what} answered something other than a login ({expected})"
        )
    if not login[0] and not len(login[1]):
        return None  # docker-credential-pass answers an empty login for unknown servers
    user, secret = login
    origin = f"credential helper {program}"
    if user == TOKEN_USERNAME:
        return DockerLogin("", None, secret, origin)
    return DockerLogin(user, secret, None, origin)


def _parse_answer(out: bytes) -> tuple[str, Secret] | None:
    try:
        answer = json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(answer, dict):
        return None
    user, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(user, str) or not isinstance(secret, str):
        return None
    return user, Secret(secret)


def _first_line(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return text.splitlines()[0][:_MESSAGE_CHARS] if text else ""


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.kill()
    with contextlib.suppress(Exception):
        process.communicate(timeout=5)

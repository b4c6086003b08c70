"""An engine reached over ssh (`DOCKER_HOST=ssh://...`): exits arrive, and `close()` ends.

A private sshd on a free 127.0.0.1 port, with its own host key and one authorized key,
serves docker-py's ssh transport (paramiko, the `ssh` extra), which runs
`docker system dial-stdio` on the far side to reach the real engine. `HOME` points at a
directory holding that key and the server's known-hosts entry, so the user's own `~/.ssh`
is never read. Needs root (sshd), openssh-server and paramiko; skipped without them unless
the run requires Docker (CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from dockyard import ContainerManager, WorkerJob
from support.engine import is_podman
from support.servers import free_port, missing_tool
from support.threads import ThreadBaseline

SSHD = "/usr/sbin/sshd"
CLOSE_BOUND_S = 30.0  # a hang, not a speed target: close() returns within the heartbeat


@dataclass(frozen=True)
class SshEngine:
    docker_host: str
    home: Path


def _tools_missing() -> str | None:
    if not (os.path.exists(SSHD) and shutil.which("ssh-keygen")):
        return "openssh-server is not installed"
    try:
        import paramiko  # noqa: F401, PLC0415 - only the ssh transport needs it
    except ImportError:
        return "paramiko (dockyard's `ssh` extra) is not installed"
    if os.geteuid() != 0:
        return "sshd needs root"
    return None


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def ssh_engine(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SshEngine]:
    """The real engine behind a private sshd; the sshd is stopped by its pid."""
    problem = _tools_missing()
    if problem is not None:
        missing_tool(problem, "openssh-server and paramiko")
    directory = tmp_path_factory.mktemp("sshd")
    home = directory / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    _keygen(directory / "host_key")
    _keygen(home / ".ssh" / "id_ed25519")
    port = free_port()
    # `docker system dial-stdio` on the far side reaches the engine under test, not the
    # machine's default socket: sshd hands the session the same unix:// DOCKER_HOST.
    host = os.environ.get("DOCKER_HOST", "")
    set_env = f"SetEnv DOCKER_HOST={host}\n" if host.startswith("unix://") else ""
    (directory / "sshd_config").write_text(
        f"Port {port}\n"
        f"{set_env}"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {directory / 'host_key'}\n"
        f"AuthorizedKeysFile {home / '.ssh' / 'id_ed25519.pub'}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "StrictModes no\n"
        "UsePAM no\n"
        f"PidFile {directory / 'sshd.pid'}\n"
    )
    host_key = " ".join((directory / "host_key.pub").read_text().split()[:2])
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    server = subprocess.Popen(
        [SSHD, "-D", "-f", str(directory / "sshd_config"), "-E", str(directory / "sshd.log")]
    )
    try:
        _wait_for_port(port, server)
        yield SshEngine(f"ssh://root@127.0.0.1:{port}", home)
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_for_port(port: int, server: subprocess.Popen[bytes]) -> None:
    import socket  # noqa: PLC0415

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"sshd exited with {server.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("sshd did not listen in time")


@pytest.fixture
def over_ssh(
    ssh_engine: SshEngine, make_manager: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., ContainerManager]:
    """`make_manager` whose managers connect from the environment: the ssh engine."""
    monkeypatch.setenv("DOCKER_HOST", ssh_engine.docker_host)
    monkeypatch.setenv("HOME", str(ssh_engine.home))
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
    return make_manager


def test_a_job_runs_on_an_ssh_engine_and_its_exit_arrives_by_the_events_stream(
    over_ssh: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
) -> None:
    manager = over_ssh(auto_remove_workers=False)
    job = WorkerJob("ssh-1", "t", {}, command=["sh", "-c", "sleep 0.5; exit 3"])
    worker = manager.spawn_worker(job)
    outcome = manager.wait_for_worker("ssh-1", timeout=60)

    assert (outcome.status, outcome.exit_code) == ("failed", 3)
    assert outcome.duration_s is not None  # inspected over ssh before the removal
    # Podman takes StartedAt a little after the process starts (README, Engines).
    assert outcome.duration_s >= (0.45 if is_podman(docker_client) else 0.5)
    with pytest.raises(docker.errors.NotFound):
        docker_client.api.inspect_container(worker.container_id)


def test_close_ends_an_open_exit_wait_on_an_ssh_engine(
    thread_baseline: ThreadBaseline,
    over_ssh: Callable[..., ContainerManager],
    docker_client: docker.DockerClient,
) -> None:
    manager = over_ssh()
    worker = manager.spawn_worker(WorkerJob("ssh-2", "t", {}, command=["sleep", "60"]))

    closer = threading.Thread(target=manager.close, name="closer")
    closer.start()
    closer.join(CLOSE_BOUND_S)

    assert not closer.is_alive(), "close() hangs on an ssh engine"
    thread_baseline.assert_no_new_threads()
    # Detached, not killed: the worker still runs.
    assert docker_client.api.inspect_container(worker.container_id)["State"]["Running"]
    docker_client.api.remove_container(worker.container_id, force=True)

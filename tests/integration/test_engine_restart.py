"""The Docker engine restarts while workers run: each still gets exactly one outcome.

This test stops the machine's ``dockerd`` (SIGTERM) and starts it again with the same
command line, environment and log file, the way ``.ci/run`` starts it (``setsid``, output
appended to its log). It runs only with ``DOCKYARD_TEST_RESTART_ENGINE=1``; the engine is
always running again when it ends.

With ``--live-restore`` the containers outlive the engine and the workers succeed (or
fail) with their own exit codes; without it the engine stops them on the way down and each
ends ``failed`` or ``lost`` — still exactly once. Engines before 25 remove auto-removed
containers when they come back even with ``--live-restore`` (moby/moby#46308): such a
worker ends ``lost``, once; workers run with ``auto_remove_workers=False`` survive.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from dockyard import ContainerManager, WorkerJob
from support.listeners import ListenerRecorder

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        os.environ.get("DOCKYARD_TEST_RESTART_ENGINE") != "1",
        reason="stops and restarts this machine's dockerd; set DOCKYARD_TEST_RESTART_ENGINE=1",
    ),
]

ENGINE_WAIT_S = 90.0
DEFAULT_SOCKET = "/var/run/docker.sock"


def engine_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://") :] if host.startswith("unix://") else DEFAULT_SOCKET


@dataclass(frozen=True)
class Dockerd:
    """How the running dockerd was started, to start it again the same way."""

    pid: int
    argv: list[str]
    env: dict[str, str]
    cwd: str
    log: str  # where its stdout went; /dev/null when not a file

    @classmethod
    def serving(cls, socket_path: str) -> Dockerd:
        found = [
            d
            for d in (cls._read(p) for p in Path("/proc").iterdir() if p.name.isdigit())
            if d is not None and socket_path in d.sockets()
        ]
        if len(found) != 1:
            pytest.fail(f"expected one dockerd serving {socket_path}, found {len(found)}")
        return found[0]

    @classmethod
    def _read(cls, proc: Path) -> Dockerd | None:
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")[:-1]
            if not argv or os.path.basename(argv[0]) != b"dockerd":
                return None
            environ = (proc / "environ").read_bytes().split(b"\0")
            log = os.readlink(proc / "fd" / "1")
            cwd = os.readlink(proc / "cwd")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        return cls(
            pid=int(proc.name),
            argv=[a.decode() for a in argv],
            env=env,
            cwd=cwd,
            log=log if log.startswith("/") and os.path.isfile(log) else "/dev/null",
        )

    def sockets(self) -> list[str]:
        hosts: list[str] = []
        args = iter(self.argv[1:])
        for arg in args:
            if arg in ("-H", "--host"):
                hosts.append(next(args, ""))
            elif arg.startswith(("--host=", "-H=")):
                hosts.append(arg.split("=", 1)[1])
            elif arg.startswith("-H") and len(arg) > 2:
                hosts.append(arg[2:])
        paths = [h[len("unix://") :] for h in hosts if h.startswith("unix://")]
        return paths or ([DEFAULT_SOCKET] if not hosts else [])

    def alive(self) -> bool:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):  # gone, or went between open and read
            return False
        return "\nState:\tZ" not in status

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + ENGINE_WAIT_S
        while self.alive():
            if time.monotonic() > deadline:
                pytest.fail(f"dockerd (pid {self.pid}) did not stop after SIGTERM")
            time.sleep(0.1)

    def start(self) -> None:
        # As .ci/run does: a new session, stdin from /dev/null, output appended to the log.
        command = " ".join(shlex.quote(a) for a in self.argv)
        script = f"(setsid {command} </dev/null >>{shlex.quote(self.log)} 2>&1 &)"
        subprocess.run(["sh", "-c", script], env=self.env, cwd=self.cwd, check=True)


def engine_answers(socket_path: str) -> bool:
    try:
        client = docker.APIClient(base_url="unix://" + socket_path, timeout=5)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def wait_for_engine(socket_path: str) -> None:
    deadline = time.monotonic() + ENGINE_WAIT_S
    while not engine_answers(socket_path):
        if time.monotonic() > deadline:
            raise AssertionError(f"the engine at {socket_path} did not answer again")
        time.sleep(0.5)


def test_workers_survive_an_engine_restart_with_one_outcome_each(
    make_manager: Callable[..., ContainerManager], docker_client: docker.DockerClient
) -> None:
    socket_path = engine_socket()
    live_restore = bool(docker_client.info().get("LiveRestoreEnabled"))
    dockerd = Dockerd.serving(socket_path)
    recorder = ListenerRecorder()
    settings: dict[str, Any] = {
        "listener": recorder,
        "docker_network": "none",
        "max_workers": 4,
        "wait_retry_window_s": ENGINE_WAIT_S + 30,
        "worker_timeout_s": 300,
    }
    # Containers dockyard removes itself survive a live-restore restart. Auto-removed ones
    # do not on engines before 25 (moby/moby#46308: the restarted engine removes them).
    keeping = make_manager(auto_remove_workers=False, **settings)
    auto_removing = make_manager(**settings)
    kept_jobs = {"kept-ok": 0, "kept-fail": 3}
    auto_jobs = {"auto-ok": 0}
    for manager, jobs in ((keeping, kept_jobs), (auto_removing, auto_jobs)):
        for job_id, code in jobs.items():
            # A SIGTERM from an engine going down (without live-restore) ends it with 143.
            command = ["sh", "-c", f"trap 'exit 143' TERM; sleep 6 & wait; exit {code}"]
            manager.spawn_worker(WorkerJob(id=job_id, type="restart", command=command))
    try:
        dockerd.stop()
        time.sleep(1.0)  # the engine stays away for a moment
    finally:  # whatever happened, the engine runs again when the test ends
        if not dockerd.alive() and not engine_answers(socket_path):
            dockerd.start()
        wait_for_engine(socket_path)

    for job_id, code in kept_jobs.items():
        outcome = keeping.wait_for_worker(job_id, timeout=120)
        if live_restore:
            assert (outcome.status, outcome.exit_code) == (
                "succeeded" if code == 0 else "failed",
                code,
            ), outcome
        else:  # the engine stopped it on the way down
            assert outcome.status in ("failed", "lost"), outcome
            assert outcome.status == "lost" or outcome.exit_code == 143, outcome
    outcome = auto_removing.wait_for_worker("auto-ok", timeout=120)
    print(f"engine restart (live-restore {live_restore}): auto-removed worker {outcome.describe()}")
    assert outcome.status in ("succeeded", "failed", "lost"), outcome
    assert outcome.status != "succeeded" or outcome.exit_code == 0, outcome
    # New spawns work once the engine is back.
    for manager in (keeping, auto_removing):
        manager.spawn_worker(WorkerJob(id="after-restart", type="restart", command=["true"]))
        assert manager.wait_for_worker("after-restart", timeout=60).status == "succeeded"
        manager.close()
    with recorder.lock:
        finished = [job_id for job_id, _ in recorder.finished]
    assert sorted(finished) == sorted([*kept_jobs, *auto_jobs, "after-restart", "after-restart"])

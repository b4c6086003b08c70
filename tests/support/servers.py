"""Helper servers (redis-server, docker-registry, metrics endpoints, sshd) and their tools."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest
import redis

from support.engine import docker_required


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a helper server, killing it when it does not stop within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def missing_tool(message: str, installs: str) -> NoReturn:
    """Skip for a helper tool that is not installed; fail where the run requires it (CI)."""
    if docker_required():
        pytest.fail(f"{message} (required on CI: .ci/run installs {installs})", pytrace=False)
    pytest.skip(message)


REDIS_START_TIMEOUT_S = 10.0


def start_redis(binary: str, directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server on a free port; a port taken meanwhile is retried on another."""
    for _ in range(3):
        port = free_port()
        log = (directory / f"redis-{port}.log").open("wb")
        process = subprocess.Popen(
            [
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(directory),
                "--daemonize", "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            try:
                client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
                try:
                    if client.ping():
                        return process, port
                finally:
                    client.close()
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        stop_process(process)
    raise RuntimeError(f"redis-server did not start; see the logs in {directory}")

"""`dockyard run --backend swarm`: a batch of jobs as replicated-job services, end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import docker
import pytest

from support.cli import cli_env, dockyard_cli
from support.swarm import instance_services, swarm_host

pytestmark = pytest.mark.swarm


def run_cli(*args: str, host: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(drop=("DOCKYARD_BACKEND",), DOCKER_HOST=host)
    return dockyard_cli(*args, env=env, timeout=300)


def test_run_with_the_swarm_backend(
    tmp_path: Path, swarm_client: docker.DockerClient, swarm_image: str, swarm_instance: str
) -> None:
    jobs: list[dict[str, Any]] = [
        {"id": "cli-ok", "type": "t", "command": ["sh", "-c", "echo fine"]},
        {"id": "cli-bad", "type": "t", "command": ["sh", "-c", "exit 4"]},
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(j) for j in jobs) + "\n", encoding="utf-8")
    proc = run_cli(
        "run",
        str(path),
        "--backend",
        "swarm",
        "--image",
        swarm_image,
        "--memory-mb",
        "64",
        "--instance",
        swarm_instance,
        "--json",
        "--progress",
        "none",
        host=swarm_host(),
    )
    assert proc.returncode == 1, proc.stderr  # one job failed
    results = {r["job_id"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert results["cli-ok"]["status"] == "succeeded"
    assert results["cli-bad"]["status"] == "failed"
    assert results["cli-bad"]["exit_code"] == 4
    assert instance_services(swarm_client, swarm_instance) == []


def test_run_refuses_snapshots_on_swarm(tmp_path: Path, swarm_image: str) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"id": "x", "type": "t"}) + "\n", encoding="utf-8")
    proc = run_cli(
        "run",
        str(path),
        "--backend",
        "swarm",
        "--snapshots",
        "--image",
        swarm_image,
        host=swarm_host(),
    )
    assert proc.returncode == 2, proc.stderr
    assert "snapshots are not available with backend 'swarm'" in proc.stderr

"""`dockyard run --backend swarm`: a batch of jobs as replicated-job services, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import pytest

import dockyard

pytest_plugins = ("swarm_support",)  # its fixtures
pytestmark = pytest.mark.swarm

LIB = str(Path(dockyard.__file__).resolve().parent.parent)


def run_cli(*args: str, host: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [LIB, env.get("PYTHONPATH")]))
    env["DOCKER_HOST"] = host
    env.pop("DOCKYARD_BACKEND", None)
    code = "import sys\nfrom dockyard._cli import main\nsys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_run_with_the_swarm_backend(
    tmp_path: Path, swarm_client: docker.DockerClient, swarm_image: str, swarm_instance: str
) -> None:
    from swarm_support import swarm_host  # noqa: PLC0415 - registered as a plugin above

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
    label = f"cascade.router.instance={swarm_instance}"
    assert swarm_client.api.services(filters={"label": [label]}) == []


def test_run_refuses_snapshots_on_swarm(tmp_path: Path, swarm_image: str) -> None:
    from swarm_support import swarm_host  # noqa: PLC0415

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

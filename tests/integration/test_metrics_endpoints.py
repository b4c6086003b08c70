"""The /metrics endpoints operators scrape: `dockyard run --metrics-port` while a batch runs,
and examples/router.py with `DOCKYARD_METRICS_PORT`, both as subprocesses on a real engine.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import redis

from promscrape import Scrape
from support.cli import dockyard_cli, run_env, write_jobs
from support.hold import HOLD, let_go
from support.router import ROUTER, RouterProcess, push_job
from support.scrape import WAIT_S, scrape_until
from support.servers import free_port


def outcomes(got: Scrape, status: str, reason: str) -> float:
    return got.value("dockyard_worker_outcomes_total", {"status": status, "reason": reason})


def release_job(client: docker.DockerClient, job_id: str) -> None:
    (container,) = client.containers.list(filters={"label": f"cascade.job.id={job_id}"})
    let_go(container)


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


# --------------------------------------------------------------------------- CLI


def test_run_serves_metrics_while_the_batch_runs(
    tmp_path: Path, instance_id: str, test_image: str, docker_client: docker.DockerClient
) -> None:
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "quick", "type": "cli-test", "command": ["true"]},
        {"id": "crash", "type": "cli-test", "command": ["sh", "-c", "exit 5"]},
        {"id": "hold", "type": "cli-test", "command": ["sh", "-c", HOLD]},
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    code = "import sys\nfrom dockyard._cli import main\nsys.exit(main())"
    args = [str(jobs), "--image", test_image, "--instance", instance_id, "--json"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "run",
            *args,
            "--progress",
            "none",
            "--metrics-port",
            str(port),
        ],
        env=run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        running = scrape_until(
            url,
            "two jobs done and one running",
            lambda s: (
                outcomes(s, "succeeded", "completed") == 1
                and outcomes(s, "failed", "exit_error") == 1
                and s.value("dockyard_workers_active") == 1
            ),
        )
        assert proc.poll() is None  # the batch is still running
        assert running.value("dockyard_workers_started_total") == 3
        assert running.value("dockyard_worker_slots_limit") == 3
        assert running.value("dockyard_spawn_duration_seconds_count") == 3
        assert running.value("dockyard_engine_calls_total", {"operation": "start", "result": "ok"})
        release_job(docker_client, "hold")
        stdout, stderr = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, stderr  # one job failed
    statuses = {line["job_id"]: line["status"] for line in map(json.loads, stdout.splitlines())}
    assert statuses == {"quick": "succeeded", "crash": "failed", "hold": "succeeded"}
    assert refused(port)  # the endpoint went away with the command


def test_metrics_port_in_use_or_invalid_is_refused_before_anything_starts(
    tmp_path: Path, instance_id: str, test_image: str, docker_client: docker.DockerClient
) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"id": "never", "type": "cli-test"})
    args = ["run", str(jobs), "--image", test_image, "--instance", instance_id]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = dockyard_cli(*args, "--metrics-port", str(port))
    assert busy.returncode == 2, busy.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    for bad in ("0", "70000", "http"):
        invalid = dockyard_cli(*args, "--metrics-port", bad)
        assert invalid.returncode == 2, invalid.stderr
        assert "--metrics-port" in invalid.stderr
    labels = {"label": f"cascade.router.instance={instance_id}"}
    assert docker_client.containers.list(all=True, filters=labels) == []


# --------------------------------------------------------------------------- router example


def test_router_example_serves_metrics(
    redis_url: str,
    instance_id: str,
    test_image: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    env: dict[str, Any] = dict(run_env())
    env.update(
        CASCADE_ROUTER_INSTANCE=instance_id,
        WORKER_IMAGE=test_image,
        MAX_WORKERS="2",
        DOCKYARD_METRICS_PORT=str(port),
    )
    env.pop("SENTRY_DSN", None)
    assert ROUTER.exists()
    router = RouterProcess(env, redis_url, tmp_path / "router.log")
    client = redis.Redis.from_url(redis_url)
    try:
        push_job(client, "r-ok", ["true"])
        push_job(client, "r-fail", ["sh", "-c", "exit 4"])
        got = scrape_until(
            f"http://127.0.0.1:{port}/metrics",
            "both outcomes",
            lambda s: (
                outcomes(s, "succeeded", "completed") == 1
                and outcomes(s, "failed", "exit_error") == 1
            ),
        )
        assert got.value("dockyard_worker_slots_limit") == 2
        assert got.value("dockyard_workers_started_total") == 2
        assert got.value("dockyard_job_duration_seconds_count", {"status": "failed"}) == 1
        assert router.stop() == 0, router.output()
    finally:
        router.kill()
        client.close()
    assert "metrics at http://127.0.0.1:" in router.output()

"""The `dockyard` command and a job's output, on a real engine: `run --logs DIR` files,
`run -v` live lines, `dockyard logs [--follow]` and its refusal of an unknown job id.

Like test_cli.py, the command runs as a subprocess with `--instance <instance_id>`, so the
fixture's leak check covers every container it starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from dockyard import ContainerManager, WorkerJob
from dockyard._cli._output import log_file_stem
from support.cli import dockyard_cli, run_env, run_jobs, write_jobs

SECRET = "cli-output-secret-7f3e"
WAIT_S = 120.0


def job(job_id: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "type": "cli-test", "command": ["sh", "-c", script], **extra}


def numbered(count: int, pause: str = "") -> str:
    """Prints `out N` on stdout and `err N` on stderr for N in 1..count."""
    return (
        f'i=1; while [ $i -le {count} ]; do echo "out $i"; echo "err $i" >&2; {pause}'
        "i=$((i+1)); done"
    )


def test_logs_dir_gets_every_line_of_each_stream_masked_under_a_safe_name(
    tmp_path, instance_id, test_image
):
    odd_id = "../team a/build:42"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        job("plain", numbered(3000)),
        job(
            odd_id,
            f'{numbered(50)}; echo "token {SECRET}"',
            data={"token": SECRET},
        ),
        job("quiet", "true"),
    )
    logs = tmp_path / "logs"

    result = run_jobs(jobs, test_image, instance_id, "--logs", str(logs), "--json")

    assert result.returncode == 0, result.stderr
    plain_out = (logs / "plain.stdout.log").read_text().splitlines()
    plain_err = (logs / "plain.stderr.log").read_text().splitlines()
    assert plain_out == [f"out {i}" for i in range(1, 3001)]
    assert plain_err == [f"err {i}" for i in range(1, 3001)]
    stem = log_file_stem(odd_id)
    assert "/" not in stem and not stem.startswith(".")
    odd_out = (logs / f"{stem}.stdout.log").read_text().splitlines()
    assert odd_out == [*(f"out {i}" for i in range(1, 51)), "token ***"]
    # Nothing but these files: the odd id made no directories, the quiet job no file.
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        [
            "plain.stdout.log",
            "plain.stderr.log",
            f"{stem}.stdout.log",
            f"{stem}.stderr.log",
        ]
    )
    assert SECRET not in "".join(p.read_text() for p in logs.iterdir())
    # The --json summary carries each job's tail: 50 of its lines, masked. Which ones
    # depends on how the engine interleaved the two streams (it may send a whole run of
    # one stream's lines before the other's).
    tails = {r["job_id"]: r["log_tail"] for r in map(json.loads, result.stdout.splitlines())}
    odd_err = (logs / f"{stem}.stderr.log").read_text().splitlines()
    assert len(tails[odd_id]) == 50 and set(tails[odd_id]) <= {*odd_out, *odd_err}
    assert len(tails["plain"]) == 50 and set(tails["plain"]) <= {*plain_out, *plain_err}
    assert tails["quiet"] == []


def test_verbose_prints_every_line_live_prefixed_with_its_job_id(tmp_path, instance_id, test_image):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        job("alpha", numbered(200)),
        job("b", numbered(200)),
        job("secretive", f"echo {SECRET}; printf 'no newline at the end'", data={"k": SECRET}),
    )

    result = run_jobs(jobs, test_image, instance_id, "-v", "--json", "--progress", "plain")

    assert result.returncode == 0, result.stderr
    # stdout stays the JSON Lines summary: the live lines go to stderr.
    assert [json.loads(line)["job_id"] for line in result.stdout.splitlines()] == [
        "alpha",
        "b",
        "secretive",
    ]
    width = len("secretive")
    live = [line for line in result.stderr.splitlines() if " | " in line]
    for job_id in ("alpha", "b"):
        mine = [line for line in live if line.startswith(f"{job_id:<{width}} | ")]
        body = [line.split(" | ", 1)[1] for line in mine]
        assert [x for x in body if x.startswith("out")] == [f"out {i}" for i in range(1, 201)]
        assert [x for x in body if x.startswith("err")] == [f"err {i}" for i in range(1, 201)]
    # Whole lines only: every live line is one of the lines a job printed.
    for line in live:
        prefix, body = line.split(" | ", 1)
        assert prefix.strip() in {"alpha", "b", "secretive"}, line
        assert body.split(" ")[0] in {"out", "err", "***", "no"}, line
    assert "secretive | ***" in result.stderr
    assert "secretive | no newline at the end" in result.stderr
    assert SECRET not in result.stderr and SECRET not in result.stdout
    # The tail logged at each exit is left out: its lines were printed live already.
    assert "worker output (last" not in result.stderr


def test_logs_follow_shows_the_lines_of_a_running_worker_masked(
    make_manager: Callable[..., ContainerManager], instance_id: str
) -> None:
    manager = make_manager()
    job_id = f"{instance_id}-follow"
    script = (
        f'echo "key {SECRET}"; '
        'i=1; while [ $i -le 30 ]; do echo "tick $i"; i=$((i+1)); sleep 0.2; done'
    )
    manager.spawn_worker(
        WorkerJob(job_id, "cli-test", {"key": SECRET}, command=["sh", "-c", script])
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dockyard._cli",
            "logs",
            job_id,
            "--follow",
            "--instance",
            instance_id,
        ],
        env=run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    running_at_tick_3: list[bool] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line.rstrip("\n"))
            if seen[-1] == "tick 3":
                running_at_tick_3.append(job_id in {w.job_id for w in manager.get_active_workers()})

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        outcome = manager.wait_for_worker(job_id, timeout=WAIT_S)
        reader.join(30)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert outcome.status == "succeeded", outcome
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    # Line 3 came while the worker still ran; --follow ended with the container.
    assert running_at_tick_3 == [True]
    assert seen == ["key ***", *(f"tick {i}" for i in range(1, 31))]


def test_logs_of_an_unknown_job_id_fail_clearly(instance_id):
    result = dockyard_cli("logs", "no-such-job", "--instance", instance_id)

    assert result.returncode == 1
    assert result.stdout == ""
    assert "no container of router instance" in result.stderr
    assert "'no-such-job'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_logs_of_a_stopped_container_print_its_output_and_end(
    docker_client: Any, instance_id: str, test_image: str
) -> None:
    # A container left behind by a router that stopped (not auto-removed), with the labels
    # dockyard gives its workers and a secret in its environment.
    container = docker_client.containers.run(
        test_image,
        ["sh", "-c", f"{numbered(5)}; echo $REDIS_URL"],
        detach=True,
        labels={
            "cascade.managed": "true",
            "cascade.router.instance": instance_id,
            "cascade.job.id": "left behind",
        },
        environment={"REDIS_URL": f"redis://:{SECRET}@redis:6379/0"},
        network_mode="none",
    )
    try:
        assert container.wait(timeout=WAIT_S)["StatusCode"] == 0

        result = dockyard_cli("logs", "left behind", "--instance", instance_id)
    finally:
        container.remove(force=True)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [*(f"out {i}" for i in range(1, 6)), "***"]
    assert result.stderr.splitlines() == [f"err {i}" for i in range(1, 6)]

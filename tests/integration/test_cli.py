"""The `dockyard` command, end to end on a real engine, plus its job-file parser.

The command runs as a subprocess (`main()` of `dockyard._cli` in a fresh interpreter, with
the dockyard under test first on PYTHONPATH), always with `--instance <instance_id>` so the
fixture's leak check covers every container it starts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from dockyard._cli._jobfile import load_jobs, parse_job
from dockyard._errors import InvalidJobError
from dockyard._job_data import JOB_DATA_INLINE_LIMIT
from support.cli import RUN_TIMEOUT_S, dockyard_cli, run_env, run_jobs, write_jobs


def job(job_id: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "type": "cli-test", "command": ["sh", "-c", script], **extra}


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def container_events(docker_client: Any, instance_id: str, since: float) -> list[dict[str, Any]]:
    """Every container event of this instance since `since` (a finite query, until now)."""
    return list(
        docker_client.events(
            since=int(since),
            until=int(time.time()) + 1,
            filters={"type": "container", "label": f"cascade.router.instance={instance_id}"},
            decode=True,
        )
    )


# ----------------------------------------------------------------------------- run


def test_run_reports_success_and_failure_and_exits_1(tmp_path, instance_id, test_image):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        job("good", "echo fine"),
        job("bad", "echo broken >&2; exit 3"),
    )
    result = run_jobs(jobs, test_image, instance_id)

    assert result.returncode == 1, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert rows["JOB"][:5] == ["JOB", "STATUS", "EXIT", "OOM", "DURATION"]
    assert rows["good"][1:3] == ["succeeded", "0"]
    assert rows["bad"][1:3] == ["failed", "3"]
    assert "2 jobs: 1 succeeded, 1 failed" in result.stdout
    # Progress went to stderr, one line per start and per finish.
    assert "started   good" in result.stderr
    assert "failed    bad" in result.stderr
    assert "Worker crashed with exit code 3" in result.stderr


def test_run_json_outcomes_cover_oom_and_timeout(tmp_path, instance_id, test_image):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        job("ok", 'test "$JOB_ID" = ok && test "$JOB_TYPE" = cli-test'),
        job("crash", "echo about to crash >&2; exit 5"),
        job("hog", "head -c 200m /dev/zero | tail"),
        {"id": "slow", "type": "cli-test", "command": ["sleep", "60"]},
    )
    result = run_jobs(
        jobs,
        test_image,
        instance_id,
        "--json",
        "--max-workers",
        "4",
        "--memory-mb",
        "32",
        # Long enough for the hog's OOM kill on a loaded machine, which is not a timeout.
        "--timeout",
        "8",
        "--stop-grace",
        "1",
        "--no-auto-remove",  # the engine may delete an auto-removed container before inspect
    )

    assert result.returncode == 1, result.stderr
    records = json_lines(result.stdout)  # only JSON on stdout, one object per job
    assert [r["job_id"] for r in records] == ["ok", "crash", "hog", "slow"]
    by_id = {r["job_id"]: r for r in records}
    assert by_id["ok"]["status"] == "succeeded" and by_id["ok"]["exit_code"] == 0
    assert by_id["crash"]["status"] == "failed" and by_id["crash"]["exit_code"] == 5
    assert by_id["hog"]["status"] == "failed"
    # The engine (20.10) now and then records a real OOM kill as OOMKilled=false; the flag
    # itself is proven with retries in test_core_integration. Here: it is carried through.
    assert by_id["hog"]["exit_code"] == 137
    assert by_id["hog"]["oom_killed"] is not None
    oom_text = "OOMKilled=true" if by_id["hog"]["oom_killed"] else "OOMKilled=false"
    assert oom_text in by_id["hog"]["description"]
    assert by_id["slow"]["status"] == "timed_out"
    assert by_id["slow"]["container_name"] == "cascade-worker-slow"
    assert by_id["crash"]["description"].startswith("Worker crashed with exit code 5")
    assert by_id["crash"]["log_tail"] == ["about to crash"]
    assert by_id["ok"]["log_tail"] == []


def test_run_all_succeeded_exits_0_and_snapshot_is_reused(
    tmp_path, instance_id, test_image, snapshot_image_prefix
):
    common = [
        "--image",
        test_image,
        "--instance",
        instance_id,
        "--snapshots",
        "--snapshot-prefix",
        snapshot_image_prefix,
        "--json",
    ]
    ids = {"projectId": "cli-project", "workItemId": "ITEM-7"}
    produce = write_jobs(tmp_path / "produce.jsonl", job("produce", "echo warm > /warm.txt", **ids))
    reuse = write_jobs(
        tmp_path / "reuse.jsonl",
        job("reuse", 'test "$CASCADE_SNAPSHOT_REUSE" = true && grep -q warm /warm.txt', **ids),
    )

    first = dockyard_cli("run", str(produce), *common)
    assert first.returncode == 0, first.stderr
    assert json_lines(first.stdout)[0]["status"] == "succeeded"

    second = dockyard_cli("run", str(reuse), *common)
    assert second.returncode == 0, second.stderr
    (record,) = json_lines(second.stdout)
    assert record["status"] == "succeeded"
    assert record["image"].startswith(snapshot_image_prefix)
    assert "warm start from" in second.stderr

    scope = ["--snapshot-prefix", snapshot_image_prefix, "--instance", instance_id]
    listed = dockyard_cli("snapshots", *scope)
    assert listed.returncode == 0, listed.stderr
    assert record["image"] in listed.stdout and "ITEM-7" in listed.stdout

    evicted = dockyard_cli("snapshots", "--evict", *scope, env=run_env(SNAPSHOT_MAX_COUNT="0"))
    assert evicted.returncode == 0, evicted.stderr
    assert f"removed {record['image']}" in evicted.stdout
    after = dockyard_cli("snapshots", *scope)
    assert "no snapshot images" in after.stdout


def test_run_works_without_rich(tmp_path, instance_id, test_image):
    jobs = write_jobs(tmp_path / "jobs.jsonl", job("plain", "true"))
    hide_rich = "import sys; sys.modules['rich'] = None"

    refused = run_jobs(
        jobs,
        test_image,
        instance_id,
        "--progress",
        "rich",
        prelude=hide_rich,
    )
    assert refused.returncode == 2
    assert "needs rich" in refused.stderr

    result = run_jobs(jobs, test_image, instance_id, prelude=hide_rich)
    assert result.returncode == 0, result.stderr
    assert "1 job: 1 succeeded" in result.stdout


def test_rich_progress_runs_off_a_terminal(tmp_path, instance_id, test_image):
    jobs = write_jobs(tmp_path / "jobs.jsonl", job("fancy", "true"), job("grumpy", "exit 1"))
    result = run_jobs(jobs, test_image, instance_id, "--progress", "rich")
    assert result.returncode == 1, result.stderr
    assert "✔ fancy" in result.stderr and "✖ grumpy" in result.stderr
    assert "2 jobs: 1 succeeded, 1 failed" in result.stdout


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("second_line", "problem"),
    [
        ('{"id": "b", "type": "t"', "invalid JSON"),
        ('{"id": "b"}', '"type" must be a non-empty string'),
        ('{"id": "b", "type": "t", "comand": ["true"]}', "unknown key 'comand'"),
        ('{"id": "a", "type": "t"}', "duplicate job id 'a' (first on line 1)"),
        ('["not", "an", "object"]', "must be a JSON object"),
    ],
)
def test_malformed_line_exits_2_and_starts_nothing(
    tmp_path, instance_id, test_image, docker_client, second_line, problem
):
    jobs = write_jobs(tmp_path / "jobs.jsonl", job("a", "true"), second_line)
    since = time.time()
    result = run_jobs(jobs, test_image, instance_id)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{jobs}:2:" in lines[0] and problem in lines[0]
    assert result.stdout == ""
    assert container_events(docker_client, instance_id, since) == []


def test_missing_image_exits_2_and_starts_nothing(tmp_path, instance_id, docker_client):
    jobs = write_jobs(tmp_path / "jobs.jsonl", job("a", "true"))
    image = f"dockyard-test-missing-{instance_id}:latest"
    since = time.time()
    result = run_jobs(jobs, image, instance_id)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and image in lines[0] and "not on the Docker engine" in lines[0]
    assert container_events(docker_client, instance_id, since) == []


def test_unreachable_engine_exits_2_with_one_line(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", job("a", "true"))
    env = run_env(DOCKER_HOST=f"unix://{tmp_path}/nonexistent.sock")
    for args in (["run", str(jobs), "--image", "busybox:latest"], ["ps"], ["reap"]):
        result = dockyard_cli(*args, "--instance", "dockyard-test-unreachable", env=env)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "unreachable" in lines[0] and "nonexistent.sock" in lines[0]


def test_bad_options_exit_2(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", job("a", "true"))
    for args, problem in (
        (["run", str(jobs)], "--image"),
        (["run", str(jobs), "--image", "x:1", "--max-workers", "0"], "--max-workers"),
        (["run", str(jobs), "--image", "Not An Image"], "worker_image"),
        (["run", str(tmp_path / "absent.jsonl"), "--image", "x:1"], "no such file"),
    ):
        result = dockyard_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert problem in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ----------------------------------------------------------------------------- Ctrl-C, ps, reap


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)
    return result


def test_ctrl_c_detaches_then_ps_and_reap_deal_with_the_orphan(
    tmp_path, instance_id, test_image, docker_client
):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "long", "type": "cli-test", "command": ["sleep", "300"]},
        job("later", "true"),
    )
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dockyard._cli",
                "run",
                str(jobs),
                "--image",
                test_image,
                "--instance",
                instance_id,
                "--max-workers",
                "1",
                "--timeout",
                "6",
                "--stop-grace",
                "1",
            ],
            env=run_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            _wait_for("the long job to start", lambda: "started   long" in stderr_path.read_text())
            proc.send_signal(signal.SIGINT)
            stdout, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = stderr_path.read_text()
    assert proc.returncode == 130, err
    assert "still running, detached: cascade-worker-long (job long)" in err
    rows = {line.split()[0]: line.split() for line in stdout.splitlines() if line.strip()}
    assert rows["long"][1] == "detached" and rows["later"][1] == "not_started"

    container = docker_client.containers.get("cascade-worker-long")
    assert container.status == "running"  # detached, not killed
    ps = dockyard_cli("ps", "--instance", instance_id)
    assert ps.returncode == 0, ps.stderr
    assert "cascade-worker-long" in ps.stdout and "running" in ps.stdout

    # Nobody tracks it any more: once past its deadline label, reap stops it.
    deadline = datetime.fromisoformat(container.labels["cascade.deadline"])
    time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + 0.5)
    reap = dockyard_cli("reap", "--instance", instance_id, "--stop-grace", "1")
    assert reap.returncode == 0, reap.stderr
    assert "cascade-worker-long  job long: stopped and removed" in reap.stdout
    after = dockyard_cli("ps", "--instance", instance_id)
    assert "no managed containers" in after.stdout


# ----------------------------------------------------------------------------- job files


def test_ctrl_c_twice_cancels_the_running_jobs(tmp_path, instance_id, test_image, docker_client):
    tag = uuid.uuid4().hex[:6]
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        # `sleep` as PID 1 ignores SIGTERM: the kill after the grace ends these.
        {"id": f"one-{tag}", "type": "cli-test", "command": ["sleep", "300"]},
        {"id": f"two-{tag}", "type": "cli-test", "command": ["sleep", "300"]},
        job(f"later-{tag}", "true"),
    )
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "dockyard._cli", "run", str(jobs), "--image", test_image,
                "--instance", instance_id, "--max-workers", "2", "--stop-grace", "1",
            ],
            env=run_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )  # fmt: skip
        try:
            _wait_for(
                "both long jobs to start",
                lambda: all(
                    f"started   {n}-{tag}" in stderr_path.read_text() for n in ("one", "two")
                ),
            )
            proc.send_signal(signal.SIGINT)
            _wait_for("the first Ctrl-C", lambda: "Ctrl-C again" in stderr_path.read_text())
            proc.send_signal(signal.SIGINT)
            started = time.monotonic()
            stdout, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
    err = stderr_path.read_text()
    assert proc.returncode == 130, err
    assert "interrupted; 2 running jobs cancelled" in err
    assert "detached" not in err.split("cancelling the running jobs")[-1]
    rows = {line.split()[0]: line.split() for line in stdout.splitlines() if line.strip()}
    assert rows[f"one-{tag}"][1] == "cancelled" and rows[f"two-{tag}"][1] == "cancelled"
    assert rows[f"later-{tag}"][1] == "not_started"
    assert "2 cancelled" in stdout
    assert took < 15, took  # one stop grace (1 s) and the engine's work, not a timeout
    left = docker_client.containers.list(
        all=True, filters={"label": f"cascade.router.instance={instance_id}"}
    )
    assert [c.name for c in left if tag in c.name] == []


def test_a_full_project_does_not_hold_up_the_batch(tmp_path, instance_id, test_image):
    tag = uuid.uuid4().hex[:6]
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        job(f"a1-{tag}", "sleep 4", projectId="A"),
        job(f"a2-{tag}", "true", projectId="A"),
        job(f"a3-{tag}", "true", projectId="A"),
        job(f"b1-{tag}", "true", projectId="B"),
    )
    result = run_jobs(
        jobs,
        test_image,
        instance_id,
        "--max-workers",
        "2",
        env=run_env(MAX_WORKERS_PER_PROJECT="1"),
    )
    assert result.returncode == 0, result.stderr
    words = [line.split() for line in result.stderr.splitlines()]
    names = [w[w.index("started") + 1] for w in words if "started" in w]
    assert len(names) == 4, result.stderr
    # b1 comes after A's three in the file, yet starts while a1 holds A's only slot.
    assert names.index(f"b1-{tag}") < names.index(f"a2-{tag}"), result.stderr


def test_parse_job_accepts_the_documented_shape():
    parsed = parse_job(
        json.dumps(
            {
                "id": 7,
                "type": "t",
                "data": {"k": [1]},
                "projectId": "p",
                "workItemId": 9,
                "agentType": "a",
                "command": ["sh", "-c", "true"],
                "priority": -2,
            }
        )
    )
    assert parsed.priority == -2
    assert parsed.id == "7" and parsed.work_item_id == "9" and parsed.project_id == "p"
    assert parsed.agent_type == "a" and list(parsed.command or []) == ["sh", "-c", "true"]
    assert parsed.data == {"k": [1]}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"id": true, "type": "t"}', '"id" must be a string or an integer'),
        ('{"id": 1.5, "type": "t"}', '"id" must be a string or an integer'),
        ('{"id": "", "type": "t"}', '"id" must not be empty'),
        ('{"type": "t"}', '"id" is missing'),
        ('{"id": "a", "type": "t", "data": [1]}', '"data" must be a JSON object'),
        ('{"id": "a", "type": "t", "command": "true"}', '"command" must be a non-empty list'),
        ('{"id": "a", "type": "t", "command": []}', '"command" must be a non-empty list'),
        ('{"id": "a", "type": "t", "priority": 1.5}', '"priority" must be an integer'),
        ('{"id": "a", "type": "t", "priority": true}', '"priority" must be an integer'),
        ('{"id": "a", "type": "t", "data": {"x": NaN}}', "NaN is not a JSON number"),
        ('{"id": "a\\u0000", "type": "t"}', "NUL"),
        ('{"id": "\\ud800", "type": "t"}', "not valid Unicode"),
    ],
)
def test_parse_job_names_the_problem(line, problem):
    with pytest.raises(InvalidJobError) as caught:
        parse_job(line)
    assert problem in str(caught.value)


def test_parse_job_refuses_data_too_large_to_pass_inline():
    big = json.dumps({"id": "a", "type": "t", "data": {"blob": "x" * JOB_DATA_INLINE_LIMIT}})
    with pytest.raises(InvalidJobError, match="passes job data inline"):
        parse_job(big)


def test_load_jobs_line_handling(tmp_path):
    path = tmp_path / "jobs.jsonl"
    # CRLF endings and blank lines are fine; U+2028 inside a string is not a line break.
    path.write_bytes(
        b'{"id": "a", "type": "t"}\r\n\r\n'
        b'{"id": "b", "type": "t", "data": {"s": "x\xe2\x80\xa8y"}}\n'
    )
    jobs = load_jobs(path)
    assert [j.id for j in jobs] == ["a", "b"]
    assert jobs[1].data == {"s": "x\u2028y"}

    path.write_text("\n  \n")
    with pytest.raises(Exception, match="no jobs"):
        load_jobs(path)

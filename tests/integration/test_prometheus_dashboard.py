"""The README's dashboard queries against a real Prometheus (Debian's `prometheus`) scraping
`dockyard run --metrics-port` every second on a real engine.

The batch (two slots): `hold` and `fail-late` start at once and wait for a file; `queued`
waits for a slot. Prometheus scrapes before anything has ended, then `fail-late` exits 3: the
failure-mix query must show it, which it can only when the outcome series existed (at zero)
before that first scrape. Everything listens on 127.0.0.1; every wait is bounded; both
processes are stopped at the end.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from support.cli import run_env, write_jobs
from support.hold import HOLD, let_go
from support.scrape import scrape_until
from support.servers import free_port, missing_tool, stop_process

WAIT_S = 60.0
SCRAPE_INTERVAL = "1s"

# The README's three queries (section "Metrics"), verbatim.
SATURATION = "sum(dockyard_workers_active) / sum(dockyard_worker_slots_limit)"
QUEUEING = "histogram_quantile(0.95, sum by (le) (rate(dockyard_slot_wait_seconds_bucket[5m])))"
FAILURE_MIX = 'sum by (reason) (rate(dockyard_worker_outcomes_total{status!="succeeded"}[5m])) * 60'
NOT_SUCCEEDED_REASONS = {
    "exit_error",
    "boot_failure",
    "exit_signal",
    "oom",
    "unknown",
    "timeout",
    "cancelled",
    "lost",
}


def release(client: docker.DockerClient, instance_id: str, job_id: str) -> None:
    """Let this instance's held job `job_id` go on (its wait loop sees /go)."""
    labels = [f"cascade.router.instance={instance_id}", f"cascade.job.id={job_id}"]
    (container,) = client.containers.list(filters={"label": labels})
    let_go(container)


def test_the_readme_queries_are_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for query in (SATURATION, QUEUEING, FAILURE_MIX):
        assert query in readme


class Prometheus:
    """A real Prometheus on 127.0.0.1 scraping one target every second."""

    def __init__(self, binary: str, target: str, directory: Path) -> None:
        self.port = free_port()
        config = directory / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n"
            "  - job_name: dockyard\n"
            "    static_configs:\n"
            f'      - targets: ["{target}"]\n'
        )
        self.log = directory / "prometheus.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def by_label(self, promql: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(promql)}

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def until(self, what: str, check: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + WAIT_S
        last: Any = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                last = check()
            except (urllib.error.URLError, ConnectionError) as err:
                last = err
            else:
                if last:
                    return last
            time.sleep(0.2)
        raise AssertionError(f"Prometheus never showed {what}; last: {last!r}")

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        missing_tool("prometheus is not installed", "Debian's prometheus")
    return binary


@pytest.fixture
def batch(
    tmp_path: Path, instance_id: str, test_image: str
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "hold", "type": "dash", "command": ["sh", "-c", HOLD]},
        {"id": "fail-late", "type": "dash", "command": ["sh", "-c", HOLD + "; exit 3"]},
        {"id": "queued", "type": "dash", "command": ["true"]},
    )
    port = free_port()
    code = "import sys\nfrom dockyard._cli import main\nsys.exit(main())"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-c", code, "run", str(jobs), "--image", test_image),
            *("--instance", instance_id, "--json", "--progress", "none", "--max-workers", "2"),
            *("--metrics-port", str(port)),
        ],
        env=run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_real_prometheus_sees_saturation_queueing_and_a_failure_after_its_first_scrape(
    batch: tuple[subprocess.Popen[str], int],
    prometheus_binary: str,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    instance_id: str,
) -> None:
    proc, port = batch
    scrape_until(
        f"http://127.0.0.1:{port}/metrics",
        "both slots busy",
        lambda s: s.value("dockyard_workers_active") == 2,
    )
    prometheus = Prometheus(prometheus_binary, f"127.0.0.1:{port}", tmp_path)
    try:
        prometheus.until("the target up", lambda: prometheus.scalar('up{job="dockyard"}') == 1)
        assert prometheus.until("saturation", lambda: prometheus.scalar(SATURATION)) == 1.0

        # Before any job ended, every failure reason is a series at zero (rate() has two
        # scrapes of it): not an empty result that a first increment would be lost in.
        before = prometheus.until(
            "the failure mix at zero", lambda: prometheus.by_label(FAILURE_MIX, "reason")
        )
        assert before == dict.fromkeys(NOT_SUCCEEDED_REASONS, 0.0)
        assert math.isnan(prometheus.scalar(QUEUEING) or math.nan)  # no slot wait yet

        release(docker_client, instance_id, "fail-late")  # exits 3 now, after Prometheus's scrapes
        after = prometheus.until(
            "the late failure in the failure mix",
            lambda: (
                (mix := prometheus.by_label(FAILURE_MIX, "reason")).get("exit_error", 0) > 0 and mix
            ),
        )
        assert {reason for reason, rate in after.items() if rate > 0} == {"exit_error"}
        assert set(after) == NOT_SUCCEEDED_REASONS

        # `queued` got the freed slot after waiting for it: the command waits 0.5 s at a time,
        # so its one observed wait is under that (a hand-over right at the edge: the next
        # bucket, 1 s).
        p95 = prometheus.until(
            "a slot wait in the queueing quantile",
            lambda: (q := prometheus.scalar(QUEUEING)) is not None and not math.isnan(q) and q,
        )
        assert 0 < p95 <= 1.0
        # Only `hold` still runs: one of the two slots.
        assert prometheus.until(
            "saturation at one half", lambda: prometheus.scalar(SATURATION) == 0.5
        )

        release(docker_client, instance_id, "hold")
        stdout, stderr = proc.communicate(timeout=WAIT_S)
    finally:
        prometheus.stop()
    assert proc.returncode == 1, stderr  # one job failed
    statuses = {line["job_id"]: line["status"] for line in map(json.loads, stdout.splitlines())}
    assert statuses == {"hold": "succeeded", "fail-late": "failed", "queued": "succeeded"}

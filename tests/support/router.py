"""The example router (`examples/router.py`) run as a host runs it, fed through Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parents[2]
ROUTER = REPO / "examples" / "router.py"
QUEUE, OUTCOMES, RUNNING = "dockyard:jobs", "dockyard:outcomes", "dockyard:running"
# Generous bounds that only keep a broken run from hanging; nothing here measures speed.
WAIT_S = 90.0


class RouterProcess:
    def __init__(self, env: dict[str, str], url: str, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROUTER), "--redis-url", url],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT_S)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def push_job(client: redis.Redis, job_id: str, command: list[str], **extra: Any) -> None:
    job = {"id": job_id, "type": "router-test", "command": command, **extra}
    client.rpush(QUEUE, json.dumps(job))

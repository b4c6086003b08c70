"""A host process whose manager delivers a worker's output to a file, until it is killed.

For tests/integration/test_orphans_adoption.py: a router that dies without a close (SIGKILL)
leaves only the marks written while its workers ran. Run as
``python -c "from support.output_host import main; main(URL, IMAGE, INSTANCE, JOB, COMMAND,
LINES)"`` with ``lib`` and ``tests`` on the path (`COMMAND` a JSON list): each line the
listener gets is appended to the file `LINES` as ``stream<TAB>line``, written through at
once so that a kill loses none of them. It prints ``spawned`` and waits to be killed.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from dockyard import (
    ActiveWorker,
    ContainerManager,
    RouterConfig,
    WorkerJob,
    WorkerLifecycleListener,
)


class LinesToFile(WorkerLifecycleListener):
    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1, encoding="utf-8")  # a line at a time

    def on_worker_output(self, worker: ActiveWorker, stream: str, line: str) -> None:
        self._file.write(f"{stream}\t{line}\n")


def main(redis_url: str, image: str, instance: str, job_id: str, command: str, lines: str) -> None:
    config = RouterConfig(
        worker_image=image,
        router_instance_id=instance,
        redis_url=redis_url,
        docker_network="none",
        worker_memory_mb=64,
        stop_grace_s=1,
    )
    manager = ContainerManager(config, listener=LinesToFile(Path(lines)))
    manager.spawn_worker(WorkerJob(id=job_id, type="t", command=json.loads(command)))
    print("spawned", flush=True)
    threading.Event().wait()  # until killed

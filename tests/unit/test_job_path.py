"""How many dockyard modules one job's path runs through, from `spawn_worker` to its outcome.

A worker's life spread over many modules is hard to follow and easy to break; this keeps the
path short. Every call into a dockyard module, on every thread the job uses (the caller,
the launch and wait pools, the exit stream, the timer), is recorded with a profiler; the
fake engine itself (`dockyard.testing`) is not dockyard's path.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import dockyard
from dockyard import ContainerManager, RouterConfig, WorkerJob
from dockyard.testing import DEFAULT_IMAGE, FakeDockerAPI, RecordingReporter

PACKAGE = Path(dockyard.__file__).parent
# The fake engine (`testing` and its `_fake_*` modules) is no part of dockyard's path; the
# fork guard is one comparison in front of each public method of the manager (`_fork`), no
# step of a worker's life.
NOT_THE_PATH = {"testing.py", "_fork.py"}
FAKE_ENGINE_PREFIX = "_fake_"
# Ten concerns (the facade, the launcher, jobs, environment, tracking, exit handling, the
# gateway and its events stream, loops, metrics), split into modules of one concern each,
# which adds seven: the job's names and labels, its spawn (settings, slot, launch config),
# its job data, its secrets, the listener, the registry, the slots. The driver interface
# and the Docker driver, between the core and the Docker client, add two. Plus one: the
# Docker mapping of the container settings (`_docker_settings`, every create's arguments);
# a job whose layers set no container control skips their checks and merge.
# The worker's output, read from before its start, adds three: its lines (frames, lines,
# masking), their delivery, tail and counts, and the hub that opens each worker's stream
# and owns the reader and delivery threads. What a launch does when a step fails
# (`_launch_failures`) is off this path. How a run ends is three concerns (the deadline
# kill, the exit wait, what follows the exit), and the events stream's reading is apart
# from the gateway's calls: three more; and Docker's time formats (`_times`, a leaf the
# events stream, the log reader and the driver share): one.
MAX_MODULES_DEFAULT_JOB = 20 + 3 + 3 + 1
# Plus the snapshot registry, the commit's mechanics, the gateway's image calls, the typed
# errors (looking up the previous snapshot of the work item answers 404 the first time), the
# flatten module's layer count that decides whether the commit is written flattened, and the
# retry policy of the container's removal (an auto-removed container needs none); the
# commit's scrub and check, and the retirement of the image it supersedes, are modules of
# their own: two more.
MAX_MODULES_SNAPSHOT_JOB = MAX_MODULES_DEFAULT_JOB + 8


@contextmanager
def modules_called() -> Iterator[set[str]]:
    """The dockyard modules (paths relative to the package) whose code runs inside."""
    seen: set[str] = set()
    recording = threading.Event()
    recording.set()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        # Threads started inside keep the hook: they stop recording when the block ends.
        if event == "call" and recording.is_set():
            path = Path(frame.f_code.co_filename)
            if path.is_relative_to(PACKAGE):
                seen.add(str(path.relative_to(PACKAGE)))

    hook: Callable[..., Any] = profile
    threading.setprofile(hook)
    sys.setprofile(hook)
    try:
        yield seen
    finally:
        recording.clear()
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        seen -= NOT_THE_PATH
        seen -= {name for name in seen if name.startswith(FAKE_ENGINE_PREFIX)}


def run_one_job(config: RouterConfig, job: WorkerJob) -> set[str]:
    api = FakeDockerAPI(images={DEFAULT_IMAGE})
    with ContainerManager(config, docker_client=api, reporter=RecordingReporter()) as manager:
        with modules_called() as seen:
            worker = manager.spawn_worker(job)
            api.exit(worker.container_id, 0)
            outcome = manager.wait_for_worker(job.id or "", timeout=10)
        assert outcome.status == "succeeded"
    return seen


def test_a_job_runs_through_at_most_twenty_modules() -> None:
    config = RouterConfig(worker_image=DEFAULT_IMAGE, router_instance_id="path")
    seen = run_one_job(config, WorkerJob("job-1", "build", {"x": 1}))

    assert {"container_manager.py", "worker_container_launcher.py", "_docker.py"} <= seen
    assert len(seen) <= MAX_MODULES_DEFAULT_JOB, sorted(seen)


def test_a_snapshot_job_adds_only_the_snapshot_modules() -> None:
    config = RouterConfig(
        worker_image=DEFAULT_IMAGE, router_instance_id="path", snapshot_enabled=True
    )
    job = WorkerJob("job-1", "trello", {"projectId": "p", "workItemId": "c"})
    seen = run_one_job(config, job)

    assert {"_snapshots.py", "_snapshot_registry.py"} <= seen  # it did commit a snapshot
    assert len(seen) <= MAX_MODULES_SNAPSHOT_JOB, sorted(seen)

"""`dockyard run --logs DIR` and `-v`: each job's output lines (masked by the manager before
they arrive) written to files of its own and printed live, prefixed with the job id."""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING, Literal, TextIO
from urllib.parse import quote

from ._batch import BatchTracker

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from .._jobs import WorkerJob
    from .._models import ActiveWorker, WorkerOutcome

# A file name stays well under the usual 255-byte limit, with room for `.stderr.log`.
_MAX_STEM = 200
_HASH_CHARS = 16
# Job ids wider than this do not widen the live prefix column further.
_MAX_PREFIX_WIDTH = 24


def log_file_stem(job_id: str) -> str:
    """A job id as a safe file name stem: percent-encoded UTF-8 (`quote(job_id, safe="")`:
    letters, digits and `_.-~` stay, everything else, `/` too, becomes `%XX`), a leading
    `.` as `%2E`; a stem over 200 characters is cut to 183 and ends in `~` and the first
    16 hex digits of the job id's SHA-256."""
    stem = quote(job_id, safe="")
    if stem.startswith("."):
        stem = "%2E" + stem[1:]
    if not stem:
        stem = "%"  # an empty id (never valid for a job, but a name all the same)
    if len(stem) > _MAX_STEM:
        digest = hashlib.sha256(job_id.encode("utf-8")).hexdigest()[:_HASH_CHARS]
        stem = stem[: _MAX_STEM - _HASH_CHARS - 1] + "~" + digest
    return stem


class LogFiles:
    """`<stem>.stdout.log` and `<stem>.stderr.log` per job in one directory, each created
    when its stream's first line arrives and closed at the job's outcome. A line that
    reaches the listener after the outcome is appended (the file is reopened)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._open: dict[tuple[str, str], TextIO] = {}
        self._created: set[tuple[str, str]] = set()

    def path(self, job_id: str, stream: str) -> Path:
        return self.directory / f"{log_file_stem(job_id)}.{stream}.log"

    def write(self, job_id: str, stream: str, line: str) -> None:
        key = (job_id, stream)
        out = self._open.get(key)
        if out is None:
            # A file of an earlier run is replaced; one closed at the outcome appended to.
            mode: Literal["a", "w"] = "a" if key in self._created else "w"
            # Line-buffered: a file can be followed (`tail -f`) while the job runs.
            out = open(  # noqa: SIM115 (closed at the outcome, or by close_all)
                self.path(job_id, stream), mode, encoding="utf-8", errors="replace", buffering=1
            )
            self._open[key] = out
            self._created.add(key)
        out.write(line + "\n")

    def close(self, job_id: str) -> None:
        for stream in ("stdout", "stderr"):
            out = self._open.pop((job_id, stream), None)
            if out is not None:
                out.close()

    def close_all(self) -> None:
        for job_id, _ in list(self._open):
            self.close(job_id)


class OutputTracker(BatchTracker):
    """The batch tracker that also takes the jobs' output lines: into `files` and, through
    `echo`, live as `job-id | line`. Used only when one of them is asked for: a listener
    that takes lines makes the manager queue them.

    Each line is written whole, under one lock, so lines of different jobs never mix.
    """

    def __init__(
        self,
        jobs: Sequence[WorkerJob],
        *,
        files: LogFiles | None,
        echo: Callable[[str], None] | None,
    ) -> None:
        super().__init__(jobs)
        self._files = files
        self._echo = echo
        self._lock = threading.Lock()
        ids = [job.id for job in jobs if job.id is not None]
        self._width = min(_MAX_PREFIX_WIDTH, max((len(i) for i in ids), default=0))

    def on_worker_output(self, worker: ActiveWorker, stream: str, line: str) -> None:
        with self._lock:
            if self._files is not None:
                self._files.write(worker.job_id, stream, line)
            if self._echo is not None:
                self._echo(f"{worker.job_id:<{self._width}} | {line}")

    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        if self._files is not None:
            with self._lock:
                self._files.close(worker.job_id)
        super().on_worker_finished(worker, outcome)

    def close(self) -> None:
        """After the manager closed: no line comes any more."""
        if self._files is not None:
            with self._lock:
                self._files.close_all()

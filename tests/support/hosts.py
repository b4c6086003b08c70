"""The host's side: a fixed project directory, a job-data store, what dockyard logs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from dockyard import ActiveWorker, ProjectConfig


class StaticProjects:
    """A project directory holding exactly the projects it was given."""

    def __init__(self, *projects: ProjectConfig) -> None:
        self.projects = list(projects)

    def list_projects(self) -> list[ProjectConfig]:
        return list(self.projects)

    def find_project_by_repo(self, repo_full_name: str) -> ProjectConfig | None:
        return next((p for p in self.projects if p.repo_full_name == repo_full_name), None)


class RecordingStore:
    """A job-data store that keeps the ids it was given and answers ``jobdata:<id>``."""

    def __init__(self) -> None:
        self.puts: list[str] = []

    def put(self, job_id: str, payload: bytes) -> str:
        self.puts.append(job_id)
        return f"jobdata:{job_id}"


def snapshot_worker() -> ActiveWorker:
    """A snapshot-enabled worker record for project ``p``, work item ``w`` (no container)."""
    now = datetime.now(UTC)
    return ActiveWorker(
        job_id="j",
        container_id="c" * 64,
        container_name="n",
        image="base",
        started_at=now,
        deadline=now,
        project_id="p",
        work_item_id="w",
        job_type="trello",
        snapshot_enabled=True,
    )


class LogCapture(logging.Handler):
    """Keeps every record a ``dockyard`` logger emits, at any level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[str]:
        """Everything a formatter or a structured log shipper could see of each record."""
        formatter = logging.Formatter()
        out = []
        for record in list(self.records):
            parts = [record.getMessage()]
            parts += [f"{key}={value!r}" for key, value in vars(record).items()]
            if record.exc_info:
                parts.append(formatter.formatException(record.exc_info))
            if record.stack_info:
                parts.append(record.stack_info)
            out.append("\n".join(parts))
        return out

"""`dockyard run --logs` file names and files, and the `-v` line prefix, without an engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import pytest

from dockyard._cli._output import LogFiles, OutputTracker, log_file_stem
from dockyard._jobs import WorkerJob
from dockyard._models import ActiveWorker


@pytest.mark.parametrize(
    ("job_id", "stem"),
    [
        ("build-42", "build-42"),
        ("a/b", "a%2Fb"),
        ("..", "%2E."),
        (".hidden", "%2Ehidden"),
        ("x y:z", "x%20y%3Az"),
        ("ünï", "%C3%BCn%C3%AF"),
    ],
)
def test_a_job_id_maps_to_a_safe_reversible_stem(job_id: str, stem: str) -> None:
    assert log_file_stem(job_id) == stem
    assert unquote(stem) == job_id
    assert "/" not in stem and "\x00" not in stem


def test_a_long_job_id_is_cut_and_told_apart_by_its_hash() -> None:
    one, two = "j" * 300 + "1", "j" * 300 + "2"
    assert len(log_file_stem(one)) == 200
    assert log_file_stem(one) != log_file_stem(two)
    assert log_file_stem(one).startswith("j" * 183 + "~")


def test_files_are_created_per_stream_closed_at_the_outcome_and_appended_after(
    tmp_path: Path,
) -> None:
    files = LogFiles(tmp_path)
    (tmp_path / "a%2Fb.stdout.log").write_text("an earlier run\n")
    files.write("a/b", "stdout", "one")
    files.write("a/b", "stderr", "two")
    # Line-buffered: readable while the job runs.
    assert (tmp_path / "a%2Fb.stdout.log").read_text() == "one\n"
    files.close("a/b")
    files.write("a/b", "stdout", "late")  # after the outcome: appended
    files.close_all()
    assert (tmp_path / "a%2Fb.stdout.log").read_text() == "one\nlate\n"
    assert (tmp_path / "a%2Fb.stderr.log").read_text() == "two\n"


def worker(job_id: str) -> ActiveWorker:
    now = datetime.now(UTC)
    return ActiveWorker(
        job_id=job_id,
        container_id="c" * 64,
        container_name=f"cascade-worker-{job_id}",
        image="img",
        started_at=now,
        deadline=now + timedelta(minutes=1),
    )


def test_live_lines_are_prefixed_with_the_padded_job_id_and_written_to_files(
    tmp_path: Path,
) -> None:
    jobs = [WorkerJob("a", "t", {}), WorkerJob("longer", "t", {})]
    echoed: list[str] = []
    tracker = OutputTracker(jobs, files=LogFiles(tmp_path), echo=echoed.append)
    tracker.on_worker_output(worker("a"), "stdout", "hello")
    tracker.on_worker_output(worker("longer"), "stderr", "there")
    tracker.close()
    assert echoed == ["a      | hello", "longer | there"]
    assert (tmp_path / "a.stdout.log").read_text() == "hello\n"
    assert (tmp_path / "longer.stderr.log").read_text() == "there\n"

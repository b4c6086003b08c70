"""A load run under injected faults (the engine's and the swarm's): its jobs, its projects,
and the check that each job ended once."""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

from dockyard import ProjectConfig, WorkerJob, WorkerOutcome
from faultproxy import FaultProxy, FaultRule
from support.listeners import ListenerRecorder

LOAD_TIMEOUT_EVERY = 10  # every tenth job overruns its project's 1 s watchdog
LOAD_SLOW_PROJECT = ProjectConfig(id="slow", watchdog_timeout_s=1.0)
LOAD_QUICK = ["sh", "-c", "sleep 0.$((RANDOM % 5)); exit $((RANDOM % 2))"]
LOAD_OVERRUN = ["sh", "-c", "trap 'exit 143' TERM; sleep 60 & wait"]


class LoadProjects:
    """Projects of a load run: only the slow one its overrunning jobs belong to."""

    def list_projects(self) -> Sequence[ProjectConfig]:
        return [LOAD_SLOW_PROJECT]

    def find_project_by_repo(self, repo_full_name: str) -> ProjectConfig | None:
        return None


LoadResult = WorkerOutcome | BaseException


def split_load_results(
    results: dict[str, LoadResult],
) -> tuple[dict[str, WorkerOutcome], dict[str, BaseException]]:
    """A load run's results as (outcomes, spawn errors), each by job id."""
    outcomes = {j: r for j, r in results.items() if isinstance(r, WorkerOutcome)}
    errors = {j: r for j, r in results.items() if not isinstance(r, WorkerOutcome)}
    return outcomes, errors


def assert_each_job_ended_once(
    recorder: ListenerRecorder,
    outcomes: dict[str, WorkerOutcome],
    errors: dict[str, BaseException],
    typed_errors: tuple[type[BaseException], ...],
    *,
    failed_exit_code_known: bool,
) -> None:
    """A started job was started once and got one outcome, the one its kind allows (ids
    ending in 9 overrun); a refused job raised a typed error and never started."""
    with recorder.lock:
        started = collections.Counter(recorder.started)
        finished: dict[str, list[WorkerOutcome]] = collections.defaultdict(list)
        for job_id, outcome in recorder.finished:
            finished[job_id].append(outcome)
    for job_id, outcome in outcomes.items():
        assert started.get(job_id) == 1, job_id
        assert finished.get(job_id) == [outcome], f"{job_id}: {finished.get(job_id)}"
        overrun = job_id.endswith("9")
        if outcome.status == "succeeded":
            assert outcome.exit_code == 0 and not overrun, outcome
        elif outcome.status == "failed" and failed_exit_code_known:
            assert outcome.exit_code not in (None, 0) and not overrun, outcome
        elif outcome.status == "timed_out":
            assert overrun, outcome
    for job_id, err in errors.items():
        assert isinstance(err, typed_errors), f"{job_id}: {err!r}"
        assert job_id not in started and job_id not in finished, job_id


def load_job(prefix: str, index: int) -> WorkerJob:
    """The load run's job ``index``: every tenth (ids ending in 9) overruns its watchdog."""
    overrun = index % LOAD_TIMEOUT_EVERY == LOAD_TIMEOUT_EVERY - 1
    return WorkerJob(
        id=f"{prefix}-{index:03d}",
        type="load",
        project_id=LOAD_SLOW_PROJECT.id if overrun else None,
        command=LOAD_OVERRUN if overrun else LOAD_QUICK,
    )


def add_load_faults(
    proxy: FaultProxy,
    faults: Sequence[tuple[str, float, float]],
    match: Callable[[str, str], bool],
    message: str,
) -> list[FaultRule]:
    """One random 500/cut rule per ``(action, probability, delay_s)``, on every matching call."""
    return [
        proxy.add_rule(
            FaultRule(
                op="any",
                action=action,
                status=500,
                message=message,
                delay_s=delay_s,
                times=None,
                match=match,
                probability=probability,
            )
        )
        for action, probability, delay_s in faults
    ]

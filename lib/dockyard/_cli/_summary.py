"""The results of `dockyard run` on stdout: the summary table and tally line, or one JSON
object per job. The rich table is in `_rich`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TextIO

from ._batch import FINAL, JobState, status_counts, status_label
from ._format import count_of, print_plain_table

if TYPE_CHECKING:
    from collections.abc import Sequence

HEADERS = ["JOB", "STATUS", "EXIT", "OOM", "DURATION", "NOTE"]


def summary_rows(states: Sequence[JobState]) -> list[list[str]]:
    """A row of text per job, in `HEADERS` order."""
    rows = []
    for state in states:
        outcome = state.outcome
        exit_code = "-" if outcome is None or outcome.exit_code is None else str(outcome.exit_code)
        oom = "-"
        if outcome is not None and outcome.oom_killed is not None:
            oom = "yes" if outcome.oom_killed else "no"
        note = (outcome.exit_reason or outcome.error or "") if outcome is not None else ""
        if state.status == "error":
            note = state.error or ""
        elif state.status == "detached" and state.worker is not None:
            note = f"still running as {state.worker.container_name}"
        rows.append([state.job_id, state.status, exit_code, oom, state.duration_text, note])
    return rows


def tally_line(states: Sequence[JobState]) -> str:
    """`3 jobs: 2 succeeded, 1 failed (1 OOM-killed)`."""
    counts = status_counts(states)
    ooms = sum(1 for s in states if s.outcome is not None and s.outcome.oom_killed)
    parts = [
        f"{counts[status]} {status_label(status)}"
        for status in (*FINAL, "detached", "not_started")
        if counts[status]
    ]
    text = f"{count_of(len(states), 'job')}: " + ", ".join(parts)
    if ooms:
        text += f" ({ooms} OOM-killed)"
    return text


def print_plain_summary(states: Sequence[JobState], out: TextIO) -> None:
    print_plain_table(HEADERS, summary_rows(states), out)
    print(tally_line(states), file=out)


def print_json_lines(states: Sequence[JobState], out: TextIO) -> None:
    """One JSON object per job, in file order (JSON Lines)."""
    for state in states:
        print(json.dumps(_record(state), ensure_ascii=False), file=out)


def _record(state: JobState) -> dict[str, Any]:
    outcome = state.outcome
    return {
        "job_id": state.job_id,
        "status": state.status,
        "exit_code": outcome.exit_code if outcome else None,
        "oom_killed": outcome.oom_killed if outcome else None,
        "exit_reason": outcome.exit_reason if outcome else None,
        "duration_s": outcome.duration_s if outcome else None,
        "wall_s": _round(state.wall_s) if state.ended is not None else None,
        "error": (outcome.error if outcome else None) or state.error,
        "container_name": state.worker.container_name if state.worker else None,
        "image": state.worker.image if state.worker else None,
        "description": outcome.describe() if outcome else state.error,
        "log_tail": list(outcome.log_tail) if outcome else [],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)

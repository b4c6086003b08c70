"""Everything drawn with rich (the optional extra `dockyard[cli]`): the live progress view
and the summary table. Importing this module fails without rich; `_run` falls back to the
plain output then."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._batch import FINAL, BatchTracker, JobEvent, JobState, status_counts, status_label
from ._format import fmt_s
from ._logging import FieldsFormatter
from ._progress import JobLines
from ._summary import HEADERS, summary_rows, tally_line

if TYPE_CHECKING:
    import logging
    from collections.abc import Iterator, Sequence

_STYLE = {
    "queued": "dim",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "timed_out": "yellow",
    "cancelled": "yellow",
    "lost": "magenta",
    "error": "red",
    "not_started": "dim",
    "detached": "yellow",
}
_SYMBOL = {
    "running": "▶",
    "succeeded": "✔",
    "failed": "✖",
    "timed_out": "⏱",
    "cancelled": "⊘",
    "lost": "?",
    "error": "!",
    "not_started": "·",
    "detached": "↷",
}
# The live view lists at most this many running jobs, then a "… and N more" row.
_RUNNING_ROWS = 15


class RichDisplay(JobLines):
    """Live progress on a terminal: counts, a bar, the running jobs; finished jobs above it."""

    def __init__(self, snapshot_prefix: str, title: str) -> None:
        super().__init__(snapshot_prefix)
        self._console = Console(stderr=True)
        self._title = title
        self._tracker: BatchTracker | None = None

    @contextmanager
    def running(self, tracker: BatchTracker) -> Iterator[None]:
        self._tracker = tracker
        self._align(tracker)
        # Not redirecting stdout/stderr: everything is printed through this console.
        with Live(
            console=self._console,
            get_renderable=self._render,
            refresh_per_second=8,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        ):
            yield

    def events(self, events: Sequence[JobEvent]) -> None:
        for event in events:
            if event.status == "running":
                continue  # the live table shows running jobs
            style = _STYLE.get(event.status, "")
            line = Text()
            line.append(f"{_SYMBOL.get(event.status, ' ')} ", style=style)
            line.append(event.state.job_id.ljust(self._width), style="bold")
            line.append(f"  {status_label(event.status):<9}", style=style)
            detail = self._detail(event)
            if detail:
                line.append(f"  {detail}", style="dim")
            self._console.print(line)

    def message(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False)

    def log_handler(self) -> logging.Handler:
        # Through the live console, so log lines print above the view instead of tearing it.
        handler = RichHandler(console=self._console, show_time=False, show_path=False)
        handler.setFormatter(FieldsFormatter("%(name)s: %(message)s"))
        return handler

    def _render(self) -> RenderableType:
        tracker = self._tracker
        if tracker is None:
            return Text("")
        states = tracker.states
        counts = status_counts(states)
        done = sum(counts[status] for status in FINAL)
        head = Text()
        head.append(self._title, style="bold")
        head.append(f"  {fmt_s(self._elapsed_s())}", style="dim")
        tally = Text()
        for status in ("running", *FINAL, "queued"):
            if counts[status] or status in ("running", "succeeded", "failed", "timed_out"):
                symbol = _SYMBOL.get(status, "…")
                tally.append(
                    f"{symbol} {counts[status]} {status_label(status)}   ", style=_STYLE[status]
                )
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(1, len(states)), completed=done, width=40),
            Text(f"{done}/{len(states)} done"),
        )
        parts: list[RenderableType] = [head, tally, bar]
        running = [s for s in states if s.status == "running" and s.worker is not None]
        if running:
            parts.append(_running_table(running))
        return Group(*parts)


def _running_table(running: Sequence[JobState]) -> Table:
    table = Table(box=None, padding=(0, 2), show_edge=False, header_style="dim")
    table.add_column("running")
    table.add_column("container")
    table.add_column("for", justify="right")
    table.add_column("deadline in", justify="right")
    now = datetime.now(UTC)
    for state in running[:_RUNNING_ROWS]:
        worker = state.worker
        assert worker is not None
        left = (worker.deadline - now).total_seconds()
        table.add_row(
            Text(state.job_id, style="cyan"),
            worker.container_name,
            fmt_s(state.wall_s),
            fmt_s(max(0.0, left)),
        )
    if len(running) > _RUNNING_ROWS:
        table.add_row(Text(f"… and {len(running) - _RUNNING_ROWS} more", style="dim"), "", "", "")
    return table


def print_rich_summary(states: Sequence[JobState], out: TextIO) -> None:
    """The summary as a rich table (for a terminal), then the tally line."""
    rows = summary_rows(states)
    console = Console(file=out)
    table = Table(header_style="bold")
    with_note = any(row[5] for row in rows)
    for header in HEADERS if with_note else HEADERS[:-1]:
        justify: Literal["left", "right"] = "right" if header in ("EXIT", "DURATION") else "left"
        table.add_column(header, justify=justify, overflow="fold")
    for row in rows:
        status = row[1]
        styled = [Text(row[0]), Text(status, style=_STYLE.get(status, ""))]
        styled += [Text(cell) for cell in row[2:5]]
        if with_note:
            styled.append(Text(row[5], style="dim"))
        table.add_row(*styled)
    console.print(table)
    console.print(tally_line(states))

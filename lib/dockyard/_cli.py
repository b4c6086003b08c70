"""The `dockyard` command: run a batch of jobs as containers, plus everyday operator commands.

    dockyard run JOBS.jsonl --image IMAGE [...]   a container per job line, live progress and
                                                   a summary
    dockyard ps                                   this instance's managed containers
    dockyard reap                                 one orphan scan
    dockyard snapshots [--evict]                  snapshot images; --evict cleans them up

Exit status: 0 every job succeeded (or the command did its job), 1 a job did not succeed,
2 nothing was started (bad input or options, engine unreachable, image missing),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM); both detach from running jobs.

Progress goes to stderr (rich when installed and stderr is a terminal, plain lines
otherwise); results go to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NoReturn, TextIO

from ._config import RouterConfig
from ._docker import DockerGateway, is_not_found
from ._environment import JOB_DATA_INLINE_LIMIT
from ._errors import (
    ConfigError,
    DockerUnavailableError,
    InvalidJobError,
    NoWorkerSlotError,
)
from ._jobs import WorkerJob, resolve_job_fields
from ._models import ActiveWorker, WorkerLifecycleListener, WorkerOutcome
from ._naming import LabelSchema, parse_deadline
from ._snapshot_registry import SnapshotRegistry
from .container_manager import ContainerManager

try:  # rich is the optional extra dockyard[cli]; without it output is plain text
    from rich.console import Console, Group, RenderableType
    from rich.live import Live
    from rich.logging import RichHandler
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    HAVE_RICH = True
except ImportError:  # the CLI works without it: plain progress and tables
    HAVE_RICH = False

__all__ = ["main"]

log = logging.getLogger("dockyard.cli")

EXIT_OK = 0
EXIT_JOBS_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

# A spawn waits this long for a slot before checking for Ctrl-C and queueing again.
_SLOT_POLL_S = 0.5
_REFRESH_S = 0.1

JobStatus = Literal[
    "queued",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "lost",
    "error",
    "not_started",
    "detached",
]
_FINAL: frozenset[str] = frozenset({"succeeded", "failed", "timed_out", "lost", "error"})
_STYLE = {
    "queued": "dim",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "timed_out": "yellow",
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
    "lost": "?",
    "error": "!",
    "not_started": "·",
    "detached": "↷",
}


class UsageError(Exception):
    """Something to say on one stderr line before exiting with status 2; nothing was started."""


# ----------------------------------------------------------------------------- job files

_JOB_KEYS = ("id", "type", "data", "projectId", "workItemId", "agentType", "command")


def load_jobs(path: Path) -> list[WorkerJob]:
    """Read and validate every line of a JSONL job file; `UsageError` names file:line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise UsageError(f"{path}: {err.strerror or err}") from None
    jobs: list[WorkerJob] = []
    first_line: dict[str, int] = {}
    # Split on newlines only: str.splitlines() would also split inside JSON strings that
    # legitimately hold U+2028 and friends.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        try:
            job = parse_job(line)
        except ValueError as err:
            raise UsageError(f"{path}:{number}: {err}") from None
        assert job.id is not None  # parse_job requires it
        if job.id in first_line:
            raise UsageError(
                f"{path}:{number}: duplicate job id {job.id!r} (first on line {first_line[job.id]})"
            )
        first_line[job.id] = number
        jobs.append(job)
    if not jobs:
        raise UsageError(f"{path}: no jobs in the file")
    return jobs


def parse_job(line: str) -> WorkerJob:
    """One job line: `{"id", "type", "data"?, "projectId"?, "workItemId"?, "agentType"?,
    "command"?}`. Raises `InvalidJobError` (a `ValueError`) naming the problem."""
    try:
        obj = json.loads(line, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise InvalidJobError(f"invalid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(obj, dict):
        raise InvalidJobError(f"a job must be a JSON object, got {_json_type(obj)}")
    unknown = [key for key in obj if key not in _JOB_KEYS]
    if unknown:
        raise InvalidJobError(f"unknown key {unknown[0]!r} (a job has: {', '.join(_JOB_KEYS)})")
    job_id = _id_value(obj, "id")
    if job_id is None:
        raise InvalidJobError('"id" is missing')
    job_type = obj.get("type")
    if not isinstance(job_type, str) or not job_type:
        raise InvalidJobError('"type" must be a non-empty string')
    data = obj.get("data", {})
    if not isinstance(data, dict):
        raise InvalidJobError(f'"data" must be a JSON object, got {_json_type(data)}')
    agent_type = obj.get("agentType")
    if agent_type is not None and (not isinstance(agent_type, str) or not agent_type):
        raise InvalidJobError('"agentType" must be a non-empty string')
    command = obj.get("command")
    if command is not None and (
        not isinstance(command, list)
        or not command
        or not all(isinstance(arg, str) for arg in command)
    ):
        raise InvalidJobError('"command" must be a non-empty list of strings')
    job = WorkerJob(
        id=job_id,
        type=job_type,
        data=data,
        project_id=_id_value(obj, "projectId"),
        work_item_id=_id_value(obj, "workItemId"),
        agent_type=agent_type,
        command=tuple(command) if command is not None else None,
    )
    fields = resolve_job_fields(job, None)  # the library's own checks: NUL, bad Unicode
    size = len(fields.job_data_json.encode("utf-8"))
    if size > JOB_DATA_INLINE_LIMIT:
        raise InvalidJobError(
            f'"data" is {size} bytes; the command passes job data inline, '
            f"up to {JOB_DATA_INLINE_LIMIT} bytes"
        )
    return job


def _id_value(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    # Ids arrive as strings or integers in job payloads; floats and booleans are mistakes.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidJobError(f'"{key}" must be a string or an integer, got {_json_type(value)}')
    text = str(value)
    if not text:
        raise InvalidJobError(f'"{key}" must not be empty')
    return text


def _reject_constant(name: str) -> NoReturn:
    raise InvalidJobError(f"invalid JSON: {name} is not a JSON number")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# ----------------------------------------------------------------------------- batch state


@dataclass
class JobState:
    """What the command knows about one job of the batch."""

    job: WorkerJob
    status: JobStatus = "queued"
    worker: ActiveWorker | None = None
    outcome: WorkerOutcome | None = None
    error: str | None = None
    started: float | None = None  # time.monotonic() at start
    ended: float | None = None

    @property
    def job_id(self) -> str:
        assert self.job.id is not None
        return self.job.id

    @property
    def wall_s(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    @property
    def duration_text(self) -> str:
        """The engine's run time when it told us, else `~` and the time this command saw.

        The engine cannot always tell: it drops the record of an auto-removed container, and
        for very short runs it may report a finish before the start.
        """
        if self.outcome is not None and self.outcome.duration_s is not None:
            return _fmt_s(self.outcome.duration_s)
        return "-" if self.wall_s is None else "~" + _fmt_s(self.wall_s)

    def to_json(self) -> dict[str, Any]:
        outcome = self.outcome
        return {
            "job_id": self.job_id,
            "status": self.status,
            "exit_code": outcome.exit_code if outcome else None,
            "oom_killed": outcome.oom_killed if outcome else None,
            "exit_reason": outcome.exit_reason if outcome else None,
            "duration_s": outcome.duration_s if outcome else None,
            "wall_s": _round(self.wall_s) if self.ended is not None else None,
            "error": (outcome.error if outcome else None) or self.error,
            "container_name": self.worker.container_name if self.worker else None,
            "image": self.worker.image if self.worker else None,
            "description": outcome.describe() if outcome else self.error,
        }


@dataclass(frozen=True)
class JobEvent:
    state: JobState
    status: JobStatus


class BatchTracker(WorkerLifecycleListener):
    """The batch's job states, fed by the manager's lifecycle events (on its threads)."""

    def __init__(self, jobs: Sequence[WorkerJob]) -> None:
        self._changed = threading.Condition()
        self._states = {job.id: JobState(job) for job in jobs if job.id is not None}
        self._events: list[JobEvent] = []

    @property
    def states(self) -> list[JobState]:
        with self._changed:
            return list(self._states.values())

    def _update(self, job_id: str, change: Callable[[JobState], None]) -> None:
        with self._changed:
            state = self._states.get(job_id)
            if state is None:
                return  # not one of this batch's jobs
            change(state)
            self._events.append(JobEvent(state, state.status))
            self._changed.notify_all()

    def on_worker_started(self, worker: ActiveWorker) -> None:
        def change(state: JobState) -> None:
            state.status, state.worker, state.started = "running", worker, time.monotonic()

        self._update(worker.job_id, change)

    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        def change(state: JobState) -> None:
            state.status, state.outcome, state.ended = outcome.status, outcome, time.monotonic()

        self._update(worker.job_id, change)

    def spawn_failed(self, job_id: str, err: BaseException) -> None:
        message = " ".join(f"{type(err).__name__}: {err}".split())

        def change(state: JobState) -> None:
            state.status, state.error = "error", message

        self._update(job_id, change)

    def wait(self, timeout: float) -> list[JobEvent]:
        """Events since the last call, waiting up to `timeout` for the first one."""
        with self._changed:
            if not self._events:
                self._changed.wait(timeout)
            events, self._events = self._events, []
            return events

    def all_final(self) -> bool:
        with self._changed:
            return all(state.status in _FINAL for state in self._states.values())

    def mark_unfinished(self) -> list[JobState]:
        """After an interrupt: running jobs become `detached`, queued ones `not_started`."""
        with self._changed:
            detached = []
            for state in self._states.values():
                if state.status == "running":
                    state.status = "detached"
                    detached.append(state)
                elif state.status == "queued":
                    state.status = "not_started"
            return detached

    def counts(self) -> dict[str, int]:
        with self._changed:
            counts: dict[str, int] = {}
            for state in self._states.values():
                counts[state.status] = counts.get(state.status, 0) + 1
            return counts


class Feeders:
    """Spawns the batch's jobs in file order from a few threads; the slot gate queues them."""

    def __init__(
        self, manager: ContainerManager, tracker: BatchTracker, jobs: Sequence[WorkerJob]
    ) -> None:
        self._manager = manager
        self._tracker = tracker
        self._jobs = list(jobs)
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        config = manager.config
        count = max(1, min(len(self._jobs), config.max_workers, config.launch_concurrency))
        # Daemon threads: a second Ctrl-C must be able to end the process even if a launch
        # hangs on an unresponsive engine.
        self._threads = [
            threading.Thread(target=self._feed, name=f"dockyard-cli-feed-{i}", daemon=True)
            for i in range(count)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """No new spawns; a launch under way still completes (and its worker is tracked)."""
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _take(self) -> WorkerJob | None:
        with self._lock:
            if self._stop.is_set() or self._next >= len(self._jobs):
                return None
            job = self._jobs[self._next]
            self._next += 1
            return job

    def _feed(self) -> None:
        while (job := self._take()) is not None:
            self._spawn(job)

    def _spawn(self, job: WorkerJob) -> None:
        assert job.id is not None
        while not self._stop.is_set():
            try:
                self._manager.spawn_worker(job, slot_timeout=_SLOT_POLL_S)
            except NoWorkerSlotError:
                continue  # all slots busy: look at the stop flag, then queue again
            except Exception as err:
                self._tracker.spawn_failed(job.id, err)
            return


# ----------------------------------------------------------------------------- displays


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _event_text(state: JobState, status: JobStatus, snapshot_prefix: str) -> str:
    """One progress line's detail for a job that just changed state."""
    worker, outcome = state.worker, state.outcome
    if status == "running" and worker is not None:
        warm = snapshot_prefix and worker.image.startswith(snapshot_prefix)
        return f"{worker.container_name}" + (f"  (warm start from {worker.image})" if warm else "")
    if status == "error":
        return f"could not start: {state.error}"
    if outcome is None:
        return ""
    return f"{outcome.describe()} after {state.duration_text}"


class PlainDisplay:
    """Progress as one line per start and finish, for logs and pipes."""

    def __init__(self, out: TextIO | None, snapshot_prefix: str) -> None:
        self._out = out  # None: --progress none
        self._snapshot_prefix = snapshot_prefix
        self._t0 = time.monotonic()
        self._width = 0

    @contextmanager
    def running(self, tracker: BatchTracker) -> Iterator[None]:
        self._width = max(len(state.job_id) for state in tracker.states)
        yield

    def events(self, events: Sequence[JobEvent]) -> None:
        if self._out is None:
            return
        for event in events:
            elapsed = time.monotonic() - self._t0
            label = "started" if event.status == "running" else event.status.replace("_", " ")
            detail = _event_text(event.state, event.status, self._snapshot_prefix)
            line = f"[{elapsed:7.1f}s] {label:<9} {event.state.job_id:<{self._width}}  {detail}"
            print(line.rstrip(), file=self._out, flush=True)

    def message(self, text: str) -> None:
        if self._out is not None:
            print(text, file=self._out, flush=True)


class RichDisplay:
    """Live progress on a terminal: counts, a bar, the running jobs; finished jobs above it."""

    def __init__(self, console: Console, snapshot_prefix: str, title: str) -> None:
        self.console = console
        self._snapshot_prefix = snapshot_prefix
        self._title = title
        self._tracker: BatchTracker | None = None
        self._t0 = time.monotonic()
        self._width = 0

    @contextmanager
    def running(self, tracker: BatchTracker) -> Iterator[None]:
        self._tracker = tracker
        self._width = max(len(state.job_id) for state in tracker.states)
        # Not redirecting stdout/stderr: everything is printed through this console.
        with Live(
            console=self.console,
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
            line.append(f"  {event.status.replace('_', ' '):<9}", style=style)
            detail = _event_text(event.state, event.status, self._snapshot_prefix)
            if detail:
                line.append(f"  {detail}", style="dim")
            self.console.print(line)

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def _render(self) -> RenderableType:
        tracker = self._tracker
        if tracker is None:
            return Text("")
        states = tracker.states
        counts: dict[str, int] = {}
        for state in states:
            counts[state.status] = counts.get(state.status, 0) + 1
        done = sum(counts.get(status, 0) for status in _FINAL)
        head = Text()
        head.append(self._title, style="bold")
        head.append(f"  {_fmt_s(time.monotonic() - self._t0)}", style="dim")
        tally = Text()
        for status in ("running", "succeeded", "failed", "timed_out", "lost", "error", "queued"):
            if counts.get(status) or status in ("running", "succeeded", "failed", "timed_out"):
                label = status.replace("_", " ")
                symbol = _SYMBOL.get(status, "…")
                tally.append(f"{symbol} {counts.get(status, 0)} {label}   ", style=_STYLE[status])
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(1, len(states)), completed=done, width=40),
            Text(f"{done}/{len(states)} done"),
        )
        running = [s for s in states if s.status == "running" and s.worker is not None]
        parts: list[RenderableType] = [head, tally, bar]
        if running:
            table = Table(box=None, padding=(0, 2), show_edge=False, header_style="dim")
            table.add_column("running")
            table.add_column("container")
            table.add_column("for", justify="right")
            table.add_column("deadline in", justify="right")
            now = datetime.now(UTC)
            for state in running[:15]:
                worker = state.worker
                assert worker is not None
                left = (worker.deadline - now).total_seconds()
                table.add_row(
                    Text(state.job_id, style="cyan"),
                    worker.container_name,
                    _fmt_s(state.wall_s),
                    _fmt_s(max(0.0, left)),
                )
            if len(running) > 15:
                table.add_row(Text(f"… and {len(running) - 15} more", style="dim"), "", "", "")
            parts.append(table)
        return Group(*parts)


Display = PlainDisplay | RichDisplay


# ----------------------------------------------------------------------------- summary


def _summary_rows(states: Sequence[JobState]) -> list[list[str]]:
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
        rows.append(
            [
                state.job_id,
                state.status,
                exit_code,
                oom,
                state.duration_text,
                note,
            ]
        )
    return rows


_HEADERS = ["JOB", "STATUS", "EXIT", "OOM", "DURATION", "NOTE"]


def _tally_line(states: Sequence[JobState]) -> str:
    counts: dict[str, int] = {}
    for state in states:
        counts[state.status] = counts.get(state.status, 0) + 1
    ooms = sum(1 for s in states if s.outcome is not None and s.outcome.oom_killed)
    parts = []
    for status in ("succeeded", "failed", "timed_out", "lost", "error", "detached", "not_started"):
        if counts.get(status):
            parts.append(f"{counts[status]} {status.replace('_', ' ')}")
    text = f"{len(states)} job{'s' if len(states) != 1 else ''}: " + ", ".join(parts)
    if ooms:
        text += f" ({ooms} OOM-killed)"
    return text


def print_plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Left-aligned columns separated by two spaces; trailing empty columns dropped."""
    keep = len(headers)
    while keep > 1 and all(not row[keep - 1] for row in rows):
        keep -= 1
    table = [list(headers[:keep]), *[list(row[:keep]) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(keep)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip(), file=out)


def print_summary(states: Sequence[JobState], out: TextIO, *, rich_console: bool) -> None:
    rows = _summary_rows(states)
    if rich_console:
        console = Console(file=out)
        table = Table(header_style="bold")
        with_note = any(row[5] for row in rows)
        for header in _HEADERS if with_note else _HEADERS[:-1]:
            justify: Literal["left", "right"] = (
                "right" if header in ("EXIT", "DURATION") else "left"
            )
            table.add_column(header, justify=justify, overflow="fold")
        for row in rows:
            status = row[1]
            styled = [Text(row[0]), Text(status, style=_STYLE.get(status, ""))]
            styled += [Text(cell) for cell in row[2:5]]
            if with_note:
                styled.append(Text(row[5], style="dim"))
            table.add_row(*styled)
        console.print(table)
        console.print(_tally_line(states))
        return
    print_plain_table(_HEADERS, rows, out)
    print(_tally_line(states), file=out)


# ----------------------------------------------------------------------------- commands


def _base_config(args: argparse.Namespace, **overrides: Any) -> RouterConfig:
    """`RouterConfig.from_env()` with the command-line flags on top."""
    config = RouterConfig.from_env()
    if args.instance is not None:
        overrides["router_instance_id"] = args.instance
    prefix = getattr(args, "snapshot_prefix", None)
    if prefix is not None:
        overrides["snapshot_image_prefix"] = prefix
    return dataclasses.replace(config, **overrides)


def _connect(config: RouterConfig) -> DockerGateway:
    return DockerGateway.connect(short_pool=4, wait_pool=1, timeout_s=config.docker_timeout_s)


def _check_image(gateway: DockerGateway, image: str) -> None:
    try:
        gateway.image_inspect(image)
    except Exception as err:
        if is_not_found(err):
            raise UsageError(
                f"image {image!r} is not on the Docker engine; build or pull it first"
            ) from None
        raise DockerUnavailableError(
            f"Docker engine error while inspecting {image!r}: {err}"
        ) from err


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: detach and report."""


def _raise_terminated(signum: int, frame: object) -> NoReturn:
    raise _Terminated


def _run_config(args: argparse.Namespace) -> RouterConfig:
    overrides: dict[str, Any] = {"worker_image": args.image}
    for flag, name in (
        ("max_workers", "max_workers"),
        ("timeout", "worker_timeout_s"),
        ("memory_mb", "worker_memory_mb"),
        ("network", "docker_network"),
        ("stop_grace", "stop_grace_s"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[name] = value
    if args.snapshots:
        overrides["snapshot_enabled"] = True
    if args.no_auto_remove:
        overrides["auto_remove_workers"] = False
    return _base_config(args, **overrides)


def cmd_run(args: argparse.Namespace) -> int:
    config = _run_config(args)
    jobs = load_jobs(Path(args.jobs))
    if args.progress == "rich" and not HAVE_RICH:
        raise UsageError("--progress rich needs rich: pip install 'dockyard[cli]'")
    gateway = _connect(config)
    try:
        _check_image(gateway, config.worker_image)
    finally:
        gateway.close()
    if threading.current_thread() is threading.main_thread():
        # Explicitly, since a shell starts background commands with SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_terminated)

    display = _make_display(args.progress, config, len(jobs))
    _configure_logging(
        args.verbose,
        display.console if isinstance(display, RichDisplay) else None,
        batch_progress=args.progress != "none",
    )
    tracker = BatchTracker(jobs)
    interrupt = _run_batch(config, jobs, tracker, display)
    states = tracker.states
    if interrupt is not None:
        _say_detached(config, [s for s in states if s.status == "detached"])
    if args.json:
        for state in states:
            print(json.dumps(state.to_json(), ensure_ascii=False))
    else:
        print_summary(states, sys.stdout, rich_console=sys.stdout.isatty() and HAVE_RICH)
    sys.stdout.flush()
    if interrupt is not None:
        return EXIT_TERMINATED if isinstance(interrupt, _Terminated) else EXIT_INTERRUPTED
    return EXIT_OK if all(s.status == "succeeded" for s in states) else EXIT_JOBS_FAILED


def _run_batch(
    config: RouterConfig, jobs: Sequence[WorkerJob], tracker: BatchTracker, display: Display
) -> KeyboardInterrupt | None:
    """Run the batch to the end, or until Ctrl-C/SIGTERM (returned), then detach."""
    interrupt: KeyboardInterrupt | None = None
    manager = ContainerManager(config, listener=tracker)
    try:
        if config.snapshot_enabled:
            manager.sync_snapshots_from_docker()  # warm starts from earlier runs
        feeders = Feeders(manager, tracker, jobs)
        with display.running(tracker):
            try:
                feeders.start()
                while not tracker.all_final():
                    display.events(tracker.wait(_REFRESH_S))
            except KeyboardInterrupt as err:
                interrupt = err
                display.events(tracker.wait(0))
                display.message("interrupted: no new jobs start; detaching from running ones…")
                feeders.stop()
                manager.detach_all()
            # close() joins the exit watchers, so every outcome that raced the interrupt
            # has reached the tracker before the unfinished jobs are counted.
            manager.close()
            display.events(tracker.wait(0))
            if interrupt is not None:
                tracker.mark_unfinished()
    finally:
        manager.close()
    return interrupt


def _say_detached(config: RouterConfig, detached: Sequence[JobState]) -> None:
    if not detached:
        print("dockyard: interrupted; no job was running", file=sys.stderr)
        return
    names = ", ".join(f"{s.worker.container_name} (job {s.job_id})" for s in detached if s.worker)
    print(
        f"dockyard: interrupted; {len(detached)} job(s) still running, detached: {names}",
        file=sys.stderr,
    )
    print(
        f"dockyard: `dockyard ps --instance {config.router_instance_id}` lists them; "
        f"`dockyard reap --instance {config.router_instance_id}` cleans up after them once "
        "they have exited or passed their deadline",
        file=sys.stderr,
    )


def _make_display(mode: str, config: RouterConfig, total: int) -> Display:
    use_rich = mode == "rich" or (mode == "auto" and sys.stderr.isatty() and HAVE_RICH)
    if use_rich:
        title = (
            f"dockyard run · {total} job{'s' if total != 1 else ''} · {config.worker_image}"
            f" · up to {config.max_workers} at once"
        )
        return RichDisplay(Console(stderr=True), config.snapshot_image_prefix, title)
    return PlainDisplay(sys.stderr if mode != "none" else None, config.snapshot_image_prefix)


def cmd_ps(args: argparse.Namespace) -> int:
    config = _base_config(args)
    labels = LabelSchema(config.label_prefix)
    gateway = _connect(config)
    try:
        containers = gateway.list_containers(
            labels.ownership_filter(config.router_instance_id), all=True
        )
    finally:
        gateway.close()
    if not containers:
        print(f"no managed containers for router instance {config.router_instance_id!r}")
        return EXIT_OK
    now = datetime.now(UTC)
    rows = []
    for container in sorted(containers, key=lambda c: int(c.get("Created") or 0)):
        tags = dict(container.get("Labels") or {})
        names = container.get("Names") or ["?"]
        deadline = parse_deadline(tags.get(labels.deadline))
        if deadline is None:
            due = "-"
        else:
            left = (deadline - now).total_seconds()
            when = deadline.astimezone().strftime("%Y-%m-%d %H:%M:%S")
            due = f"{when} ({'in ' + _fmt_s(left) if left >= 0 else 'overdue ' + _fmt_s(-left)})"
        rows.append(
            [
                str(container.get("Id", ""))[:12],
                str(names[0]).lstrip("/"),
                tags.get(labels.job_id, "-"),
                str(container.get("State", "")),
                str(container.get("Status", "")),
                due,
            ]
        )
    print_plain_table(["CONTAINER", "NAME", "JOB", "STATE", "STATUS", "DEADLINE"], rows, sys.stdout)
    return EXIT_OK


class _OrphanLog(WorkerLifecycleListener):
    def __init__(self) -> None:
        self.stopped: set[str] = set()

    def on_orphan_stopped(self, container_id: str, labels: dict[str, str]) -> None:
        self.stopped.add(container_id)


def cmd_reap(args: argparse.Namespace) -> int:
    overrides = {"stop_grace_s": args.stop_grace} if args.stop_grace is not None else {}
    config = _base_config(args, **overrides)
    labels = LabelSchema(config.label_prefix)
    gateway = _connect(config)
    try:
        before = {
            str(c.get("Id")): c
            for c in gateway.list_containers(
                labels.ownership_filter(config.router_instance_id), all=True
            )
        }
        orphans = _OrphanLog()
        with ContainerManager(config, docker_client=gateway.api, listener=orphans) as manager:
            handled = manager.scan_and_cleanup_orphans()
    finally:
        gateway.close()
    for container_id in handled:
        container = before.get(container_id, {})
        name = str((container.get("Names") or ["?"])[0]).lstrip("/")
        job = dict(container.get("Labels") or {}).get(labels.job_id, "-")
        if container_id in orphans.stopped:
            what = "stopped and removed (running past its deadline)"
        else:
            what = f"removed ({container.get('State', 'exited')} leftover)"
        print(f"{container_id[:12]}  {name}  job {job}: {what}")
    kept = len(before) - len(handled)
    print(
        f"reaped {len(handled)} container(s) of router instance {config.router_instance_id!r}; "
        f"{kept} left alone (running within their deadline)"
    )
    return EXIT_OK


def _snapshot_images(gateway: DockerGateway, config: RouterConfig) -> list[dict[str, Any]]:
    labels = LabelSchema(config.label_prefix)
    found = []
    for image in gateway.list_images(config.snapshot_image_prefix):
        tags = [
            t for t in image.get("RepoTags") or [] if t.startswith(config.snapshot_image_prefix)
        ]
        image_labels = image.get("Labels") or {}
        found.append(
            {
                "name": tags[0],
                "project_id": image_labels.get(labels.project_id) or None,
                "work_item_id": image_labels.get(labels.work_item_id) or None,
                "created": datetime.fromtimestamp(int(image.get("Created") or 0), UTC),
                "size": image.get("Size") if isinstance(image.get("Size"), int) else None,
            }
        )
    return sorted(found, key=lambda i: i["created"], reverse=True)


def _would_evict(images: Sequence[dict[str, Any]], config: RouterConfig) -> set[str]:
    """Dry run of the cleanup: the same registry rules, on a throwaway registry."""
    registry = SnapshotRegistry(
        default_ttl_s=config.snapshot_default_ttl_s,
        max_count=config.snapshot_max_count,
        max_size_bytes=config.snapshot_max_size_bytes,
        project_ttl=lambda _project: None,
    )
    for image in images:
        if image["project_id"] and image["work_item_id"]:
            registry.register(
                image["project_id"],
                image["work_item_id"],
                image["name"],
                image["size"],
                created_at=image["created"],
            )
    return {meta.image_name for meta in registry.evict()}


def cmd_snapshots(args: argparse.Namespace) -> int:
    config = _base_config(args)
    gateway = _connect(config)
    try:
        images = _snapshot_images(gateway, config)
        if args.evict:
            with ContainerManager(config, docker_client=gateway.api) as manager:
                manager.sync_snapshots_from_docker()  # registers them all, then cleans up
            remaining = {image["name"] for image in _snapshot_images(gateway, config)}
            removed = [image for image in images if image["name"] not in remaining]
            for image in removed:
                print(f"removed {image['name']}")
            print(f"evicted {len(removed)} snapshot image(s); {len(remaining)} kept")
            return EXIT_OK
    finally:
        gateway.close()
    if not images:
        print(f"no snapshot images named {config.snapshot_image_prefix}*")
        return EXIT_OK
    doomed = _would_evict(images, config)
    now = datetime.now(UTC)
    rows = [
        [
            image["name"],
            image["project_id"] or "-",
            image["work_item_id"] or "-",
            f"{_fmt_s((now - image['created']).total_seconds())} ago",
            _fmt_size(image["size"]),
            "evict" if image["name"] in doomed else "",
        ]
        for image in images
    ]
    print_plain_table(
        ["IMAGE", "PROJECT", "WORK ITEM", "CREATED", "SIZE", "NEXT CLEANUP"], rows, sys.stdout
    )
    return EXIT_OK


def _fmt_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{size}B"


# ----------------------------------------------------------------------------- plumbing


class _FieldsFormatter(logging.Formatter):
    """Appends the structured fields dockyard logs through `extra=` as key=value."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in self._STANDARD and not key.startswith("_")
        ]
        return f"{text} [{' '.join(fields)}]" if fields else text


class _BatchEchoFilter(logging.Filter):
    """Drops the per-job warnings that `dockyard run` already shows as progress lines.

    Only these two exact messages: every other warning (failed removals, stop errors, ...)
    still reaches stderr. With -v nothing is dropped.
    """

    _ECHOED = frozenset(
        {
            ("dockyard.exits", "worker exited with an error"),
            ("dockyard.timeouts", "worker timed out; stopping it"),
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.name, record.msg) not in self._ECHOED


def _configure_logging(
    verbose: int, console: Console | None = None, *, batch_progress: bool = False
) -> None:
    """Warnings to stderr; -v adds dockyard's info lines, -vv everything at debug."""
    handler: logging.Handler
    if console is not None:
        handler = RichHandler(console=console, show_time=False, show_path=False)
        handler.setFormatter(_FieldsFormatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_FieldsFormatter("%(levelname)s %(name)s: %(message)s"))
    if batch_progress and verbose == 0:
        handler.addFilter(_BatchEchoFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    logging.getLogger("dockyard").setLevel(logging.INFO if verbose >= 1 else logging.WARNING)
    if verbose >= 2:
        logging.getLogger("dockyard").setLevel(logging.DEBUG)


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit status 2 like every other refusal."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--instance",
        metavar="ID",
        help="router instance id (default: $CASCADE_ROUTER_INSTANCE, else the hostname); "
        "only containers labelled with it are touched",
    )
    common.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v: info logs, -vv: debug logs"
    )
    snapshot_prefix = _Parser(add_help=False)
    snapshot_prefix.add_argument(
        "--snapshot-prefix",
        metavar="PREFIX",
        help="snapshot image name prefix (default: cascade-snapshot-)",
    )

    parser = _Parser(
        prog="dockyard",
        description="Run each job in its own Docker container, and look after the containers.",
        epilog="Configuration not given as flags comes from the environment "
        "(WORKER_IMAGE, MAX_WORKERS, WORKER_MEMORY_MB, WORKER_TIMEOUT_MS, DOCKER_NETWORK, "
        "SNAPSHOT_*, CASCADE_ROUTER_INSTANCE, DOCKER_HOST). Exit status: 0 ok, 1 a job did "
        "not succeed, 2 nothing started (bad input, engine unreachable, image missing), "
        "130 interrupted (Ctrl-C; running jobs are detached, not killed), 143 SIGTERM.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    run = sub.add_parser(
        "run",
        parents=[common, snapshot_prefix],
        help="run a JSONL batch of jobs, a container each",
        description="Run every job of a JSONL file (one JSON object per line: id, type, data, "
        "and optionally projectId, workItemId, agentType, command) in its own container. All "
        "lines are checked before anything starts. Exits 1 when any job did not succeed.",
    )
    run.add_argument("jobs", metavar="JOBS.jsonl", help="the job file")
    run.add_argument("--image", required=True, help="worker image (must exist on the engine)")
    run.add_argument(
        "--max-workers",
        type=_positive_int,
        metavar="N",
        help="containers running at once (default: $MAX_WORKERS or 3)",
    )
    run.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="kill a job after S seconds (default: $WORKER_TIMEOUT_MS/1000 or 1800)",
    )
    run.add_argument(
        "--memory-mb",
        type=_positive_int,
        metavar="M",
        help="memory limit per container, no swap (default: $WORKER_MEMORY_MB or 4096)",
    )
    run.add_argument(
        "--network", metavar="NET", help="Docker network (default: $DOCKER_NETWORK or bridge)"
    )
    run.add_argument(
        "--stop-grace",
        type=_positive_float,
        metavar="S",
        help="SIGTERM-to-SIGKILL grace when killing a job (default: 15)",
    )
    run.add_argument(
        "--snapshots",
        action="store_true",
        help="snapshot jobs that succeed and have projectId and workItemId; the next run of "
        "the same work item starts from that image",
    )
    run.add_argument(
        "--no-auto-remove",
        action="store_true",
        help="do not let the engine auto-remove containers; dockyard removes them after "
        "reading their last log lines (shown with -v)",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per job (JSON Lines, in file order) instead of the table",
    )
    run.add_argument(
        "--progress",
        choices=("auto", "rich", "plain", "none"),
        default="auto",
        help="progress on stderr: rich when available on a terminal (auto), plain lines, or none",
    )
    run.set_defaults(handler=cmd_run)

    ps = sub.add_parser("ps", parents=[common], help="list this instance's managed containers")
    ps.set_defaults(handler=cmd_ps)

    reap = sub.add_parser(
        "reap",
        parents=[common],
        help="one orphan scan: stop overdue and remove exited containers of this instance",
        description="Stops this instance's running containers that are past their deadline "
        "and removes its exited leftovers. Do not point it at the instance id of a router that "
        "is running: that router is handling its own exits.",
    )
    reap.add_argument(
        "--stop-grace",
        type=_positive_float,
        metavar="S",
        help="SIGTERM-to-SIGKILL grace when stopping an overdue container (default: 15)",
    )
    reap.set_defaults(handler=cmd_reap)

    snaps = sub.add_parser(
        "snapshots",
        parents=[common, snapshot_prefix],
        help="list snapshot images; --evict removes expired and surplus ones",
    )
    snaps.add_argument(
        "--evict",
        action="store_true",
        help="run the snapshot cleanup (TTL, count and size limits from SNAPSHOT_*)",
    )
    snaps.set_defaults(handler=cmd_snapshots)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script `dockyard`; returns the exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (UsageError, ConfigError) as err:
        _fail(str(err))
    except DockerUnavailableError as err:
        _fail(f"{err} (is the engine running? DOCKER_HOST={_docker_host()})")
    except KeyboardInterrupt:
        print("dockyard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_USAGE


def _fail(message: str) -> None:
    print("dockyard: " + " ".join(message.split()), file=sys.stderr)


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unset"


if __name__ == "__main__":
    sys.exit(main())

"""`dockyard run`: check the job file, the options and the image, run the batch with
progress, print the results; on Ctrl-C or SIGTERM detach, on Ctrl-C twice cancel."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .._errors import DockerUnavailableError, DockyardError, EngineNotFoundError
from .._pull_policy import NEVER
from ..container_manager import ContainerManager
from ._batch import BatchTracker, JobState
from ._container_flags import container_overrides
from ._engine import base_config, engine
from ._exits import EXIT_INTERRUPTED, EXIT_JOBS_FAILED, EXIT_OK, EXIT_TERMINATED, UsageError, say
from ._feeders import Feeders
from ._format import count_of
from ._jobfile import check_job_for, load_jobs
from ._logging import configure_logging
from ._metrics_server import serving_metrics
from ._output import LogFiles, OutputTracker
from ._progress import Display, PlainDisplay, write_line
from ._summary import print_json_lines, print_plain_summary

try:  # rich is the optional extra dockyard[cli]; without it output is plain text
    from . import _rich

    HAVE_RICH = True
except ImportError:
    HAVE_RICH = False

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from prometheus_client import CollectorRegistry

    from .._config import RouterConfig
    from .._docker import DockerGateway
    from .._jobs import WorkerJob

# How often the progress view looks for news when no job changes state.
_REFRESH_S = 0.1
# After a first Ctrl-C, a second one within this long cancels the running jobs.
_SECOND_CTRL_C_S = 2.0
# Cancelled jobs end within their stop grace; this much more is waited for, then detached.
_CANCEL_SLACK_S = 30.0


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: detach and report."""


def _raise_terminated(signum: int, frame: object) -> NoReturn:
    raise _Terminated


def cmd_run(args: argparse.Namespace) -> int:
    config = _run_config(args)
    jobs = load_jobs(Path(args.jobs), check=lambda job: check_job_for(config, job))
    if args.progress == "rich" and not HAVE_RICH:
        raise UsageError("--progress rich needs rich: pip install 'dockyard[cli]'")
    if args.pull in (None, NEVER):  # else the manager pulls a missing image
        with engine(config) as gateway:
            _check_image(gateway, config.worker_image)
    if threading.current_thread() is threading.main_thread():
        # Explicitly, since a shell starts background commands with SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_terminated)

    log_dir = _log_dir(args.logs)
    display = _make_display(args.progress, config, len(jobs))
    live = args.verbose >= 1
    configure_logging(
        args.verbose,
        display.log_handler(),
        batch_progress=args.progress != "none",
        live_output=live,
    )
    tracker: BatchTracker = BatchTracker(jobs)
    if log_dir is not None or live:
        files = LogFiles(log_dir) if log_dir is not None else None
        tracker = OutputTracker(jobs, files=files, echo=_echo(display) if live else None)
    try:
        with serving_metrics(args.metrics_port) as registry:
            interrupt = _run_batch(config, jobs, tracker, display, registry)
    finally:
        if isinstance(tracker, OutputTracker):
            tracker.close()
    states = tracker.states
    if interrupt is not None:
        _say_interrupted(config, states)
    if args.json:
        print_json_lines(states, sys.stdout)
    elif sys.stdout.isatty() and HAVE_RICH:
        _rich.print_rich_summary(states, sys.stdout)
    else:
        print_plain_summary(states, sys.stdout)
    sys.stdout.flush()
    if interrupt is not None:
        return EXIT_TERMINATED if isinstance(interrupt, _Terminated) else EXIT_INTERRUPTED
    return EXIT_OK if all(s.status == "succeeded" for s in states) else EXIT_JOBS_FAILED


def _run_config(args: argparse.Namespace) -> RouterConfig:
    overrides: dict[str, Any] = {"worker_image": args.image}
    for flag, name in (
        ("max_workers", "max_workers"),
        ("timeout", "worker_timeout_s"),
        ("memory_mb", "worker_memory_mb"),
        ("network", "docker_network"),
        ("stop_grace", "stop_grace_s"),
        ("backend", "backend"),
        ("pull", "image_pull_policy"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[name] = value
    if args.snapshots:
        overrides["snapshot_enabled"] = True
    if args.no_auto_remove:
        overrides["auto_remove_workers"] = False
    config = base_config(args, **overrides)
    container = container_overrides(args, config.container)
    return dataclasses.replace(config, **container) if container else config


def _log_dir(value: str | None) -> Path | None:
    """`--logs DIR`, created when missing; refused up front when it cannot be written."""
    if value is None:
        return None
    path = Path(value)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--logs {value}: cannot create the directory: {err.strerror}") from None
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--logs {value}: not a writable directory")
    return path


def _echo(display: Display) -> Callable[[str], None]:
    """Where `-v` prints the jobs' lines: above the live view, else straight to stderr
    (whatever `--progress` says: the lines were asked for)."""
    if HAVE_RICH and isinstance(display, _rich.RichDisplay):
        return display.message

    return lambda text: write_line(sys.stderr, text)


def _check_image(gateway: DockerGateway, image: str) -> None:
    try:
        gateway.image_inspect(image)
    except EngineNotFoundError:
        raise UsageError(
            f"image {image!r} is not on the Docker engine; build or pull it first"
        ) from None
    except DockyardError as err:
        raise DockerUnavailableError(
            f"Docker engine error while inspecting {image!r}: {err}"
        ) from err


def _make_display(mode: str, config: RouterConfig, total: int) -> Display:
    use_rich = mode == "rich" or (mode == "auto" and sys.stderr.isatty() and HAVE_RICH)
    if use_rich:
        title = (
            f"dockyard run · {count_of(total, 'job')} · {config.worker_image}"
            f" · up to {config.max_workers} at once"
        )
        return _rich.RichDisplay(config.snapshot_image_prefix, title)
    return PlainDisplay(sys.stderr if mode != "none" else None, config.snapshot_image_prefix)


def _run_batch(
    config: RouterConfig,
    jobs: Sequence[WorkerJob],
    tracker: BatchTracker,
    display: Display,
    metrics_registry: CollectorRegistry | None = None,
) -> KeyboardInterrupt | None:
    """Run the batch to the end, or until Ctrl-C/SIGTERM (returned), then detach."""
    interrupt: KeyboardInterrupt | None = None
    manager = ContainerManager(config, listener=tracker, metrics_registry=metrics_registry)
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
                if _second_interrupt(err, feeders, tracker, display):
                    _cancel_running(manager, tracker, display)
                else:
                    display.message("detaching from running jobs…")
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


def _second_interrupt(
    first: KeyboardInterrupt, feeders: Feeders, tracker: BatchTracker, display: Display
) -> bool:
    """Stop feeding; True when a second Ctrl-C came soon after the first (not SIGTERM)."""
    if isinstance(first, _Terminated):
        display.message("terminated: no new jobs start")
        feeders.stop()
        return False
    display.message(
        f"interrupted: no new jobs start; Ctrl-C again within {_SECOND_CTRL_C_S:g}s "
        "cancels the running jobs, else they keep running, detached"
    )
    until = time.monotonic() + _SECOND_CTRL_C_S
    try:
        feeders.stop()
        while (left := until - time.monotonic()) > 0:
            display.events(tracker.wait(min(left, _REFRESH_S)))
    except KeyboardInterrupt as second:
        feeders.stop()
        return not isinstance(second, _Terminated)
    return False


def _cancel_running(manager: ContainerManager, tracker: BatchTracker, display: Display) -> None:
    """Cancel every running job and wait for their outcomes; a further Ctrl-C detaches."""
    display.message("cancelling the running jobs…")
    cancelled: set[str] = set()
    until = time.monotonic() + manager.config.stop_grace_s + _CANCEL_SLACK_S
    try:
        while time.monotonic() < until:
            # A launch under way when the feeding stopped may still start a worker.
            running = [w.job_id for w in manager.get_active_workers()]
            for job_id in running:
                if job_id not in cancelled:
                    manager.cancel_worker(job_id)
                    cancelled.add(job_id)
            if not running:
                break
            display.events(tracker.wait(_REFRESH_S))
    except KeyboardInterrupt:
        pass
    if manager.get_active_worker_count():
        display.message("detaching from the jobs still running…")
        manager.detach_all()


def _say_interrupted(config: RouterConfig, states: Sequence[JobState]) -> None:
    cancelled = sum(1 for s in states if s.status == "cancelled")
    if cancelled:
        say(f"interrupted; {count_of(cancelled, 'running job')} cancelled")
    _say_detached(config, [s for s in states if s.status == "detached"], quiet=cancelled > 0)


def _say_detached(config: RouterConfig, detached: Sequence[JobState], *, quiet: bool) -> None:
    if not detached:
        if not quiet:
            say("interrupted; no job was running")
        return
    names = ", ".join(f"{s.worker.container_name} (job {s.job_id})" for s in detached if s.worker)
    say(f"interrupted; {len(detached)} job(s) still running, detached: {names}")
    say(
        f"`dockyard ps --instance {config.router_instance_id}` lists them; "
        f"`dockyard reap --instance {config.router_instance_id}` cleans up after them once "
        "they have exited or passed their deadline"
    )

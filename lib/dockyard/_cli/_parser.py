"""The command line's grammar: subcommands, options and their checks (argparse).

It names the command (`args.command`); `_main` runs it.
"""

from __future__ import annotations

import argparse
import math
from typing import NoReturn

from .._drivers import DRIVERS
from .._pull_policy import PULL_POLICIES
from ._container_flags import add_container_flags
from ._exits import EXIT_USAGE


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
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


def _add_label_prefix(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--label-prefix",
        metavar="PREFIX",
        help="the router's label prefix (default: cascade)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--instance",
        metavar="ID",
        help="router instance id (default: $CASCADE_ROUTER_INSTANCE, else the hostname); "
        "only containers labelled with it are touched",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: info logs (with run: also every job's output lines, live, prefixed with "
        "the job id), -vv: debug logs",
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
        "and optionally projectId, workItemId, agentType, command, container) in its own "
        "container. All lines are checked before anything starts. Exits 1 when any job did "
        "not succeed.",
    )
    run.add_argument("jobs", metavar="JOBS.jsonl", help="the job file")
    run.add_argument(
        "--backend",
        choices=tuple(DRIVERS),  # the driver table's names
        help="docker: a container per job on the engine; swarm: a replicated-job service per "
        "job on the swarm whose manager the engine is (default: $DOCKYARD_BACKEND or docker)",
    )
    run.add_argument(
        "--image",
        required=True,
        help="worker image (must exist on the engine unless --pull if-not-present or always)",
    )
    run.add_argument(
        "--pull",
        choices=PULL_POLICIES,
        help="when to pull the worker image: if-not-present (only when missing), always "
        "(before each job; a burst shares one pull) or never (default: "
        "$WORKER_IMAGE_PULL_POLICY or if-not-present; without this flag a missing image "
        "is refused up front). Registry logins come from WORKER_IMAGE_REGISTRY_* and the "
        "Docker config",
    )
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
    run.add_argument(
        "--logs",
        metavar="DIR",
        help="write each job's whole output (masked) to DIR/<job id>.stdout.log and "
        ".stderr.log, the job id percent-encoded (created if missing)",
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics while the batch runs "
        "(needs dockyard[metrics])",
    )
    add_container_flags(run)

    sub.add_parser("ps", parents=[common], help="list this instance's managed containers")

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
    reap.add_argument(
        "--images",
        action="store_true",
        help="also remove dangling images labelled <prefix>.managed=true or with this "
        "instance's snapshot label (never any other image)",
    )
    _add_label_prefix(reap)

    logs = sub.add_parser(
        "logs",
        parents=[common],
        help="print a job's output (masked) from its container",
        description="Prints the output of the job's container, found by the instance's "
        "labels (running, or stopped and not removed yet), masked with the secrets dockyard "
        "can see: the container's secret variables and job data, and this environment's. "
        "Exits 1 when this instance has no container for the job.",
    )
    logs.add_argument("job_id", metavar="JOB_ID", help="the job id")
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new lines until the container stops",
    )
    _add_label_prefix(logs)

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
    return parser

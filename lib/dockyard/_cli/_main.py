"""The entry point: parse the command line, run its command, turn refusals into exit statuses."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .._errors import ConfigError, DockerUnavailableError
from ._containers import cmd_ps, cmd_reap
from ._exits import EXIT_INTERRUPTED, EXIT_USAGE, UsageError, say
from ._logging import configure_logging
from ._logs import cmd_logs
from ._parser import build_parser
from ._run import cmd_run
from ._snapshots import cmd_snapshots

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence

COMMANDS: Mapping[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "ps": cmd_ps,
    "reap": cmd_reap,
    "logs": cmd_logs,
    "snapshots": cmd_snapshots,
}


def main(argv: Sequence[str] | None = None) -> int:
    """The console script `dockyard`; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError) as err:
        _fail(str(err))
    except DockerUnavailableError as err:
        _fail(f"{err} (is the engine running? DOCKER_HOST={_docker_host()})")
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_USAGE


def _fail(message: str) -> None:
    # Always one line, even when an engine error message spans several.
    say(" ".join(message.split()))


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unset"

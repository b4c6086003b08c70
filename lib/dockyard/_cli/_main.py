"""The entry point: parse the command line, dispatch, and turn refusals into exit statuses."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .._errors import ConfigError, DockerUnavailableError
from ._exits import EXIT_INTERRUPTED, EXIT_USAGE, UsageError, say
from ._logging import configure_logging
from ._parser import build_parser

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The console script `dockyard`; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
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

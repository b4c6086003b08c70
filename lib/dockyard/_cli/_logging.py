"""Log output on stderr: the verbosity levels, dockyard's `extra=` fields, and quieting the
warnings and output tails that `dockyard run` already shows as progress or live lines."""

from __future__ import annotations

import logging
import sys


class FieldsFormatter(logging.Formatter):
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


class _TailEchoFilter(logging.Filter):
    """Drops the info line with a finished worker's last output lines: `dockyard run -v`
    printed every one of them live already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "dockyard.exits" and str(record.msg).startswith("worker output (last")
        )


def configure_logging(
    verbose: int,
    handler: logging.Handler | None = None,
    *,
    batch_progress: bool = False,
    live_output: bool = False,
) -> None:
    """Warnings to stderr; -v adds dockyard's info lines, -vv everything at debug.

    `handler` replaces the plain stderr handler (the live progress view brings its own, so
    log lines do not tear it). `live_output`: the jobs' lines are printed as they come, so
    the tail logged at each exit is left out.
    """
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(FieldsFormatter("%(levelname)s %(name)s: %(message)s"))
    if batch_progress and verbose == 0:
        handler.addFilter(_BatchEchoFilter())
    if live_output:
        handler.addFilter(_TailEchoFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    dockyard_level = (
        logging.DEBUG if verbose >= 2 else logging.INFO if verbose >= 1 else logging.WARNING
    )
    logging.getLogger("dockyard").setLevel(dockyard_level)

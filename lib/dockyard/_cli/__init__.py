"""The `dockyard` command: run a batch of jobs as containers, plus everyday operator commands.

    dockyard run JOBS.jsonl --image IMAGE [...]   a container per job line, live progress and
                                                   a summary
    dockyard ps                                   this instance's managed containers
    dockyard logs JOB_ID [--follow]               a job's output from its container, masked
    dockyard reap                                 one orphan scan
    dockyard snapshots [--evict]                  snapshot images; --evict cleans them up

Exit status: 0 every job succeeded (or the command did its job), 1 a job did not succeed
(for `logs`: no container for the job id), 2 nothing was started (bad input or options,
engine unreachable, image missing), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM);
both detach from running jobs.

Progress goes to stderr (rich when installed and stderr is a terminal, plain lines
otherwise); results go to stdout.
"""

from ._main import main

__all__ = ["main"]

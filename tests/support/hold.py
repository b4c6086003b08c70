"""A worker that holds until told: its command, and telling it to go on."""

from __future__ import annotations

import docker
import docker.errors
from docker.models.containers import Container

HOLD = "while [ ! -e /go ]; do sleep 0.05; done"
"""A worker command that runs until a file `/go` appears in its container."""


def let_go(container: Container) -> None:
    """Create `/go` in a held worker's container, so its wait loop ends.

    The worker may see the file and end before the engine has reported the `touch` exec's
    own end; the exec then dies with the container (137). Either way the worker went on;
    anything else is a failure.
    """
    done = container.exec_run(["touch", "/go"])
    if done.exit_code == 0:
        return
    try:
        container.reload()
        running = container.status == "running"
    except docker.errors.NotFound:  # auto-removed: it has ended
        running = False
    assert done.exit_code == 137 and not running, (done.exit_code, done.output)

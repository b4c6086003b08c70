"""Running the `dockyard` command line as a user does: a subprocess on the dockyard under test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dockyard

LIB = str(Path(dockyard.__file__).resolve().parent.parent)
RUN_TIMEOUT_S = 300  # only keeps a broken run from hanging the suite


def cli_env(drop: tuple[str, ...] = ("CASCADE_ROUTER_INSTANCE",), **extra: str) -> dict[str, str]:
    """This process's environment with the dockyard under test first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [LIB, env.get("PYTHONPATH")]))
    for name in drop:
        env.pop(name, None)
    env.update(extra)
    return env


def run_env(**extra: str) -> dict[str, str]:
    # The jobs need no network; spares the engine a veth each.
    return cli_env(**{"DOCKER_NETWORK": "none", **extra})


def dockyard_cli(
    *args: str,
    env: dict[str, str] | None = None,
    prelude: str = "",
    timeout: float = RUN_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run the command; `prelude` is Python run first (e.g. to hide rich)."""
    code = f"{prelude}\nimport sys\nfrom dockyard._cli import main\nsys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env or run_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_jobs(
    jobs: Path, image: str, instance: str, *args: str, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """`dockyard run JOBS --image IMAGE --instance INSTANCE ARGS...` (see `dockyard_cli`)."""
    return dockyard_cli("run", str(jobs), "--image", image, "--instance", instance, *args, **kwargs)


def write_jobs(path: Path, *jobs: dict[str, Any] | str) -> Path:
    lines = [job if isinstance(job, str) else json.dumps(job) for job in jobs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

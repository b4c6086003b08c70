"""Benchmark hooks: the machine facts in the JSON report and the closing ratio summary.

The fixtures (`docker_client`, `test_image`, `instance_id`, ...) come from tests/conftest.py,
loaded with `-p conftest` (see the `bench` env in tox.ini).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from .harness import FIGURES, machine_facts


@pytest.fixture(autouse=True, scope="session")
def _router_logging() -> Iterator[None]:
    """INFO on for dockyard, as a router runs it: the log tail is then read and logged."""
    logger = logging.getLogger("dockyard")
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(previous)


def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    client = None
    with contextlib.suppress(Exception):
        client = docker.from_env(timeout=10)
    try:
        machine_info["dockyard"] = machine_facts(client)
    finally:
        if client is not None:
            client.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("dockyard against its baselines (same run)")
    terminalreporter.write_line(machine_line())
    width = max(len(f.name) for f in FIGURES)
    for figure in FIGURES:
        ratio = "n/a" if math.isnan(figure.ratio) else f"{figure.ratio:.3f}"
        target = f"  (target {figure.target})" if figure.target else ""
        terminalreporter.write_line(
            f"{figure.name:<{width}}  {figure.value:.6g} vs {figure.baseline:.6g} {figure.unit}"
            f"  ratio {ratio}{target}"
        )


def machine_line() -> str:
    client = None
    with contextlib.suppress(Exception):
        client = docker.from_env(timeout=10)
    try:
        facts = machine_facts(client)
    finally:
        if client is not None:
            client.close()
    return ", ".join(f"{key}={value}" for key, value in facts.items())

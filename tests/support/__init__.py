"""Helpers shared by the test modules (fixtures stay in the conftest files).

- `engine`: the engine the tests run on, the leak checks' container lookups, `ManagerFactory`;
- `sentry`: the capturing Sentry transport and its `CapturedEvents`;
- `threads`: `ThreadBaseline`, and `eventually` for what happens on other threads;
- `listeners`: `ListenerRecorder`, the one lifecycle listener that records what it is told;
- `hosts`: the host's side of the hooks: `StaticProjects`, `RecordingStore`, `LogCapture`;
- `servers`: helper servers (a free port, stopping a process, redis-server, a missing tool);
- `scrape`: scraping a /metrics endpoint until it shows something, and the `HOLD` worker;
- `registry`: a real `docker-registry` with htpasswd logins, and pushing a test image to it;
- `load`: a load run under injected faults;
- `swarm`: the swarm engines of `tests/swarm_engine.sh`;
- `cli`, `router`: running the CLI and the example router as a host does;
- `rig`: a manager on `dockyard.testing`'s fake engine.

Every module here is assertion-rewritten as the test modules are.
"""

from __future__ import annotations

import pkgutil

import pytest

pytest.register_assert_rewrite(
    *(f"{__name__}.{info.name}" for info in pkgutil.iter_modules(__path__))
)

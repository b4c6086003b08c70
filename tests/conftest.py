"""Shared pytest fixtures for the dockyard test suite.

Docker
    ``docker_client`` (session) talks to a real engine. Without an engine every test
    that needs one is **skipped**, unless ``DOCKYARD_REQUIRE_DOCKER=1`` or ``CI=true``
    is set, in which case it **fails**. Every Docker fixture depends on
    ``docker_client``, and a test marked ``@pytest.mark.docker`` requests it
    automatically, so the gating applies to all of them. Tests that use it (directly
    or through another fixture) get the ``docker`` marker, so ``-m "not docker"``
    runs the unit tests only.

    ``test_image`` (session) is :data:`images.TEST_IMAGE`, built when absent.

    ``instance_id`` (function) is a fresh router instance id. At teardown every
    container labelled ``cascade.router.instance=<id>`` is force-removed and the test
    **fails** if there was any (a leak detector; ``@pytest.mark.allow_leftovers``
    turns the check off, the clean-up still happens). Images whose name starts with
    ``snapshot_image_prefix`` are removed too.

Sentry
    ``sentry_events`` (function) initialises the real sentry-sdk once per session with
    a capturing transport (no network) and returns the list of captured event dicts,
    emptied for each test.

Threads
    ``thread_baseline`` (function) records ``threading.enumerate()`` at set-up; call
    ``thread_baseline.assert_no_new_threads()`` after closing what the test started.

Logs and a second router
    ``dockyard_logs`` (function) captures every ``dockyard`` log record at DEBUG;
    ``other_instance`` (function) is a second router instance id, its containers removed
    after the test.

Test modules also import plain helpers from here: ``ManagerFactory``, ``StaticProjects``,
``RecordingStore``, ``free_port``/``stop_process``/``missing_tool`` for helper servers,
``eventually``, and the load run's ``load_job``/``LoadProjects``/``LoadRecorder``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import docker
import docker.errors
import pytest
import sentry_sdk
import sentry_sdk.transport

from dockyard import (
    ActiveWorker,
    ProjectConfig,
    WorkerJob,
    WorkerLifecycleListener,
    WorkerOutcome,
)
from faultproxy import FaultProxy, FaultRule
from images import TEST_IMAGE, ensure_test_images

# Test modules import the swarm plugin's helpers before pytest loads it as their plugin:
# registered here, it is assertion-rewritten on that first import all the same.
pytest.register_assert_rewrite("swarm_support")

LABEL_PREFIX = "cascade"
"""Default ``RouterConfig.label_prefix``; the leak detector looks for its labels."""

LEAK_GRACE_S = 5.0
"""How long teardown waits for non-running containers to go away by themselves
(AutoRemove is asynchronous: the daemon removes the container shortly *after* ``wait``
returns)."""


# --------------------------------------------------------------------------- docker


def docker_required() -> bool:
    """True when a missing Docker engine must fail the run instead of skipping."""
    require = os.environ.get("DOCKYARD_REQUIRE_DOCKER", "").strip().lower()
    ci = os.environ.get("CI", "").strip().lower()
    return require in {"1", "true", "yes"} or ci in {"1", "true", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses ``docker_client`` (directly or not) with ``docker``."""
    for item in items:
        if "docker_client" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(autouse=True)
def _docker_marker_gate(request: pytest.FixtureRequest) -> None:
    """A test marked ``docker`` gets the skip/fail gating even without the fixture."""
    if request.node.get_closest_marker("docker") is not None:
        request.getfixturevalue("docker_client")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A ``docker.DockerClient`` from the environment (``DOCKER_HOST`` or the CLI context).

    Skips the test when the engine does not answer; fails it instead when
    ``DOCKYARD_REQUIRE_DOCKER=1`` or ``CI=true``. The client has a 60 s timeout and
    a connection pool of 32.
    """
    try:
        client = docker.from_env(timeout=60, max_pool_size=32)
        client.ping()
    except Exception as exc:  # DockerException, requests errors, OSError, ...
        message = f"Docker engine not reachable: {type(exc).__name__}: {exc}"
        if docker_required():
            pytest.fail(
                message + " (required: DOCKYARD_REQUIRE_DOCKER=1 or CI=true)", pytrace=False
            )
        pytest.skip(message)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def test_image(docker_client: docker.DockerClient) -> str:
    """Name of the busybox test image (``dockyard-test-busybox:latest``), built if absent."""
    ensure_test_images(docker_client)
    return TEST_IMAGE


def _instance_containers(client: docker.DockerClient, instance: str) -> list[Any]:
    return list(
        client.containers.list(
            all=True, filters={"label": f"{LABEL_PREFIX}.router.instance={instance}"}
        )
    )


def _remove_container(container: Any) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: removal already in progress
            raise


def _remove_images_with_prefix(client: docker.DockerClient, prefix: str) -> None:
    # The plain list call: `images.list()` inspects each image, and one that another
    # client of a shared engine removes meanwhile answers 404.
    for image in client.api.images():
        for tag in image.get("RepoTags") or []:
            if tag.startswith(prefix):
                with contextlib.suppress(docker.errors.NotFound):
                    client.images.remove(tag, force=True)


@pytest.fixture
def instance_id(
    request: pytest.FixtureRequest, docker_client: docker.DockerClient
) -> Iterator[str]:
    """A unique router instance id, ``dockyard-test-<8 hex>``.

    Pass it as ``RouterConfig(router_instance_id=...)``. At teardown (after the
    fixtures that depend on it, e.g. a manager, are closed) every container labelled
    ``cascade.router.instance=<id>`` is force-removed, and the test fails if any was
    still there after a short grace period. ``@pytest.mark.allow_leftovers`` skips
    the failure (not the clean-up). Images named with :func:`snapshot_image_prefix`
    are removed as well.
    """
    suffix = uuid.uuid4().hex[:8]
    instance = f"dockyard-test-{suffix}"
    yield instance

    allow = request.node.get_closest_marker("allow_leftovers") is not None
    leftovers = _instance_containers(docker_client, instance)
    if leftovers and not allow:
        deadline = time.monotonic() + LEAK_GRACE_S
        # Only containers that are going away by themselves (exited, being removed)
        # are worth waiting for; a running one is a leak straight away.
        while any(c.status != "running" for c in leftovers) and time.monotonic() < deadline:
            time.sleep(0.1)
            leftovers = _instance_containers(docker_client, instance)
    described = []
    for container in leftovers:
        try:
            described.append(f"{container.name} ({container.short_id}, {container.status})")
        except Exception:
            described.append(str(container.id)[:12])
        _remove_container(container)
    _remove_images_with_prefix(docker_client, _snapshot_prefix_for(instance))
    if described and not allow:
        pytest.fail(
            f"leaked {len(described)} container(s) of router instance {instance}: "
            + ", ".join(described),
            pytrace=False,
        )


def _snapshot_prefix_for(instance: str) -> str:
    return "dockyard-test-snap-" + instance.rsplit("-", 1)[-1] + "-"


@pytest.fixture
def snapshot_image_prefix(instance_id: str) -> str:
    """A per-test snapshot image prefix, ``dockyard-test-snap-<8 hex>-``.

    Pass it as ``RouterConfig(snapshot_image_prefix=...)``; ``instance_id`` removes the
    images at teardown.
    """
    return _snapshot_prefix_for(instance_id)


# --------------------------------------------------------------------------- sentry


class CapturedEvents(list[dict[str, Any]]):
    """The events captured by the test transport (a plain list of event dicts)."""

    def with_source(self, source: str) -> list[dict[str, Any]]:
        """Events whose ``source`` tag equals ``source``."""
        return [e for e in list(self) if (e.get("tags") or {}).get("source") == source]

    def wait_for(
        self,
        source: str | None = None,
        *,
        count: int = 1,
        timeout: float = 5.0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` matching events arrived (from any thread); return them.

        Raises ``AssertionError`` on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            events = list(self) if source is None else self.with_source(source)
            if predicate is not None:
                events = [e for e in events if predicate(e)]
            if len(events) >= count:
                return events
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"expected {count} Sentry event(s) with source={source!r} within "
                    f"{timeout}s, got {len(events)}; all events: {list(self)!r}"
                )
            time.sleep(0.02)


CAPTURED_EVENTS = CapturedEvents()
_sentry_lock = threading.Lock()


class CapturingTransport(sentry_sdk.transport.Transport):
    """A sentry-sdk transport that keeps events in :data:`CAPTURED_EVENTS`; no network."""

    def capture_envelope(self, envelope: Any) -> None:
        event = envelope.get_event()
        if event is not None:
            CAPTURED_EVENTS.append(event)

    def flush(self, timeout: float, callback: Any | None = None) -> None:
        return None

    def kill(self) -> None:
        return None


def init_test_sentry() -> None:
    """Initialise the real sentry-sdk once per process with :class:`CapturingTransport`."""
    with _sentry_lock:
        if isinstance(sentry_sdk.get_client().transport, CapturingTransport):
            return
        sentry_sdk.init(
            dsn="https://public@example.invalid/1",
            transport=CapturingTransport,
            default_integrations=False,
            auto_enabling_integrations=False,
            auto_session_tracking=False,
            send_client_reports=False,
            enable_backpressure_handling=False,
            traces_sample_rate=None,
            release="dockyard-tests",
            environment="test",
            server_name="dockyard-test",
            sample_rate=1.0,
            debug=False,
        )


@pytest.fixture
def sentry_events() -> Iterator[CapturedEvents]:
    """The Sentry events captured during this test, as a ``list[dict]``.

    The real sentry-sdk is initialised (once per session) with a transport that
    appends ``envelope.get_event()`` to this list; nothing goes to the network.
    ``sentry_events.with_source("worker_exit")`` filters by the ``source`` tag and
    ``sentry_events.wait_for("worker_timeout")`` waits for background events.
    """
    init_test_sentry()
    CAPTURED_EVENTS.clear()
    yield CAPTURED_EVENTS
    CAPTURED_EVENTS.clear()


# --------------------------------------------------------------------------- threads


class ThreadBaseline:
    """The threads alive at set-up, to find threads a test left behind."""

    def __init__(self) -> None:
        self.before: frozenset[threading.Thread] = frozenset(threading.enumerate())

    def new_threads(self, timeout: float = 2.0) -> list[threading.Thread]:
        """Threads started since set-up that are still alive after up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            extra = [t for t in threading.enumerate() if t not in self.before and t.is_alive()]
            if not extra or time.monotonic() >= deadline:
                return extra
            for thread in extra:
                thread.join(max(0.0, min(0.05, deadline - time.monotonic())))

    def assert_no_new_threads(self, timeout: float = 2.0) -> None:
        """Fail when threads started since set-up are still alive after ``timeout`` s."""
        extra = self.new_threads(timeout)
        assert not extra, "threads left behind: " + ", ".join(
            f"{t.name} (daemon={t.daemon})" for t in extra
        )


@pytest.fixture
def thread_baseline() -> ThreadBaseline:
    """A :class:`ThreadBaseline` taken at set-up (before the test's own fixtures).

    Request it *before* fixtures that start threads, then call
    ``thread_baseline.assert_no_new_threads()`` after closing them.
    """
    return ThreadBaseline()


# --------------------------------------------------------------------------- managers


class ManagerFactory:
    """``factory(**overrides) -> ContainerManager`` from base settings; `close_all` at teardown.

    The keyword arguments named in ``manager_kwargs`` go to the manager itself (``defaults``
    fill the ones not given); every other one overrides a ``RouterConfig`` field.
    """

    def __init__(
        self, settings: dict[str, Any], manager_kwargs: tuple[str, ...], **defaults: Any
    ) -> None:
        self.settings = settings
        self.manager_kwargs = manager_kwargs
        self.defaults = defaults
        self.made: list[Any] = []

    def __call__(self, **overrides: Any) -> Any:
        from dockyard import ContainerManager, RouterConfig  # noqa: PLC0415 - only managers need it

        kwargs = {name: overrides.pop(name) for name in self.manager_kwargs if name in overrides}
        for name, value in self.defaults.items():
            kwargs.setdefault(name, value)
        manager = ContainerManager(RouterConfig(**{**self.settings, **overrides}), **kwargs)
        self.made.append(manager)
        return manager

    def close_all(self) -> None:
        for manager in reversed(self.made):
            manager.close()


@pytest.fixture
def make_manager(
    instance_id: str, test_image: str, snapshot_image_prefix: str
) -> Iterator[Callable[..., Any]]:
    """A factory ``make_manager(**config_overrides) -> ContainerManager`` on the real engine.

    The config runs the test image under this test's ``instance_id`` and
    ``snapshot_image_prefix`` with ``stop_grace_s=1``, ``worker_memory_mb=64`` and
    ``slot_wait_timeout_s=30``; keyword arguments override any ``RouterConfig`` field.
    ``listener``, ``credentials``, ``projects``, ``job_data_store``, ``reporter`` and
    ``docker_client`` go to the manager itself. Every manager made is closed at teardown,
    before ``instance_id`` looks for leaked containers.
    """
    make = ManagerFactory(
        {
            "worker_image": test_image,
            "router_instance_id": instance_id,
            "snapshot_image_prefix": snapshot_image_prefix,
            "stop_grace_s": 1,
            "worker_memory_mb": 64,
            "slot_wait_timeout_s": 30,
        },
        ("listener", "credentials", "projects", "job_data_store", "reporter", "docker_client"),
    )
    yield make
    make.close_all()


# -- the fault-injection proxy between docker-py and the engine ----------------------------


def engine_socket() -> str:
    """The engine's unix socket path (DOCKER_HOST when it names one)."""
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://") :] if host.startswith("unix://") else "/var/run/docker.sock"


@pytest.fixture
def proxy_seed() -> int:
    """Seed of the proxy's random faults; a test module overrides it to vary them."""
    return 0


@pytest.fixture
def proxy(docker_client: docker.DockerClient, proxy_seed: int) -> Iterator[FaultProxy]:
    """A started `FaultProxy` in front of the engine, stopped at teardown."""
    started = FaultProxy(upstream=engine_socket(), seed=proxy_seed).start()
    yield started
    started.stop()


@pytest.fixture
def proxied(proxy: FaultProxy) -> Iterator[docker.APIClient]:
    """A docker-py API client that talks to the engine through `proxy`."""
    api = docker.APIClient(base_url=proxy.base_url, timeout=30, max_pool_size=64)
    yield api
    api.close()


# -- helper servers (redis-server, docker-registry, metrics endpoints) -------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a helper server, killing it when it does not stop within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def missing_tool(message: str, installs: str) -> NoReturn:
    """Skip for a helper tool that is not installed; fail where the run requires it (CI)."""
    if docker_required():
        pytest.fail(f"{message} (required on CI: .ci/run installs {installs})", pytrace=False)
    pytest.skip(message)


def eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``predicate`` every 20 ms until it holds; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def other_instance(instance_id: str, docker_client: docker.DockerClient) -> Iterator[str]:
    """A second router instance id on the same engine; its containers are removed after."""
    other = f"{instance_id}-b"
    yield other
    for container in docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_PREFIX}.router.instance={other}"}
    ):
        _remove_container(container)  # 409 (auto-removal under way) and 404 are fine


# -- a fixed project directory -------------------------------------------------------------


class StaticProjects:
    """A project directory holding exactly the projects it was given."""

    def __init__(self, *projects: ProjectConfig) -> None:
        self.projects = list(projects)

    def list_projects(self) -> list[ProjectConfig]:
        return list(self.projects)

    def find_project_by_repo(self, repo_full_name: str) -> ProjectConfig | None:
        return next((p for p in self.projects if p.repo_full_name == repo_full_name), None)


class RecordingStore:
    """A job-data store that keeps the ids it was given and answers ``jobdata:<id>``."""

    def __init__(self) -> None:
        self.puts: list[str] = []

    def put(self, job_id: str, payload: bytes) -> str:
        self.puts.append(job_id)
        return f"jobdata:{job_id}"


def snapshot_worker() -> ActiveWorker:
    """A snapshot-enabled worker record for project ``p``, work item ``w`` (no container)."""
    now = datetime.now(UTC)
    return ActiveWorker(
        job_id="j",
        container_id="c" * 64,
        container_name="n",
        image="base",
        started_at=now,
        deadline=now,
        project_id="p",
        work_item_id="w",
        job_type="trello",
        snapshot_enabled=True,
    )


# -- what dockyard logs ----------------------------------------------------------------------


class LogCapture(logging.Handler):
    """Keeps every record a ``dockyard`` logger emits, at any level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[str]:
        """Everything a formatter or a structured log shipper could see of each record."""
        formatter = logging.Formatter()
        out = []
        for record in list(self.records):
            parts = [record.getMessage()]
            parts += [f"{key}={value!r}" for key, value in vars(record).items()]
            if record.exc_info:
                parts.append(formatter.formatException(record.exc_info))
            if record.stack_info:
                parts.append(record.stack_info)
            out.append("\n".join(parts))
        return out


@pytest.fixture
def dockyard_logs() -> Iterator[LogCapture]:
    """A `LogCapture` on the ``dockyard`` logger at DEBUG, removed at teardown."""
    logger = logging.getLogger("dockyard")
    handler = LogCapture()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# -- lifecycle listeners that record what they are told ------------------------------------


class RecordingListener(WorkerLifecycleListener):
    """Keeps every lifecycle call, in order, from whatever thread it arrives."""

    def __init__(self, on_started: Callable[[ActiveWorker], None] | None = None) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self._on_started = on_started
        self._cond = threading.Condition()

    def on_worker_started(self, worker: ActiveWorker) -> None:
        if self._on_started is not None:
            self._on_started(worker)
        with self._cond:
            self.events.append(("started", worker.job_id, worker))
            self._cond.notify_all()

    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        with self._cond:
            self.events.append(("finished", worker.job_id, outcome))
            self._cond.notify_all()

    def of(self, job_id: str) -> list[str]:
        with self._cond:
            return [kind for kind, jid, _ in self.events if jid == job_id]

    def started_order(self) -> list[str]:
        with self._cond:
            return [jid for kind, jid, _ in self.events if kind == "started"]

    def finished(self, job_id: str) -> list[WorkerOutcome]:
        with self._cond:
            return [o for kind, jid, o in self.events if kind == "finished" and jid == job_id]

    def wait_finished(self, job_id: str, timeout: float = 30.0) -> WorkerOutcome:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.finished(job_id), timeout)
            assert ok, f"no on_worker_finished for {job_id} within {timeout}s: {self.events!r}"
            return self.finished(job_id)[0]


class Recorder(WorkerLifecycleListener):
    """Lifecycle calls per job id, and orphans stopped, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.finished: list[tuple[str, WorkerOutcome]] = []
        self.orphans: list[tuple[str, dict[str, str]]] = []

    def on_worker_started(self, worker: Any) -> None:
        with self.lock:
            self.started.append(worker.job_id)

    def on_worker_finished(self, worker: Any, outcome: WorkerOutcome) -> None:
        with self.lock:
            self.finished.append((worker.job_id, outcome))

    def on_orphan_stopped(self, container_id: str, labels: dict[str, str]) -> None:
        with self.lock:
            self.orphans.append((container_id, labels))

    def outcomes(self, job_id: str) -> list[WorkerOutcome]:
        with self.lock:
            return [outcome for jid, outcome in self.finished if jid == job_id]


# -- a load run under injected faults (the engine's and the swarm's) -------------------------

LOAD_TIMEOUT_EVERY = 10  # every tenth job overruns its project's 1 s watchdog
LOAD_SLOW_PROJECT = ProjectConfig(id="slow", watchdog_timeout_s=1.0)
LOAD_QUICK = ["sh", "-c", "sleep 0.$((RANDOM % 5)); exit $((RANDOM % 2))"]
LOAD_OVERRUN = ["sh", "-c", "trap 'exit 143' TERM; sleep 60 & wait"]


class LoadProjects:
    """Projects of a load run: only the slow one its overrunning jobs belong to."""

    def list_projects(self) -> Sequence[ProjectConfig]:
        return [LOAD_SLOW_PROJECT]

    def find_project_by_repo(self, repo_full_name: str) -> ProjectConfig | None:
        return None


class LoadRecorder(WorkerLifecycleListener):
    """How often each job was started, and every outcome it was given, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: collections.Counter[str] = collections.Counter()
        self.finished: dict[str, list[WorkerOutcome]] = collections.defaultdict(list)

    def on_worker_started(self, worker: Any) -> None:
        with self.lock:
            self.started[worker.job_id] += 1

    def on_worker_finished(self, worker: Any, outcome: WorkerOutcome) -> None:
        with self.lock:
            self.finished[worker.job_id].append(outcome)


LoadResult = WorkerOutcome | BaseException


def split_load_results(
    results: dict[str, LoadResult],
) -> tuple[dict[str, WorkerOutcome], dict[str, BaseException]]:
    """A load run's results as (outcomes, spawn errors), each by job id."""
    outcomes = {j: r for j, r in results.items() if isinstance(r, WorkerOutcome)}
    errors = {j: r for j, r in results.items() if not isinstance(r, WorkerOutcome)}
    return outcomes, errors


def assert_each_job_ended_once(
    recorder: LoadRecorder,
    outcomes: dict[str, WorkerOutcome],
    errors: dict[str, BaseException],
    typed_errors: tuple[type[BaseException], ...],
    *,
    failed_exit_code_known: bool,
) -> None:
    """A started job was started once and got one outcome, the one its kind allows (ids
    ending in 9 overrun); a refused job raised a typed error and never started."""
    with recorder.lock:
        started = dict(recorder.started)
        finished = {j: list(v) for j, v in recorder.finished.items()}
    for job_id, outcome in outcomes.items():
        assert started.get(job_id) == 1, job_id
        assert finished.get(job_id) == [outcome], f"{job_id}: {finished.get(job_id)}"
        overrun = job_id.endswith("9")
        if outcome.status == "succeeded":
            assert outcome.exit_code == 0 and not overrun, outcome
        elif outcome.status == "failed" and failed_exit_code_known:
            assert outcome.exit_code not in (None, 0) and not overrun, outcome
        elif outcome.status == "timed_out":
            assert overrun, outcome
    for job_id, err in errors.items():
        assert isinstance(err, typed_errors), f"{job_id}: {err!r}"
        assert job_id not in started and job_id not in finished, job_id


def load_job(prefix: str, index: int) -> WorkerJob:
    """The load run's job ``index``: every tenth (ids ending in 9) overruns its watchdog."""
    overrun = index % LOAD_TIMEOUT_EVERY == LOAD_TIMEOUT_EVERY - 1
    return WorkerJob(
        id=f"{prefix}-{index:03d}",
        type="load",
        project_id=LOAD_SLOW_PROJECT.id if overrun else None,
        command=LOAD_OVERRUN if overrun else LOAD_QUICK,
    )


def add_load_faults(
    proxy: FaultProxy,
    faults: Sequence[tuple[str, float, float]],
    match: Callable[[str, str], bool],
    message: str,
) -> list[FaultRule]:
    """One random 500/cut rule per ``(action, probability, delay_s)``, on every matching call."""
    return [
        proxy.add_rule(
            FaultRule(
                op="any",
                action=action,
                status=500,
                message=message,
                delay_s=delay_s,
                times=None,
                match=match,
                probability=probability,
            )
        )
        for action, probability, delay_s in faults
    ]

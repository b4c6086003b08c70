"""A minimal job router embedding dockyard: jobs from a Redis list, outcomes back to Redis.

    WORKER_IMAGE=my-worker:latest python3 examples/router.py --redis-url redis://localhost:6379

Jobs are JSON objects pushed onto the list ``dockyard:jobs`` (``RPUSH``; ``--queue``)::

    {"id": "job-1", "type": "demo", "data": {...},
     "projectId": "...", "workItemId": "...", "agentType": "...", "command": ["sh", "-c", "..."]}

(everything but ``id`` and ``type`` optional). Each job runs in its own container. Its
outcome is written to the hash ``dockyard:outcomes`` (``--outcomes``), field = job id,
value = JSON with ``status`` (``succeeded``, ``failed``, ``timed_out``, ``lost``, or
``rejected`` when the job could not be run), ``exit_code``, ``oom_killed``, ``description``
and more. While a job runs it is listed in the hash ``dockyard:running`` (``--running``).

Each job's output is kept next to its outcome: the list ``dockyard:output:<job id>``
(``--output-prefix``), one JSON ``{"stream": "stdout"|"stderr", "line": ...}`` per line,
oldest first. The whole output is kept up to ``--output-lines`` lines (default 100,000, or
``$ROUTER_OUTPUT_LINES``; 0 keeps none); past that, the oldest lines go, so the list holds
the last N. Size Redis for it: a line is up to 64 KiB (dockyard splits longer ones). The
lines come masked from dockyard (no secret of the job or the router), and the outcome
record names the list as ``output_key``. A line can arrive shortly after the outcome; it
is appended all the same. Lines dockyard dropped because Redis fell behind (its
``dockyard_log_lines_dropped_total``) are missing from the list.

The list is emptied when this router launches the job (a rerun of a job id starts afresh),
not when it adopts the job's running worker after a restart: the adopter goes on after the
last line the previous router stored (dockyard follows the worker's log from there), so
the list holds the lines from before the restart and after it, in order, none twice. After
a crash (no clean stop) the lines of up to about a second before it can be stored twice.

At start the router adopts the still-running workers of its instance id (so a restart loses
no outcome), registers the snapshot images already on the engine, and starts the orphan and
snapshot cleanup loops. SIGTERM or SIGINT stops it cleanly: no new jobs, running containers
are detached (not killed; the next router with the same instance id adopts them), exit 0.

Configuration comes from the environment through ``RouterConfig.from_env()``:
``WORKER_IMAGE``, ``MAX_WORKERS``, ``WORKER_MEMORY_MB``, ``WORKER_TIMEOUT_MS``,
``CASCADE_ROUTER_INSTANCE``, ``SNAPSHOT_ENABLED``, ... and ``REDIS_URL`` (``--redis-url``
overrides it). With ``SENTRY_DSN`` set, the router initialises Sentry: that is the host's
job, dockyard only reports through it.

With ``--metrics-port PORT`` (or ``DOCKYARD_METRICS_PORT``) the router serves Prometheus
metrics at ``http://127.0.0.1:PORT/metrics`` (``--metrics-address`` to listen elsewhere;
needs ``pip install 'dockyard[metrics]'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING

import redis

from dockyard import (
    ActiveWorker,
    ConfigError,
    ContainerManager,
    DockerUnavailableError,
    DuplicateJobError,
    InvalidJobError,
    NoWorkerSlotError,
    RedisJobDataStore,
    RouterConfig,
    WorkerImageResolutionError,
    WorkerJob,
    WorkerLifecycleListener,
    WorkerOutcome,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("router")

POP_TIMEOUT_S = 1  # how often the consumer loop looks at the stop flag
DEFAULT_OUTPUT_LINES = 100_000
SLOT_POLL_S = 1.0  # likewise while every worker slot is busy
JOB_KEYS = frozenset({"id", "type", "data", "projectId", "workItemId", "agentType", "command"})


def job_from_message(raw: str) -> WorkerJob:
    """A queue message as a `WorkerJob`; `ValueError` names what is wrong with it."""
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err.msg}") from None
    if not isinstance(message, dict):
        raise ValueError("a job must be a JSON object")
    unknown = sorted(set(message) - JOB_KEYS)
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(unknown)}")
    job_id, job_type = message.get("id"), message.get("type")
    if not isinstance(job_id, str | int) or isinstance(job_id, bool) or not str(job_id):
        raise ValueError('"id" must be a non-empty string or an integer')
    if not isinstance(job_type, str) or not job_type:
        raise ValueError('"type" must be a non-empty string')
    command = message.get("command")
    if command is not None and not (
        isinstance(command, list) and all(isinstance(arg, str) for arg in command)
    ):
        raise ValueError('"command" must be a list of strings')
    data = message.get("data", {})
    if not isinstance(data, dict):
        raise ValueError('"data" must be a JSON object')
    return WorkerJob(
        id=str(job_id),
        type=job_type,
        data=data,
        project_id=_optional_text(message.get("projectId")),
        work_item_id=_optional_text(message.get("workItemId")),
        agent_type=_optional_text(message.get("agentType")),
        command=command,
    )


def _optional_text(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    return str(value) if isinstance(value, str | int) and str(value) else None


def _message_id(raw: str) -> str:
    """Best effort: the id of a message that could not be parsed, for its rejection record."""
    try:
        message = json.loads(raw)
    except ValueError:
        return "unparseable"
    job_id = message.get("id") if isinstance(message, dict) else None
    return str(job_id) if isinstance(job_id, str | int) and str(job_id) else "unparseable"


class RedisOutcomes(WorkerLifecycleListener):
    """Writes what happens to each job back to Redis; runs on dockyard's threads."""

    def __init__(
        self,
        client: redis.Redis[str],
        outcomes_key: str,
        running_key: str,
        output_prefix: str = "dockyard:output:",
        output_lines: int = DEFAULT_OUTPUT_LINES,
    ) -> None:
        self._client = client
        self._outcomes_key = outcomes_key
        self._running_key = running_key
        self._output_prefix = output_prefix
        self._output_lines = output_lines
        # Jobs this router is launching (not adopting): their started hook empties the list.
        self._launching: set[str] = set()
        self._launching_lock = threading.Lock()

    def output_key(self, job_id: str) -> str:
        return self._output_prefix + job_id

    @contextmanager
    def launching(self, job_id: str) -> Iterator[None]:
        """Around `spawn_worker`: the job's `on_worker_started` is a fresh launch's. An
        adopted worker gets the same hook, and its list holds the previous router's lines."""
        with self._launching_lock:
            self._launching.add(job_id)
        try:
            yield
        finally:
            with self._launching_lock:
                self._launching.discard(job_id)

    def on_worker_started(self, worker: ActiveWorker) -> None:
        record = {
            "job_id": worker.job_id,
            "container_name": worker.container_name,
            "image": worker.image,
            "started_at": worker.started_at.isoformat(),
            "deadline": worker.deadline.isoformat(),
        }
        with self._launching_lock:
            fresh = worker.job_id in self._launching
        pipe = self._client.pipeline()
        if fresh:
            pipe.delete(self.output_key(worker.job_id))  # lines come only after this hook
        pipe.hset(self._running_key, worker.job_id, json.dumps(record))
        pipe.execute()

    def on_worker_output(self, worker: ActiveWorker, stream: str, line: str) -> None:
        # On dockyard's output threads, in order per job. A slow Redis only costs lines:
        # past dockyard's queue they are dropped (dockyard_log_lines_dropped_total).
        if self._output_lines <= 0:
            return
        key = self.output_key(worker.job_id)
        pipe = self._client.pipeline(transaction=False)
        pipe.rpush(key, json.dumps({"stream": stream, "line": line}, ensure_ascii=False))
        pipe.ltrim(key, -self._output_lines, -1)
        pipe.execute()

    def on_worker_finished(self, worker: ActiveWorker, outcome: WorkerOutcome) -> None:
        record = outcome.to_dict() | {
            "description": outcome.describe(),
            "container_name": worker.container_name,
            "finished_at": datetime.now(UTC).isoformat(),
            "output_key": self.output_key(worker.job_id),
        }
        pipe = self._client.pipeline()  # MULTI/EXEC: a job is never in both hashes or neither
        pipe.hset(self._outcomes_key, worker.job_id, json.dumps(record))
        pipe.hdel(self._running_key, worker.job_id)
        pipe.execute()
        log.info("job %s: %s", worker.job_id, outcome.describe())

    def on_orphan_stopped(self, container_id: str, labels: dict[str, str]) -> None:
        log.warning("stopped an orphaned worker container %s", container_id[:12])

    def rejected(self, job_id: str, reason: str) -> None:
        record = {"job_id": job_id, "status": "rejected", "error": reason}
        self._client.hset(self._outcomes_key, job_id, json.dumps(record))
        log.warning("job %s rejected: %s", job_id, reason)


class Router:
    """Takes jobs off the queue and spawns them until `stop` is set."""

    def __init__(
        self,
        manager: ContainerManager,
        client: redis.Redis[str],
        queue: str,
        outcomes: RedisOutcomes,
        stop: threading.Event,
    ) -> None:
        self._manager = manager
        self._client = client
        self._queue = queue
        self._outcomes = outcomes
        self._stop = stop

    def serve(self) -> None:
        while not self._stop.is_set():
            try:
                popped = self._client.blpop([self._queue], timeout=POP_TIMEOUT_S)
            except redis.ConnectionError as err:
                log.warning("redis unreachable, retrying: %s", err)
                self._stop.wait(POP_TIMEOUT_S)
                continue
            if popped is not None:
                self._handle(popped[1])

    def _handle(self, raw: str) -> None:
        try:
            job = job_from_message(raw)
        except ValueError as err:
            self._outcomes.rejected(_message_id(raw), str(err))
            return
        assert job.id is not None
        while not self._stop.is_set():
            try:
                with self._outcomes.launching(job.id):
                    worker = self._manager.spawn_worker(job, slot_timeout=SLOT_POLL_S)
            except NoWorkerSlotError:
                continue  # every slot busy: check the stop flag, then wait again
            except (InvalidJobError, WorkerImageResolutionError, DuplicateJobError) as err:
                self._outcomes.rejected(job.id, f"{type(err).__name__}: {err}")
            except Exception as err:
                # dockyard has reported it to Sentry; a real router would retry with back-off.
                log.exception("job %s could not be started", job.id)
                self._outcomes.rejected(job.id, f"spawn failed: {type(err).__name__}: {err}")
            else:
                log.info("job %s started as %s", job.id, worker.container_name)
            return
        # Stopping while the job waited for a slot: give it back, at the head of the queue.
        self._client.lpush(self._queue, raw)
        log.info("job %s returned to the queue", job.id)


def init_sentry(environ: Mapping[str, str]) -> None:
    """The host initialises Sentry; dockyard only reports through the SDK."""
    dsn = environ.get("SENTRY_DSN")
    if not dsn:
        return
    import sentry_sdk  # noqa: PLC0415  (only needed with a DSN)

    sentry_sdk.init(
        dsn=dsn,
        environment=environ.get("SENTRY_ENVIRONMENT"),
        release=environ.get("SENTRY_RELEASE"),
    )


def serve_metrics(port: int | None, address: str) -> CollectorRegistry | None:
    """A registry served on `port` for the router's lifetime (a daemon thread); None without."""
    if port is None:
        return None
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

    registry = CollectorRegistry()
    start_http_server(port, addr=address, registry=registry)
    log.info("metrics at http://%s:%d/metrics", address, port)
    return registry


def _env_port(environ: Mapping[str, str]) -> int | None:
    value = environ.get("DOCKYARD_METRICS_PORT", "").strip()
    return int(value) if value else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A minimal dockyard router fed by Redis.")
    parser.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL)")
    parser.add_argument("--queue", default="dockyard:jobs", help="list to take jobs from")
    parser.add_argument("--outcomes", default="dockyard:outcomes", help="hash of outcomes")
    parser.add_argument("--running", default="dockyard:running", help="hash of running jobs")
    parser.add_argument(
        "--output-prefix",
        default="dockyard:output:",
        help="each job's output lines go to the list PREFIX<job id>",
    )
    parser.add_argument(
        "--output-lines",
        type=int,
        default=int(os.environ.get("ROUTER_OUTPUT_LINES", str(DEFAULT_OUTPUT_LINES))),
        metavar="N",
        help=(
            "keep each job's whole output up to N lines, then its last N "
            f"(default: $ROUTER_OUTPUT_LINES or {DEFAULT_OUTPUT_LINES:,}; 0 keeps none)"
        ),
    )
    parser.add_argument("--orphan-interval", type=float, default=300.0, metavar="S")
    parser.add_argument("--snapshot-interval", type=float, default=300.0, metavar="S")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=_env_port(os.environ),
        metavar="PORT",
        help="serve Prometheus /metrics on PORT (default: $DOCKYARD_METRICS_PORT; off if unset)",
    )
    parser.add_argument("--metrics-address", default="127.0.0.1", metavar="ADDR")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    init_sentry(os.environ)

    try:
        config = RouterConfig.from_env()
        if args.redis_url:  # dockyard's own keys (output marks, large payloads) go there too
            config = dataclasses.replace(config, redis_url=args.redis_url)
    except ConfigError as err:
        log.error("configuration: %s", err)
        return 2
    client = redis.Redis.from_url(config.redis_url, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as err:
        log.error("redis unreachable: %s", err)
        return 2

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    outcomes = RedisOutcomes(
        client, args.outcomes, args.running, args.output_prefix, args.output_lines
    )
    # Payloads too large for the environment go to Redis; the worker reads JOB_DATA_REDIS_KEY.
    job_data = RedisJobDataStore(client)
    try:
        metrics = serve_metrics(args.metrics_port, args.metrics_address)
    except OSError as err:
        log.error("metrics endpoint: %s", err)
        return 2
    try:
        manager = ContainerManager(
            config, listener=outcomes, job_data_store=job_data, metrics_registry=metrics
        )
    except DockerUnavailableError as err:
        log.error("%s", err)
        return 2
    try:
        adopted = manager.adopt_workers()
        log.info(
            "router %s up: image %s, up to %d workers; adopted %d running worker(s)",
            config.router_instance_id,
            config.worker_image,
            config.max_workers,
            len(adopted),
        )
        manager.sync_snapshots_from_docker()
        manager.start_orphan_cleanup(args.orphan_interval)
        manager.start_snapshot_cleanup(args.snapshot_interval)
        Router(manager, client, args.queue, outcomes, stop).serve()
    finally:
        running = manager.get_active_workers()
        manager.detach_all()  # the containers keep running; the next start adopts them
        manager.close()
        client.close()
        if running:
            names = ", ".join(worker.container_name for worker in running)
            log.info("detached from %d running worker(s): %s", len(running), names)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Exit waits: one engine events stream per gateway, dispatching each `die` to its ticket.

A daemon thread reads `GET /events` (container `start`/`oom`/`die` only) with a read
timeout, the heartbeat. A `die` carries the exit's facts as the events told them: the exit
code, an OOM kill when an `oom` event came first (Docker sends one; Podman does not), and
the run's start and end times (the `start` and `die` events' engine times), so an exit is
known whole even when the engine removes the container before anyone inspects it. An idle
timeout reconnects with `since=` a little before the last moment the old stream covered, so
the engine replays whatever happened in the gap and whatever it delivers late (events are
idempotent here). A real stream error fails every
outstanding ticket (their owners re-inspect and wait again) and reconnects with back-off.
Tickets are plain futures: closing one touches no socket, and a short memory of recent
exits answers a ticket registered just after its container died.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol

from cachetools import TTLCache

from ._driver import ExitResult
from ._errors import (
    DockerUnavailableError,
    ExitWaitClosedError,
    RetriesExhaustedError,
    StreamIdle,
    copy_error,
)
from ._retry import RetryPolicy, RetryState
from ._times import parse_docker_time

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["EventStream", "ExitMonitor", "ExitWait", "exit_result_of"]

log = logging.getLogger("dockyard.docker")

# Reconnecting the stream: every failure is retried, for as long as the monitor lives.
RECONNECT_RETRY = RetryPolicy(retry_on=(Exception,), first_delay_s=0.1, max_delay_s=5.0)
_REMEMBERED_EXITS = 4096
_EXIT_MEMORY_S = 120.0


class EventStream(Protocol):
    """One connected events stream, as the gateway opened it."""

    server_time: float | None  # the engine's clock when it answered (its `Date` header)

    def events(self) -> Iterator[dict[str, Any]]:
        """Decoded events; raises `StreamIdle` after a quiet heartbeat, typed errors else."""
        ...

    def interrupt(self) -> None:
        """Wake a blocked `events()` from another thread, when the transport allows it."""
        ...

    def close(self) -> None: ...


# How far before the last moment seen a reconnect asks for a replay: a loaded Podman delivers
# events seconds late (200 workers killed at once: die events stamped before a reconnect
# came after it, unseen, and their exits were waited for forever).
_LATE_EVENTS_NS = 10 * 1_000_000_000


class ExitWait:
    """A ticket for one container's next exit (a small future).

    `result()` blocks until the exit and returns its `ExitResult` (`oom_killed` True when
    the engine reported an OOM kill first, else unknown; the run's times when the events
    told them); it raises when the
    wait broke (the caller re-inspects and waits again) or was closed. `close()` wakes a
    blocked `result()` at once, from any thread.
    """

    def __init__(self, container_id: str, on_close: Callable[[ExitWait], None]) -> None:
        self.container_id = container_id
        self._on_close = on_close
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._exit: ExitResult | None = None
        self._error: BaseException | None = None
        self._closed = False

    def result(self) -> ExitResult:
        """Block until the container exits; what the engine said of the exit."""
        self._done.wait()
        with self._lock:
            if self._closed:
                raise ExitWaitClosedError(f"exit wait of {self.container_id[:12]} was closed")
            if self._error is not None:
                raise DockerUnavailableError(
                    f"exit wait of {self.container_id[:12]} broke: {self._error}"
                ) from self._error
            return self._exit or ExitResult(None)

    def done(self) -> bool:
        return self._done.is_set()

    def exited_within(self, timeout_s: float) -> bool:
        """Whether the exit came within `timeout_s` (False: the time ran out first, or the
        wait broke or was closed)."""
        if not self._done.wait(max(0.0, timeout_s)):
            return False
        with self._lock:
            return not self._closed and self._error is None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Drop the wait; a blocked `result()` raises at once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._done.set()
        self._on_close(self)

    def _resolve(self, result: ExitResult) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._exit = result
            self._done.set()

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._error = error
            self._done.set()


class ExitMonitor:
    """Owns the events stream and the tickets waiting on it."""

    def __init__(
        self,
        open_stream: Callable[[str | None], EventStream],
        *,
        connect_timeout_s: float,
        name: str = "dockyard-exit-events",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open_stream = open_stream
        self._connect_timeout_s = connect_timeout_s
        self._name = name
        self._clock = clock
        self._cond = threading.Condition()
        self._tickets: dict[str, list[ExitWait]] = {}
        self._exits: TTLCache[str, ExitResult] = TTLCache(_REMEMBERED_EXITS, _EXIT_MEMORY_S)
        self._oom: TTLCache[str, bool] = TTLCache(_REMEMBERED_EXITS, _EXIT_MEMORY_S)
        # Start times of the containers waited on (a `start` event, or an inspect's): kept
        # until their exit, for as long as the run lasts.
        self._starts: dict[str, datetime] = {}
        self._healthy = False  # a stream is connected, or an idle reconnect replays the gap
        self._last_error: BaseException | None = None
        self._since_ns: int | None = None  # engine time (ns) up to which events were seen
        self._stream: EventStream | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._retry_now = threading.Event()  # set: skip the back-off (or stop)
        self._attempts = 0  # connection attempts ended, successful or not

    # -- tickets ------------------------------------------------------------------------

    def register(self, container_id: str) -> ExitWait:
        """A ticket for the container's next exit, once the stream is connected.

        When no stream is connected this waits for one connection attempt (a back-off in
        progress is cut short), so a hung engine costs one heartbeat, not the whole
        back-off. Raises that attempt's typed error (or `DockerUnavailableError`) when it
        fails or does not end within the connect timeout.
        """
        ticket = ExitWait(container_id, self._forget)
        with self._cond:
            if self._stopping.is_set():
                raise DockerUnavailableError("the Docker gateway is closed")
            remembered = self._exits.get(container_id)
            if remembered is not None:
                ticket._resolve(remembered)
                return ticket
            self._tickets.setdefault(container_id, []).append(ticket)
            self._ensure_thread()
            attempts = self._attempts
            self._retry_now.set()  # a reader backing off tries again at once
            deadline = self._clock() + self._connect_timeout_s
            while not (
                self._healthy
                or ticket.done()
                or self._stopping.is_set()
                or self._attempts > attempts
            ):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            healthy, error = self._healthy, self._last_error
        if self._stopping.is_set():
            ticket.close()
            raise DockerUnavailableError("the Docker gateway is closed")
        if ticket.done() and ticket._error is None:
            return ticket  # answered already (or closed by its owner)
        if healthy and not ticket.done():
            return ticket
        ticket.close()
        failure = ticket._error or error
        if failure is None:
            raise DockerUnavailableError(
                f"the engine's events stream did not connect within {self._connect_timeout_s:g}s"
            )
        raise copy_error(failure)  # shared: each raiser gets its own

    def note_start(self, container_id: str, started_at: datetime | None) -> None:
        """The container's start time as an inspect found it (an event's takes precedence)."""
        if started_at is None:
            return
        with self._cond:
            if container_id in self._tickets:
                self._starts.setdefault(container_id, started_at)

    def _forget(self, ticket: ExitWait) -> None:
        with self._cond:
            waiting = self._tickets.get(ticket.container_id)
            if waiting is not None and ticket in waiting:
                waiting.remove(ticket)
                if not waiting:
                    del self._tickets[ticket.container_id]
                    self._starts.pop(ticket.container_id, None)

    def resolve(self, container_id: str, result: ExitResult) -> None:
        """Answer the container's tickets (from an inspect that found it stopped)."""
        with self._cond:
            tickets = self._tickets.pop(container_id, [])
        for ticket in tickets:
            ticket._resolve(result)

    def remembered_exit(self, container_id: str) -> ExitResult | None:
        with self._cond:
            return self._exits.get(container_id)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self, join_s: float) -> None:
        """Stop the reader (joined within `join_s`) and close every outstanding ticket."""
        with self._cond:
            self._stopping.set()
            self._retry_now.set()
            self._cond.notify_all()
            stream, thread = self._stream, self._thread
            tickets = [t for waiting in self._tickets.values() for t in waiting]
            self._tickets.clear()
        for ticket in tickets:
            ticket.close()
        if stream is not None:
            stream.interrupt()
        if thread is not None and thread is not threading.current_thread():
            thread.join(join_s)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    # -- the reader ---------------------------------------------------------------------

    def _run(self) -> None:
        retry: RetryState | None = None  # begun at the first failure to connect
        while not self._stopping.is_set():
            since = _since_param(self._since_ns and self._since_ns - _LATE_EVENTS_NS)
            try:
                stream = self._open_stream(since)
            except Exception as err:  # whatever the failure, the reader reconnects
                self._broken(err)
                try:
                    retry = (retry or RECONNECT_RETRY.begin(self._stopping)).increment(err)
                except RetriesExhaustedError:
                    break  # closed meanwhile
                self._back_off(retry.delay)
                continue
            with self._cond:
                self._attempts += 1
                self._stream = stream
                if stream.server_time is not None:
                    start_ns = int(stream.server_time) * 1_000_000_000
                    self._since_ns = max(self._since_ns or 0, start_ns)
                self._healthy = True
                self._last_error = None
                self._cond.notify_all()
            if self._stopping.is_set():  # closed while connecting: `close` saw no stream
                stream.close()
                break
            retry = None  # connected: back-offs start over
            error = self._read(stream)
            with self._cond:
                self._stream = None
            stream.close()
            if error is not None and not self._stopping.is_set():
                self._broken(error)
                self._back_off(RECONNECT_RETRY.delay(0))

    def _back_off(self, delay_s: float) -> None:
        """Wait before reconnecting; a new ticket (or `close`) ends the wait early."""
        self._retry_now.wait(delay_s)
        self._retry_now.clear()

    def _read(self, stream: EventStream) -> BaseException | None:
        """Dispatch events until the stream ends; None for an idle timeout."""
        try:
            for event in stream.events():
                try:
                    self._dispatch(event)
                except Exception:  # one odd event must not break (and replay) the stream
                    log.debug("ignoring an unreadable engine event", exc_info=True)
        except StreamIdle:
            return None
        except Exception as err:  # any failure of the stream breaks it: reconnect
            return err
        return DockerUnavailableError("the engine ended the events stream")

    def _dispatch(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        container_id = str(actor.get("ID") or event.get("id") or "")
        action = str(event.get("Action") or event.get("status") or "")
        nanos = _event_nanos(event)
        if nanos is not None:
            with self._cond:
                self._since_ns = max(self._since_ns or 0, nanos)
        if not container_id:
            return
        if action == "oom":
            with self._cond:
                self._oom[container_id] = True
            return
        moment = _moment(nanos)
        if action == "start":
            with self._cond:
                if container_id in self._tickets and moment is not None:
                    self._starts[container_id] = moment
            return
        if action != "die":
            return
        code = _exit_code((actor.get("Attributes") or {}).get("exitCode"))
        with self._cond:
            result = ExitResult(
                code,
                oom_killed=True if self._oom.pop(container_id, False) else None,
                started_at=self._starts.pop(container_id, None),
                finished_at=moment,
            )
            self._exits[container_id] = result
            tickets = self._tickets.pop(container_id, [])
        for ticket in tickets:
            ticket._resolve(result)

    def _broken(self, error: BaseException) -> None:
        """A real stream failure: every outstanding ticket fails, its owner re-inspects."""
        with self._cond:
            self._attempts += 1
            self._healthy = False
            self._last_error = error
            tickets = [t for waiting in self._tickets.values() for t in waiting]
            self._tickets.clear()
            # Their owners wait again after an inspect, which gives the start anew.
            self._starts.clear()
            self._cond.notify_all()
        if tickets or not isinstance(error, DockerUnavailableError):
            log.info("exit events stream broke; reconnecting", extra={"error": str(error)})
        for ticket in tickets:
            ticket._fail(error)


def exit_result_of(state: dict[str, Any]) -> ExitResult:
    """An inspect's `State` as an `ExitResult` (its start time even while it runs)."""
    code = state.get("ExitCode")
    oom = state.get("OOMKilled")
    return ExitResult(
        exit_code=code if isinstance(code, int) else None,
        oom_killed=oom if isinstance(oom, bool) else None,
        error=state.get("Error") or None,
        started_at=parse_docker_time(state.get("StartedAt")),
        finished_at=parse_docker_time(state.get("FinishedAt")),
    )


def _exit_code(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _event_nanos(event: dict[str, Any]) -> int | None:
    """The event's engine time in nanoseconds (`timeNano`, else the whole-second `time`)."""
    nanos = event.get("timeNano")
    if isinstance(nanos, int) and not isinstance(nanos, bool):
        return nanos
    seconds = event.get("time")
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        return seconds * 1_000_000_000
    return None


def _moment(nanos: int | None) -> datetime | None:
    if nanos is None or nanos <= 0:
        return None
    seconds, rest = divmod(nanos, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // 1000)


def _since_param(since_ns: int | None) -> str | None:
    """Docker's `since` as `seconds.nanoseconds` (events at that moment are replayed too)."""
    if since_ns is None:
        return None
    seconds, nanos = divmod(since_ns, 1_000_000_000)
    return f"{seconds}.{nanos:09d}"


def server_time_of(date_header: str | None) -> float | None:
    """The engine's clock from an HTTP `Date` header (whole seconds, rounded down)."""
    if not date_header:
        return None
    try:
        return parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return None


def decode_event(line: bytes | str) -> dict[str, Any] | None:
    """One JSON line of an engine stream as a dict; None for blank or unreadable lines."""
    text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
    if not text.strip():
        return None
    try:
        event = json.loads(text)
    except ValueError:
        log.debug("ignoring a line that is not JSON", extra={"line": text[:200]})
        return None
    return event if isinstance(event, dict) else None

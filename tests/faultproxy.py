"""A fault-injection proxy for the Docker Engine API, for tests.

:class:`FaultProxy` listens on a Unix socket and forwards every HTTP request to the real
engine socket, so ``docker.APIClient(base_url=proxy.base_url)`` or
``docker.DockerClient(base_url=proxy.base_url)`` behaves like a normal client. Tests add
:class:`FaultRule` objects to make chosen API calls fail, slow down or lose their
connection::

    with FaultProxy() as proxy:
        proxy.add_rule(FaultRule(op="create", action="fail", status=500))
        client = docker.APIClient(base_url=proxy.base_url)
        client.create_container("img")  # raises docker.errors.APIError (500)

Only the standard library is used: one daemon thread accepts connections, one daemon
thread serves each client connection. Each client connection carries exactly one request:
it is forwarded on a *new* upstream connection with ``Connection: close``, and the
response head sent back to the client says ``Connection: close`` too, so urllib3 opens a
fresh connection for its next request. Response bodies (chunked streams for ``wait``,
``logs``, ``events``, pulls) are relayed as raw bytes until the engine closes. Requests
carrying an ``Upgrade`` header (``exec_start``, ``attach``) are relayed in both
directions after the engine's ``101`` answer; a client that closes its writing half has
the engine's half closed too, one that closes the connection ends it.

Operations (:data:`OPS`), from method and path (an optional ``/v1.xx`` prefix and the
query string are ignored):

=============== =============================== ===============================
op              request                         docker-py calls
=============== =============================== ===============================
create          POST /containers/create         create_container, containers.create
start           POST /containers/{id}/start     start
wait            POST /containers/{id}/wait      wait
events          GET /events                     events
inspect         GET /containers/{id}/json       inspect_container, containers.get
stop            POST /containers/{id}/stop      stop
kill            POST /containers/{id}/kill      kill
remove          DELETE /containers/{id}         remove_container
commit          POST /commit                    commit
logs            GET /containers/{id}/logs       logs
list            GET /containers/json            containers, containers.list
pull            POST /images/create             pull
image_inspect   GET /images/{name}/json         inspect_image, images.get
image_remove    DELETE /images/{name}           remove_image
any             every request except the two below
=============== =============================== ===============================

``GET/HEAD /_ping`` and ``GET /version`` are never faulted (they are still recorded in
:attr:`FaultProxy.calls`). Other requests have the internal op ``"other"``: only an
``"any"`` rule applies to them.

Actions, and what docker-py 7.1 (requests 2.32, urllib3 2.x) raises for them. These were
checked against a real engine by ``tests/test_faultproxy.py``:

``fail``
    Answer ``status`` with the JSON body ``{"message": message}``; the engine never sees
    the request. docker-py raises ``docker.errors.APIError`` with ``status_code ==
    status`` and ``explanation == message``; a 404 raises ``docker.errors.NotFound``, or
    ``docker.errors.ImageNotFound`` when the message contains ``"No such image"``.
    (``pull(..., stream=True)`` raises too: the status is checked before streaming.)
``delay``
    Sleep ``delay_s``, then forward normally. No exception, unless the client's own
    ``timeout`` is shorter: then ``requests.exceptions.ReadTimeout`` (no response head
    arrived yet). Note that a read timeout *after* the head, e.g. during a blocked
    ``wait``, is ``requests.exceptions.ConnectionError`` instead.
``cut``
    Read the request, sleep ``delay_s`` (default 0), close the client connection without
    answering; the engine never sees the request. docker-py raises
    ``requests.exceptions.ConnectionError`` ("Connection aborted.",
    ``RemoteDisconnected``). For the streams ``wait`` and ``events`` only: forward the
    request (the engine starts waiting), then cut the connection ``delay_s`` after
    forwarding. The engine has
    already sent the ``200`` head, so the body read breaks and docker-py raises
    ``requests.exceptions.ChunkedEncodingError`` (a ``RequestException`` but *not* a
    ``ConnectionError``; it wraps urllib3 ``ProtocolError`` "Response ended
    prematurely"). The same for ``events``: the stream starts, then breaks. With
    ``delay_s=0`` the cut usually comes before the head:
    ``ConnectionError``. The container is unaffected either way.
``cut_after``
    Forward, then close the client connection ``delay_s`` after forwarding, even in
    the middle of the response. If the response is complete before then, nothing
    happens. A cut before the response head arrives gives
    ``requests.exceptions.ConnectionError``; a cut after it (``wait``, ``logs``
    streams) gives ``requests.exceptions.ChunkedEncodingError``, or for a streamed
    response consumed by docker-py's generators (``logs(stream=True)``) the generator
    just ends early.

:meth:`FaultProxy.cut_active` cuts connections already in flight (e.g. a blocked
``wait``); the client sees the same exceptions as for ``cut_after``.

A ``requests.exceptions.ConnectionError`` and a ``ChunkedEncodingError`` are both
``requests.exceptions.RequestException``; neither is a ``docker.errors.DockerException``.
"""

from __future__ import annotations

import contextlib
import http
import json
import os
import random
import re
import secrets
import select
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["ACTIONS", "OPS", "FaultProxy", "FaultRule", "operation_of"]

OPS: frozenset[str] = frozenset(
    {
        "create",
        "start",
        "wait",
        "events",
        "inspect",
        "stop",
        "kill",
        "remove",
        "commit",
        "logs",
        "list",
        "pull",
        "image_inspect",
        "image_remove",
        "any",
    }
)
"""Operation names a :class:`FaultRule` can target."""

ACTIONS: frozenset[str] = frozenset({"fail", "delay", "cut", "cut_after"})
"""Fault kinds, see the module docstring."""

_OTHER = "other"
_STREAMS = frozenset({"wait", "events"})  # a `cut` lets these start, then breaks them
_MAX_HEAD = 64 * 1024
_RECV = 65536
_VERSION_PREFIX = re.compile(r"/v\d+(?:\.\d+)?(?=/)")
_UNTOUCHED = frozenset({"/_ping", "/version"})
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), op)
    for method, pattern, op in (
        ("POST", r"/containers/create", "create"),
        ("GET", r"/containers/json", "list"),
        ("POST", r"/containers/[^/]+/start", "start"),
        ("POST", r"/containers/[^/]+/wait", "wait"),
        ("GET", r"/events", "events"),
        ("GET", r"/containers/[^/]+/json", "inspect"),
        ("POST", r"/containers/[^/]+/stop", "stop"),
        ("POST", r"/containers/[^/]+/kill", "kill"),
        ("DELETE", r"/containers/[^/]+", "remove"),
        ("POST", r"/commit", "commit"),
        ("GET", r"/containers/[^/]+/logs", "logs"),
        ("POST", r"/images/create", "pull"),
        ("GET", r"/images/.+/json", "image_inspect"),
        ("DELETE", r"/images/.+", "image_remove"),
    )
)


def operation_of(method: str, path: str) -> str | None:
    """Return the operation name of a request.

    ``path`` is the request target, with or without a ``/v1.xx`` prefix and query string.
    Returns one of :data:`OPS` (never ``"any"``), ``"other"`` for an unmapped request, or
    ``None`` for ``/_ping`` and ``/version``, which are never faulted.
    """
    bare = path.split("?", 1)[0]
    match = _VERSION_PREFIX.match(bare)
    if match is not None:
        bare = bare[match.end() :]
    if bare in _UNTOUCHED:
        return None
    method = method.upper()
    for route_method, pattern, op in _ROUTES:
        if method == route_method and pattern.fullmatch(bare):
            return op
    return _OTHER


@dataclass
class FaultRule:
    """One fault to inject on matching requests.

    Rules are tried in the order they were added; the first applicable one is used.
    A rule applies to a request when its ``op`` matches (``"any"`` matches every request
    except ``/_ping`` and ``/version``), ``times`` is not exhausted, ``match`` (if given)
    returns true for ``(method, path)``, and the proxy's seeded random draw is below
    ``probability``. ``times`` is decremented, and ``hits`` incremented, under the
    proxy's lock each time the rule fires. ``match`` is called with that lock held: it
    must not call back into the proxy.
    """

    op: str
    """One of :data:`OPS`."""
    action: str
    """One of :data:`ACTIONS`: ``"fail"``, ``"delay"``, ``"cut"``, ``"cut_after"``."""
    status: int = 500
    """HTTP status of a ``"fail"`` answer."""
    message: str = "injected fault"
    """``message`` of a ``"fail"`` answer's JSON body."""
    delay_s: float = 0.0
    """Sleep before forwarding (``"delay"``), before cutting (``"cut"``), or after
    forwarding before cutting (``"cut_after"``, and ``"cut"`` on ``"wait"``)."""
    times: int | None = 1
    """How many more matching requests this rule applies to; ``None`` is unlimited."""
    match: Callable[[str, str], bool] | None = None
    """Optional extra predicate on ``(method, path)``; ``path`` includes the query."""
    probability: float = 1.0
    """Chance that a matching request is faulted, drawn from the proxy's seeded RNG."""
    hits: int = field(default=0, init=False)
    """How many requests this rule has been applied to."""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}; expected one of {sorted(OPS)}")
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; expected one of {sorted(ACTIONS)}")
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, not {self.status}")
        if self.delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0 or None")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")


class _ProtocolError(Exception):
    """The client or the engine sent something this proxy cannot parse."""


class _Conn:
    """One client connection and its state, shared with cut_active() and stop()."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.op: str | None = None
        self.cut = threading.Event()
        self.closed = False


class _Reader:
    """Buffered reads from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(_RECV)
        if not data:
            return False
        self.buf += data
        return True

    def read_until(self, delim: bytes, limit: int) -> bytes | None:
        """Bytes up to and including ``delim``; None on EOF before any byte."""
        start = 0
        while True:
            idx = self.buf.find(delim, start)
            if idx >= 0:
                end = idx + len(delim)
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            if len(self.buf) > limit:
                raise _ProtocolError("line or head too long")
            start = max(0, len(self.buf) - len(delim) + 1)
            if not self._fill():
                if not self.buf:
                    return None
                raise _ProtocolError("connection closed mid-message")

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise _ProtocolError("connection closed mid-body")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def take_buffered(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _ProtocolError(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    value = None
    for key, val in headers:
        if key.lower() == name:
            value = val
    return value


def _build_head(first: str, headers: list[tuple[str, str]], connection: str) -> bytes:
    drop = {"connection", "keep-alive", "proxy-connection"}
    lines = [first]
    lines.extend(f"{k}: {v}" for k, v in headers if k.lower() not in drop)
    lines.append(f"Connection: {connection}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_body(reader: _Reader, headers: list[tuple[str, str]]) -> bytes:
    """The raw request body, chunk framing included."""
    encoding = (_header(headers, "transfer-encoding") or "").lower()
    if "chunked" in encoding:
        out = bytearray()
        while True:
            line = reader.read_until(b"\r\n", _MAX_HEAD)
            if line is None:
                raise _ProtocolError("connection closed mid-body")
            out += line
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as err:
                raise _ProtocolError(f"bad chunk size line {line!r}") from err
            if size == 0:
                while True:
                    trailer = reader.read_until(b"\r\n", _MAX_HEAD)
                    if trailer is None:
                        raise _ProtocolError("connection closed mid-trailers")
                    out += trailer
                    if trailer == b"\r\n":
                        return bytes(out)
            out += reader.read_exact(size + 2)
    length = _header(headers, "content-length")
    if length is None:
        return b""
    try:
        n = int(length)
    except ValueError as err:
        raise _ProtocolError(f"bad Content-Length {length!r}") from err
    return reader.read_exact(n)


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _default_socket_path() -> str:
    name = f"faultproxy-{os.getpid()}-{secrets.token_hex(6)}.sock"
    path = os.path.join(tempfile.gettempdir(), name)
    if len(path.encode()) > 100:  # sun_path holds 108 bytes
        path = os.path.join("/tmp", name)
    return path


class FaultProxy:
    """An HTTP proxy on a Unix socket in front of the Docker engine, injecting faults.

    ``upstream`` is the engine's socket path; ``socket_path`` the proxy's own (a fresh
    name in the temp directory by default). ``seed`` seeds the random draws of rules
    whose ``probability`` is below 1, so probabilistic faults are reproducible.
    ``join_timeout_s`` bounds how long :meth:`stop` waits for its threads.
    """

    def __init__(
        self,
        upstream: str = "/var/run/docker.sock",
        socket_path: str | None = None,
        *,
        seed: int | None = 0,
        join_timeout_s: float = 5.0,
    ) -> None:
        self.upstream = upstream
        self.socket_path = socket_path if socket_path is not None else _default_socket_path()
        self.join_timeout_s = join_timeout_s
        self.calls: list[tuple[str, str]] = []
        """``(method, path)`` of every request received, ``path`` with its query."""
        self._call_ops: list[str | None] = []
        self._rules: list[FaultRule] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._started = False
        self._serial = 0

    # -- lifecycle -----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``unix://`` URL of the proxy socket, for ``docker.APIClient(base_url=...)``."""
        return "unix://" + self.socket_path

    def start(self) -> FaultProxy:
        """Bind the socket and start accepting connections. Returns ``self``."""
        if self._started:
            raise RuntimeError("FaultProxy already started")
        self._remove_stale_socket()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.socket_path)
            listener.listen(128)
            listener.settimeout(0.2)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._started = True
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name="faultproxy-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut every in-flight connection, join threads, remove the socket.

        Idempotent. Threads still alive after ``join_timeout_s`` (they are daemons) are
        left behind; none are expected.
        """
        if not self._started or self._stopping.is_set():
            return
        self._stopping.set()
        deadline = time.monotonic() + self.join_timeout_s
        listener = self._listener
        if listener is not None:
            _shutdown(listener)
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        if listener is not None:
            listener.close()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for conn in conns:
            self._cut(conn)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- rules and observation -----------------------------------------------------

    def add_rule(self, rule: FaultRule) -> FaultRule:
        """Append ``rule`` (tried after the rules added before it); returns it."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        """Remove all rules. Requests already being delayed or cut are not affected."""
        with self._lock:
            self._rules.clear()

    def clear_calls(self) -> None:
        """Forget the recorded calls."""
        with self._lock:
            self.calls.clear()
            self._call_ops.clear()

    def count(self, op: str) -> int:
        """How many received requests were of operation ``op`` (``"any"``: all but
        ``/_ping`` and ``/version``; ``"other"``: unmapped requests)."""
        if op not in OPS and op != _OTHER:
            raise ValueError(f"unknown op {op!r}")
        with self._lock:
            return sum(1 for o in self._call_ops if o is not None and op in ("any", o))

    def active(self, op: str) -> int:
        """How many connections are currently serving a request of operation ``op``."""
        with self._lock:
            return len(self._matching_conns(op))

    def cut_active(self, op: str) -> int:
        """Cut every connection currently serving ``op`` (e.g. a blocked ``wait``).

        The client sees a broken connection; requests not yet forwarded never reach the
        engine. Returns how many connections were cut.
        """
        with self._lock:
            conns = self._matching_conns(op)
        for conn in conns:
            self._cut(conn)
        return len(conns)

    # -- internals -----------------------------------------------------------------

    def _matching_conns(self, op: str) -> list[_Conn]:
        return [
            c
            for c in self._conns
            if c.op is not None and not c.closed and not c.cut.is_set() and op in ("any", c.op)
        ]

    def _remove_stale_socket(self) -> None:
        try:
            mode = os.lstat(self.socket_path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(f"{self.socket_path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.socket_path)
        except OSError:
            os.unlink(self.socket_path)  # nobody listens: stale
        else:
            raise FileExistsError(f"something already listens on {self.socket_path}")
        finally:
            probe.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            client.settimeout(None)
            conn = _Conn(client)
            with self._lock:
                if self._stopping.is_set():
                    client.close()
                    break
                self._serial += 1
                thread = threading.Thread(
                    target=self._serve,
                    args=(conn,),
                    name=f"faultproxy-conn-{self._serial}",
                    daemon=True,
                )
                self._conns.add(conn)
                self._threads.add(thread)
                thread.start()

    def _cut(self, conn: _Conn) -> None:
        with self._lock:
            conn.cut.set()
            if not conn.closed:
                _shutdown(conn.client)
                _shutdown(conn.upstream)

    def _serve(self, conn: _Conn) -> None:
        try:
            self._handle(conn)
        except (OSError, _ProtocolError):
            pass
        finally:
            with self._lock:
                conn.closed = True
                conn.client.close()
                if conn.upstream is not None:
                    conn.upstream.close()
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

    def _pick_rule(self, op: str, method: str, path: str) -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.times is not None and rule.times <= 0:
                    continue
                if rule.op not in ("any", op):
                    continue
                if rule.match is not None and not rule.match(method, path):
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                if rule.times is not None:
                    rule.times -= 1
                rule.hits += 1
                return rule
        return None

    def _handle(self, conn: _Conn) -> None:
        reader = _Reader(conn.client)
        head = reader.read_until(b"\r\n\r\n", _MAX_HEAD)
        if head is None:
            return
        request_line, headers = _parse_head(head)
        parts = request_line.split(" ")
        if len(parts) != 3:
            raise _ProtocolError(f"bad request line {request_line!r}")
        method, path, _ = parts
        body = _read_body(reader, headers)
        op = operation_of(method, path)
        with self._lock:
            self.calls.append((method, path))
            self._call_ops.append(op)
            conn.op = op
        rule = self._pick_rule(op, method, path) if op is not None else None
        # Copy what we need: the rule object may be mutated by the test meanwhile.
        action = rule.action if rule is not None else None
        delay_s = rule.delay_s if rule is not None else 0.0
        if rule is not None and action == "fail":
            self._answer_error(conn.client, rule.status, rule.message)
            return
        if action == "cut" and op not in _STREAMS:
            if delay_s > 0:
                conn.cut.wait(delay_s)
            self._cut(conn)
            return
        if action == "delay" and conn.cut.wait(delay_s):
            return
        upgrade = _header(headers, "upgrade") is not None
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            conn.upstream = upstream
            if conn.cut.is_set():
                return
        upstream.connect(self.upstream)
        upstream.sendall(
            _build_head(request_line, headers, "Upgrade, close" if upgrade else "close")
            + body
            + reader.take_buffered()
        )
        deadline = None
        if action == "cut_after" or (action == "cut" and op in _STREAMS):
            deadline = time.monotonic() + delay_s
        self._relay(conn, upstream, upgrade, deadline)

    @staticmethod
    def _answer_error(client: socket.socket, status: int, message: str) -> None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        body = json.dumps({"message": message}).encode() + b"\n"
        head = (
            f"HTTP/1.1 {status} {phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        client.sendall(head + body)

    def _relay(
        self, conn: _Conn, upstream: socket.socket, upgrade: bool, deadline: float | None
    ) -> None:
        """Relay the response (and, once upgraded, the client's bytes) until the engine
        closes, the client goes away, the deadline passes or the connection is cut."""
        client = conn.client
        poller = select.poll()
        poller.register(upstream, select.POLLIN)
        poller.register(client, select.POLLIN)
        head_buf = bytearray()
        head_done = False
        client_open = True
        while True:
            timeout_ms: int | None = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._cut(conn)
                    return
                timeout_ms = max(1, int(remaining * 1000))
            events = poller.poll(timeout_ms)
            if conn.cut.is_set():
                return
            ready = {fd for fd, _ in events}
            if not client_open and any(
                fd == client.fileno() and mask & select.POLLHUP for fd, mask in events
            ):
                return  # the client closed both ways (not only its writing half): it is gone
            if upstream.fileno() in ready:
                data = upstream.recv(_RECV)
                if not data:
                    return  # response complete (or engine gone before answering)
                if head_done:
                    client.sendall(data)
                else:
                    head_buf += data
                    end = head_buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(head_buf) > _MAX_HEAD:
                            raise _ProtocolError("response head too long")
                    else:
                        head, rest = bytes(head_buf[: end + 4]), bytes(head_buf[end + 4 :])
                        status_line, headers = _parse_head(head)
                        status_parts = status_line.split(" ", 2)
                        # A 101 answer switches to a raw two-way stream: keep its head.
                        if not (upgrade and len(status_parts) > 1 and status_parts[1] == "101"):
                            head = _build_head(status_line, headers, "close")
                        client.sendall(head + rest)
                        head_done = True
            if client_open and client.fileno() in ready:
                data = client.recv(_RECV)
                if not data:
                    if not upgrade:
                        return  # the client gave up: drop the upstream request too
                    client_open = False
                    # Only hang-ups from now on: a client that closed for good is gone,
                    # one that only closed its writing half still reads the engine's answer.
                    poller.modify(client, 0)
                    upstream.shutdown(socket.SHUT_WR)
                elif upgrade:
                    upstream.sendall(data)
                # A non-upgrade client sends nothing more; stray bytes are dropped.

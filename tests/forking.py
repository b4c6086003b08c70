"""Running a function in a real `os.fork()` child and getting its answer back, bounded.

`in_forked_child(fn, timeout)` forks; the child runs `fn()` and sends what it returned (JSON)
or the exception it raised (`{"raised": type, "message": ..}`) back over a pipe, then leaves
with `os._exit` (no pytest teardown, no atexit hook in the child). A child that does not
answer within `timeout` seconds is killed and the test fails: a hang is never waited out.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any


class ChildHung(AssertionError):
    """The child did not answer in time (it was killed)."""


def in_forked_child(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """`fn()` run in a forked child: its JSON-able result, or a dict naming what it raised."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        code = 0
        try:
            try:
                answer: Any = {"returned": fn()}
            except BaseException as err:
                answer = {
                    "raised": type(err).__name__,
                    "message": str(err),
                    "traceback": traceback.format_exc(),
                }
            data = json.dumps(answer, default=repr).encode()
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(data)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([read_fd], [], [], max(0.0, left))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise ChildHung(f"the forked child did not answer within {timeout}s")
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    answer = json.loads(b"".join(chunks) or b"null")
    if answer is None:
        raise AssertionError("the forked child died without an answer")
    return answer.get("returned", answer)

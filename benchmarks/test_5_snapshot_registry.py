"""Snapshot registry: `get` and `register` operations per second, 1 and 8 threads.

Pure Python, no Docker. Baseline: a plain dict behind one lock doing the same operations
(the least any thread-safe registry must do). The registry runs on the real clock with a
project TTL lookup that finds no override, as in a manager without a project directory.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dockyard._snapshot_registry import SnapshotRegistry

from .harness import record

OPS = 2000  # per thread and round
KEYS = [(f"project-{i % 10}", f"item-{i}") for i in range(100)]
IMAGES = {key: f"cascade-snapshot-{key[0]}-{key[1]}:latest" for key in KEYS}


class DictWithLock:
    """The baseline: the same operations on a dict behind a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[str, int | None, float]] = {}

    def register(self, project_id, work_item_id, image_name, image_size_bytes=None):
        entry = (image_name, image_size_bytes, time.time())
        with self._lock:
            self._entries[(project_id, work_item_id)] = entry
        return entry

    def get(self, project_id, work_item_id):
        with self._lock:
            return self._entries.get((project_id, work_item_id))


def _registry() -> SnapshotRegistry:
    return SnapshotRegistry(
        default_ttl_s=86400.0,
        max_count=5,
        max_size_bytes=10 * 1024**3,
        project_ttl=lambda _project_id: None,
    )


def _filled(kind: str):
    target = DictWithLock() if kind == "dict+lock" else _registry()
    for key in KEYS:
        target.register(*key, IMAGES[key], 1000)
    return target


def _work(target, op: str):
    if op == "get":
        get = target.get

        def run() -> None:
            for i in range(OPS):
                get(*KEYS[i % 100])

    else:
        register = target.register

        def run() -> None:
            for i in range(OPS):
                key = KEYS[i % 100]
                register(key[0], key[1], IMAGES[key], 1000)

    return run


_OPS_PER_S: dict[tuple[str, int], float] = {}


@pytest.mark.parametrize("threads", [1, 8])
@pytest.mark.parametrize("op", ["get", "register"])
@pytest.mark.parametrize("kind", ["dict+lock", "dockyard"])
def test_registry_ops(benchmark, kind, op, threads):
    benchmark.group = f"snapshot-registry-{op}-{threads}-thread{'s' if threads > 1 else ''}"
    target = _filled(kind)
    run = _work(target, op)
    if threads == 1:
        benchmark.pedantic(run, rounds=30, warmup_rounds=2)
    else:
        with ThreadPoolExecutor(threads) as pool:

            def run_threads() -> None:
                for future in [pool.submit(run) for _ in range(threads)]:
                    future.result()

            benchmark.pedantic(run_threads, rounds=20, warmup_rounds=2)
    rate = OPS * threads / benchmark.stats.stats.median
    benchmark.extra_info["ops_per_s"] = round(rate)
    if kind == "dict+lock":
        _OPS_PER_S[(op, threads)] = rate
    elif (op, threads) in _OPS_PER_S:
        record(
            benchmark,
            "ops_per_s",
            rate,
            _OPS_PER_S[(op, threads)],
            "ops/s",
            name=f"snapshot registry {op}, {threads} thread(s): dockyard / dict+lock",
        )

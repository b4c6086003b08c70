"""Tests for the snapshot registry (SPEC §6)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest

from dockyard import _snapshot_registry
from dockyard._snapshot_registry import SnapshotMetadata, SnapshotRegistry

START = 1_700_000_000.0
GIB = 1024**3


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def make_registry(
    clock: FakeClock,
    *,
    default_ttl_s: float = 60.0,
    max_count: int = 5,
    max_size_bytes: int = 10 * GIB,
    project_ttls: dict[str, float] | None = None,
) -> SnapshotRegistry:
    ttls = {} if project_ttls is None else project_ttls
    return SnapshotRegistry(
        default_ttl_s=default_ttl_s,
        max_count=max_count,
        max_size_bytes=max_size_bytes,
        project_ttl=ttls.get,
        clock=clock,
    )


def names(entries: list[SnapshotMetadata]) -> list[str]:
    return [entry.image_name for entry in entries]


def test_register_then_get_round_trips():
    clock = FakeClock()
    registry = make_registry(clock)

    registered = registry.register("p1", "w1", "snap-p1-w1:latest", 1234)

    assert registered == SnapshotMetadata(
        image_name="snap-p1-w1:latest",
        project_id="p1",
        work_item_id="w1",
        created_at=datetime.fromtimestamp(START, UTC),
        image_size_bytes=1234,
    )
    assert registered.created_at.tzinfo is UTC
    assert registry.get("p1", "w1") == registered
    assert registry.get("p1", "other") is None
    assert registry.get("other", "w1") is None
    assert len(registry) == 1
    assert ("p1", "w1") in registry
    assert ("p1", "other") not in registry
    assert registry.entries() == [registered]


def test_metadata_is_frozen():
    clock = FakeClock()
    metadata = make_registry(clock).register("p", "w", "img")
    with pytest.raises(AttributeError):
        metadata.image_name = "other"  # type: ignore[misc]


def test_reregistering_a_key_replaces_the_entry():
    clock = FakeClock()
    registry = make_registry(clock)
    registry.register("p", "w", "img", 1)
    clock.advance(10)

    second = registry.register("p", "w", "img", 2)

    assert registry.get("p", "w") == second
    assert second.created_at == datetime.fromtimestamp(START + 10, UTC)
    assert len(registry) == 1
    # Same image name: the old entry's image *is* the new snapshot, never to be evicted.
    assert registry.evict(max_count=0) == [second]


def test_age_equal_to_ttl_is_valid_and_one_tick_more_is_expired():
    clock = FakeClock()
    registry = make_registry(clock, default_ttl_s=60.0)
    entry = registry.register("p", "w", "img")

    clock.advance(60.0)
    assert registry.get("p", "w") == entry
    assert len(registry) == 1

    clock.advance(1e-6)
    assert registry.get("p", "w") is None
    assert len(registry) == 0
    # get() removed it, but its image still exists: evict() must hand it over.
    assert registry.evict() == [entry]
    assert registry.evict() == []


def test_project_ttl_overrides_the_default():
    clock = FakeClock()
    registry = make_registry(clock, default_ttl_s=60.0, project_ttls={"short": 10.0})
    short = registry.register("short", "w", "img-short")
    default = registry.register("long", "w", "img-long")

    clock.advance(10.0)
    assert registry.get("short", "w") == short

    clock.advance(1.0)
    assert registry.get("short", "w") is None
    assert registry.get("long", "w") == default

    clock.advance(49.0)  # age 60: the default TTL still holds for the other project
    assert registry.get("long", "w") == default
    assert registry.entries() == [default]


def test_explicit_ttl_argument_wins_over_the_project_ttl():
    clock = FakeClock()
    registry = make_registry(clock, default_ttl_s=60.0)
    entry = registry.register("p", "w", "img")

    clock.advance(5.0)
    assert registry.get("p", "w", ttl=5.0) == entry

    clock.advance(1.0)
    assert registry.get("p", "w", ttl=5.0) is None
    # The expired get removed the entry for good, even for a caller with the default TTL.
    assert registry.get("p", "w") is None
    assert registry.evict() == [entry]


def test_invalidate_removes_and_returns():
    clock = FakeClock()
    registry = make_registry(clock)
    entry = registry.register("p", "w", "img")
    other = registry.register("p", "w2", "img2")

    assert registry.invalidate("p", "w") == entry
    assert registry.get("p", "w") is None
    assert registry.invalidate("p", "w") is None
    assert registry.entries() == [other]
    # The caller of invalidate owns the image: evict() must not return it again.
    assert registry.evict() == []


def test_evict_order_is_expired_then_count_then_size():
    clock = FakeClock()
    registry = make_registry(
        clock,
        default_ttl_s=100.0,
        max_count=3,
        max_size_bytes=6,
        project_ttls={"short": 10.0},
    )
    b = registry.register("p", "b", "img-b", 2)
    clock.advance(10)
    c = registry.register("p", "c", "img-c", None)
    clock.advance(10)
    d = registry.register("p", "d", "img-d", 4)
    clock.advance(10)
    e = registry.register("p", "e", "img-e", 3)
    clock.advance(10)
    f = registry.register("p", "f", "img-f", None)
    clock.advance(10)
    # The youngest entry, yet the only expired one: it must go first, and must not be
    # counted against max_count.
    x = registry.register("short", "x", "img-x", 1)
    clock.advance(11)

    evicted = registry.evict()

    # expired: x; beyond max_count 3 of [b c d e f]: b, c; then [d e f] sums 4+3+0 = 7 > 6:
    # d goes, leaving 3 (f's unknown size counts 0).
    assert evicted == [x, b, c, d]
    assert registry.entries() == [e, f]
    assert registry.evict() == []


def test_evict_arguments_override_the_global_settings():
    clock = FakeClock()
    registry = make_registry(clock, default_ttl_s=1000.0, max_count=100, max_size_bytes=GIB)
    old = registry.register("p", "old", "img-old", 10)
    clock.advance(40)
    mid = registry.register("p", "mid", "img-mid", 10)
    clock.advance(10)
    new = registry.register("p", "new", "img-new", 10)
    young = registry.register("p", "young", "img-young", 10)

    assert registry.evict(ttl=30.0) == [old]
    assert registry.evict(max_count=2) == [mid]
    assert registry.evict(max_size_bytes=10) == [new]
    assert registry.entries() == [young]


def test_entries_expired_inside_evict_come_before_the_count_limit():
    clock = FakeClock()
    registry = make_registry(clock, default_ttl_s=1000.0, max_count=1)
    a = registry.register("p", "a", "img-a")
    clock.advance(10)
    b = registry.register("p", "b", "img-b")
    clock.advance(10)
    c = registry.register("p", "c", "img-c")
    clock.advance(10)
    d = registry.register("p", "d", "img-d")
    clock.advance(5)

    # ttl 20 expires a (age 35) and b (25); max_count 1 then takes c out of [c d].
    assert registry.evict(ttl=20.0) == [a, b, c]
    assert registry.entries() == [d]


def test_a_shortened_project_ttl_applies_to_entries_already_registered():
    clock = FakeClock()
    ttls: dict[str, float] = {}
    registry = make_registry(clock, default_ttl_s=100.0, max_count=1, project_ttls=ttls)
    old = registry.register("p", "old", "img-old")
    clock.advance(10)
    short = registry.register("q", "short", "img-short")
    clock.advance(10)
    new = registry.register("p", "new", "img-new")
    ttls["q"] = 5.0  # the project's config changed after registration

    assert registry.evict() == [short, old]
    assert registry.entries() == [new]


def test_get_uses_the_current_project_ttl():
    clock = FakeClock()
    ttls: dict[str, float] = {}
    registry = make_registry(clock, default_ttl_s=100.0, project_ttls=ttls)
    entry = registry.register("p", "w", "img")
    clock.advance(10)
    assert registry.get("p", "w") == entry

    ttls["p"] = 5.0

    assert registry.get("p", "w") is None
    assert registry.evict() == [entry]


def test_oldest_means_created_at_not_registration_order():
    clock = FakeClock()
    registry = make_registry(clock, default_ttl_s=1000.0, max_count=1)
    newer = registry.register("p", "newer", "img-newer")
    older = registry.register(
        "p", "older", "img-older", created_at=datetime.fromtimestamp(START - 100, UTC)
    )

    assert registry.entries() == [older, newer]
    assert registry.evict() == [older]
    assert registry.entries() == [newer]


def test_evict_ttl_none_uses_each_projects_ttl():
    clock = FakeClock()
    registry = make_registry(clock, default_ttl_s=100.0, project_ttls={"a": 5.0, "b": 50.0})
    a = registry.register("a", "w", "img-a")
    b = registry.register("b", "w", "img-b")
    c = registry.register("c", "w", "img-c")

    clock.advance(6)
    assert registry.evict() == [a]
    clock.advance(45)
    assert registry.evict() == [b]
    assert registry.entries() == [c]


def test_entry_dropped_by_the_cache_during_a_later_register_comes_back_from_evict():
    clock = FakeClock()
    registry = make_registry(clock, default_ttl_s=10.0)
    first = registry.register("p", "old", "img-old")
    clock.advance(11)

    second = registry.register("p", "new", "img-new")  # the cache expires "old" right here

    assert registry.entries() == [second]
    assert len(registry) == 1
    assert ("p", "old") not in registry
    assert registry.evict() == [first]
    assert registry.evict() == []


def test_entry_expired_by_len_or_invalidate_still_comes_back_from_evict():
    clock = FakeClock()
    registry = make_registry(clock, default_ttl_s=10.0)
    a = registry.register("p", "a", "img-a")
    b = registry.register("p", "b", "img-b")
    clock.advance(11)

    assert len(registry) == 0
    assert registry.invalidate("p", "b") is None  # already expired: left for evict()
    assert registry.evict() == [a, b]


def test_cache_overflow_is_not_a_silent_loss(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_snapshot_registry, "_CACHE_MAXSIZE", 2)
    clock = FakeClock()
    registry = make_registry(clock, max_count=100)
    registered = [registry.register("p", f"w{i}", f"img-{i}") for i in range(3)]

    held = registry.entries()
    assert len(held) == 2
    evicted = registry.evict()
    assert len(evicted) == 1
    assert sorted(names(held + evicted)) == sorted(names(registered))


def test_replacing_with_a_different_image_evicts_the_old_image():
    clock = FakeClock()
    registry = make_registry(clock)
    old = registry.register("p", "w", "img-v1")
    new = registry.register("p", "w", "img-v2")

    assert registry.get("p", "w") == new
    assert registry.evict() == [old]


def test_recommit_under_the_same_name_cancels_the_pending_eviction():
    clock = FakeClock()
    registry = make_registry(clock, default_ttl_s=10.0)
    registry.register("p", "w", "img")
    clock.advance(11)
    assert registry.get("p", "w") is None  # expired, its eviction is pending

    fresh = registry.register("p", "w", "img")

    # Evicting the stale entry would make the caller delete the image just committed.
    assert registry.evict() == []
    assert registry.get("p", "w") == fresh


def test_created_at_sets_the_age_for_startup_sync():
    clock = FakeClock()
    registry = make_registry(clock, default_ttl_s=60.0)
    now = datetime.fromtimestamp(START, UTC)
    created = now - timedelta(seconds=50)

    recent = registry.register("p", "recent", "img-recent", 7, created_at=created)
    assert recent.created_at == created
    stale = registry.register("p", "stale", "img-stale", 7, created_at=now - timedelta(hours=2))

    assert registry.entries() == [recent]
    clock.advance(10)
    assert registry.get("p", "recent") == recent
    clock.advance(1)
    assert registry.get("p", "recent") is None
    assert registry.evict() == [stale, recent]


def test_created_at_in_another_timezone_is_normalised_to_utc():
    clock = FakeClock()
    registry = make_registry(clock)
    local = datetime.fromtimestamp(START, UTC).astimezone(timezone(timedelta(hours=2)))

    entry = registry.register("p", "w", "img", created_at=local)

    assert entry.created_at.tzinfo is UTC
    assert entry.created_at == local


def test_invalid_arguments_are_rejected():
    clock = FakeClock()
    registry = make_registry(clock)
    with pytest.raises(ValueError, match="timezone-aware"):
        registry.register("p", "w", "img", created_at=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="image_size_bytes"):
        registry.register("p", "w", "img", -1)
    with pytest.raises(ValueError, match="ttl"):
        registry.get("p", "w", ttl=-1.0)
    with pytest.raises(ValueError, match="max_count"):
        registry.evict(max_count=-1)
    with pytest.raises(ValueError, match="default_ttl_s"):
        make_registry(clock, default_ttl_s=float("nan"))
    assert len(registry) == 0


def test_failing_project_ttl_leaves_the_registry_intact():
    clock = FakeClock()
    fail = False

    def project_ttl(project_id: str) -> float | None:
        if fail:
            raise RuntimeError("config store down")
        return None

    registry = SnapshotRegistry(
        default_ttl_s=10.0,
        max_count=5,
        max_size_bytes=GIB,
        project_ttl=project_ttl,
        clock=clock,
    )
    gone = registry.register("p", "gone", "img-gone")
    clock.advance(5)
    kept = registry.register("p", "kept", "img-kept")
    clock.advance(6)  # "gone" expired
    fail = True

    with pytest.raises(RuntimeError):
        registry.evict()

    fail = False
    assert registry.evict() == [gone]
    assert registry.entries() == [kept]


def test_concurrent_use_loses_and_duplicates_nothing():
    clock = FakeClock()
    registry = make_registry(clock, default_ttl_s=2.0, max_count=20, max_size_bytes=5000)
    registered: list[str] = []
    evicted: list[str] = []
    invalidated: list[str] = []
    errors: list[Exception] = []
    bookkeeping = threading.Lock()
    start = threading.Barrier(8)

    def worker(thread_no: int) -> None:
        rng = random.Random(thread_no)
        try:
            start.wait()
            for i in range(400):
                image = f"img-{thread_no}-{i}"
                registry.register(
                    f"p{thread_no % 3}", f"w{thread_no}-{i}", image, rng.randint(0, 100)
                )
                with bookkeeping:
                    registered.append(image)
                registry.get(f"p{thread_no % 3}", f"w{thread_no}-{rng.randrange(i + 1)}")
                clock.advance(0.01)
                if i % 7 == 0:
                    gone = registry.invalidate(f"p{thread_no % 3}", f"w{thread_no}-{i}")
                    if gone is not None:
                        with bookkeeping:
                            invalidated.append(gone.image_name)
                if i % 10 == 0:
                    out = registry.evict()
                    with bookkeeping:
                        evicted.extend(names(out))
                len(registry)
                registry.entries()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(registry) == len(registry.entries())
    evicted.extend(names(registry.evict()))
    remaining = registry.entries()
    assert len(remaining) <= 20
    assert sum(entry.image_size_bytes or 0 for entry in remaining) <= 5000
    final = names(registry.evict(max_count=0))
    assert len(registry) == 0
    # Every image is accounted for exactly once: evicted, invalidated or still held.
    accounted = Counter(evicted + invalidated + final)
    assert accounted == Counter(registered)
    assert len(registered) == 8 * 400

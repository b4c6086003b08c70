"""Owns the snapshot registry: which snapshot image serves which (project, work item) pair."""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cachetools import TLRUCache

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["SnapshotMetadata", "SnapshotRegistry"]

_Key = tuple[str, str]

# Far above any real snapshot count: the count and size limits are evict()'s job, not the
# cache's. Should the cache overflow anyway, the entry it drops is kept for evict() too.
_CACHE_MAXSIZE = 100_000


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    """A snapshot image kept so the next run of the same work item starts warm.

    ``created_at`` is timezone-aware UTC. ``image_size_bytes`` is None when unknown; it then
    counts as 0 against the size budget.
    """

    image_name: str
    project_id: str
    work_item_id: str
    created_at: datetime
    image_size_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    metadata: SnapshotMetadata
    # Epoch seconds on the registry's clock. Kept next to the datetime because a datetime
    # rounds to microseconds, which would blur the exact "age == ttl is still valid" boundary.
    created_ts: float
    # First instant at which the cache itself considers the entry expired (see _expiry()).
    expires_at: float
    # Registration order: breaks created_at ties so "oldest first" is deterministic.
    seq: int

    @property
    def key(self) -> _Key:
        return (self.metadata.project_id, self.metadata.work_item_id)


def _time_to_use(_key: _Key, entry: _Entry, _now: float) -> float:
    return entry.expires_at


def _expiry(created_ts: float, ttl: float) -> float:
    # TLRUCache drops an item once ``now >= expires``; one ulp above created + ttl turns that
    # into ``now > created + ttl``, the strict rule (an entry exactly ttl old is still valid).
    return math.nextafter(created_ts + ttl, math.inf)


def _is_expired(entry: _Entry, ttl: float, now: float) -> bool:
    # Same arithmetic as _expiry(), so an explicit ttl and the cache agree on the boundary.
    return now > entry.created_ts + ttl


def _check_limit(name: str, value: float) -> None:
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")


class _DropRecordingCache(TLRUCache[_Key, _Entry, float]):
    """A TLRUCache that hands every entry it drops by itself to ``on_drop``.

    TLRUCache silently deletes expired items from ``__setitem__``, ``__len__`` and
    ``popitem`` (all through ``expire()``), and ``popitem`` deletes a live item when the
    cache overflows. Each of those entries still names a Docker image that someone must
    remove, so none of them may just vanish.
    """

    def __init__(
        self,
        maxsize: int,
        timer: Callable[[], float],
        on_drop: Callable[[_Entry], None],
    ) -> None:
        super().__init__(maxsize, _time_to_use, timer)
        self._on_drop = on_drop

    def expire(self, time: float | None = None) -> list[tuple[_Key, _Entry]]:
        expired = super().expire(time)
        for _key, entry in expired:
            self._on_drop(entry)
        return expired

    def popitem(self) -> tuple[_Key, _Entry]:
        key, entry = super().popitem()
        self._on_drop(entry)
        return key, entry


class SnapshotRegistry:
    """Thread-safe registry of snapshot images keyed by (project id, work item id).

    Entries live in a cachetools ``TLRUCache`` whose timer is the injected ``clock``. A
    TLRUCache rather than a TTLCache because the expiry is per entry: each project may
    override the TTL, and images found at start-up carry their own (older) creation time,
    while a TTLCache measures one TTL from the moment of insertion.

    Expiry: an entry is expired when its age is strictly greater than the TTL. Without an
    explicit ``ttl`` that is the project's TTL (``project_ttl(project_id)``) or, when the
    project has none, ``default_ttl_s``. The cache fixes each entry's expiry at registration,
    so an explicit ``ttl`` to :meth:`get` or :meth:`evict` can shorten an entry's life but
    not extend it past that registered expiry.

    No entry is ever lost silently: the caller removes the Docker image of every entry that
    :meth:`evict` returns, so an entry removed for any other reason than :meth:`invalidate` or
    a re-registration under the same image name -- expired in :meth:`get`, dropped by the
    cache's own expiry during another operation, dropped on cache overflow, or replaced by a
    registration under a different image name -- is parked and returned by the next
    :meth:`evict` call.

    One lock guards every cache access (cachetools is not thread-safe and even its reads
    reorder). ``project_ttl`` is called with that lock held: it must be quick and must not
    call back into the registry.
    """

    def __init__(
        self,
        *,
        default_ttl_s: float,
        max_count: int,
        max_size_bytes: int,
        project_ttl: Callable[[str], float | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_limit("default_ttl_s", default_ttl_s)
        _check_limit("max_count", max_count)
        _check_limit("max_size_bytes", max_size_bytes)
        self._default_ttl_s = default_ttl_s
        self._max_count = max_count
        self._max_size_bytes = max_size_bytes
        self._project_ttl = project_ttl
        self._lock = threading.Lock()
        self._seq = itertools.count()
        # Removed entries whose images still exist; drained by the next evict().
        self._pending: list[_Entry] = []
        self._cache = _DropRecordingCache(_CACHE_MAXSIZE, clock, self._park)

    def register(
        self,
        project_id: str,
        work_item_id: str,
        image_name: str,
        image_size_bytes: int | None = None,
        *,
        created_at: datetime | None = None,
    ) -> SnapshotMetadata:
        """Record ``image_name`` as the snapshot for the pair, replacing any previous entry.

        ``created_at`` (timezone-aware) defaults to now on the registry clock; pass it when
        registering images that already exist, e.g. at start-up. An image already past its
        TTL is not kept but goes straight to the next :meth:`evict` result.
        """
        if image_size_bytes is not None and image_size_bytes < 0:
            raise ValueError(f"image_size_bytes must be >= 0, got {image_size_bytes!r}")
        if created_at is not None and created_at.utcoffset() is None:
            raise ValueError("created_at must be timezone-aware")
        key = (project_id, work_item_id)
        with self._lock, self._cache.timer as now:
            self._cache.expire(now)
            if created_at is None:
                created_ts = now
                created_at = datetime.fromtimestamp(now, UTC)
            else:
                created_ts = created_at.timestamp()
                created_at = created_at.astimezone(UTC)
            metadata = SnapshotMetadata(
                image_name=image_name,
                project_id=project_id,
                work_item_id=work_item_id,
                created_at=created_at,
                image_size_bytes=image_size_bytes,
            )
            entry = _Entry(
                metadata=metadata,
                created_ts=created_ts,
                expires_at=_expiry(created_ts, self._ttl_for(project_id)),
                seq=next(self._seq),
            )
            # The commit just moved this image name onto a new image: evicting a stale
            # entry by that name would delete the snapshot being registered now.
            self._pending = [e for e in self._pending if e.metadata.image_name != image_name]
            previous = self._cache.pop(key, None)
            if previous is not None and previous.metadata.image_name != image_name:
                # Nothing else refers to the replaced image any more.
                self._park(previous)
            if now < entry.expires_at:
                self._cache[key] = entry
            else:
                self._park(entry)
        return metadata

    def get(
        self, project_id: str, work_item_id: str, ttl: float | None = None
    ) -> SnapshotMetadata | None:
        """Return the pair's snapshot, or None when there is none or it has expired.

        ``ttl=None`` means the project's TTL or the default. An expired entry is removed
        here and returned by the next :meth:`evict`.
        """
        if ttl is not None:
            _check_limit("ttl", ttl)
        key = (project_id, work_item_id)
        with self._lock, self._cache.timer as now:
            self._cache.expire(now)
            entry = self._cache.get(key)
            if entry is None:
                return None
            limit = self._ttl_for(project_id) if ttl is None else ttl
            if _is_expired(entry, limit, now):
                del self._cache[key]
                self._park(entry)
                return None
            return entry.metadata

    def invalidate(self, project_id: str, work_item_id: str) -> SnapshotMetadata | None:
        """Remove and return the pair's entry (e.g. its image has gone missing).

        An entry that has already expired is left for :meth:`evict` and None is returned.
        """
        with self._lock, self._cache.timer as now:
            self._cache.expire(now)
            entry = self._cache.pop((project_id, work_item_id), None)
        return None if entry is None else entry.metadata

    def evict(
        self,
        ttl: float | None = None,
        max_count: int | None = None,
        max_size_bytes: int | None = None,
    ) -> list[SnapshotMetadata]:
        """Remove and return, in this order: every entry removed since the last call
        (expired or dropped elsewhere); the entries expired now; the oldest entries beyond
        ``max_count``; then the oldest entries until the summed ``image_size_bytes`` (unknown
        counts 0) fit ``max_size_bytes``.

        None means the global setting; for ``ttl``, each entry's project TTL or the default.
        The caller is expected to remove the image of every returned entry.
        """
        if ttl is not None:
            _check_limit("ttl", ttl)
        count_limit = self._max_count if max_count is None else max_count
        size_limit = self._max_size_bytes if max_size_bytes is None else max_size_bytes
        _check_limit("max_count", count_limit)
        _check_limit("max_size_bytes", size_limit)
        with self._lock, self._cache.timer as now:
            self._cache.expire(now)
            # Decide everything before removing anything, so that a failing project_ttl
            # callback leaves the registry as it was.
            project_ttls: dict[str, float] = {}
            expired: list[_Entry] = []
            kept: list[_Entry] = []
            for entry in self._oldest_first():
                limit = ttl
                if limit is None:
                    project_id = entry.metadata.project_id
                    if project_id not in project_ttls:
                        project_ttls[project_id] = self._ttl_for(project_id)
                    limit = project_ttls[project_id]
                (expired if _is_expired(entry, limit, now) else kept).append(entry)
            over_count = kept[: max(0, len(kept) - count_limit)]
            kept = kept[len(over_count) :]
            total = sum(e.metadata.image_size_bytes or 0 for e in kept)
            over_size: list[_Entry] = []
            for entry in kept:
                if total <= size_limit:
                    break
                over_size.append(entry)
                total -= entry.metadata.image_size_bytes or 0
            removed = expired + over_count + over_size
            for entry in removed:
                del self._cache[entry.key]
            evicted = self._pending + removed
            self._pending = []
        return [entry.metadata for entry in evicted]

    def entries(self) -> list[SnapshotMetadata]:
        """A copy of the entries held (not yet past their registered expiry), oldest first."""
        with self._lock, self._cache.timer as now:
            self._cache.expire(now)
            return [entry.metadata for entry in self._oldest_first()]

    def __len__(self) -> int:
        with self._lock, self._cache.timer as now:
            self._cache.expire(now)
            return len(self._cache)

    def __contains__(self, key: object) -> bool:
        """``(project_id, work_item_id) in registry``: held, as counted by ``len``."""
        if not (isinstance(key, tuple) and len(key) == 2):
            return False
        with self._lock, self._cache.timer as now:
            self._cache.expire(now)
            return key in self._cache

    def _ttl_for(self, project_id: str) -> float:
        override = self._project_ttl(project_id)
        return self._default_ttl_s if override is None else override

    def _oldest_first(self) -> list[_Entry]:
        return sorted(self._cache.values(), key=lambda e: (e.created_ts, e.seq))

    def _park(self, entry: _Entry) -> None:
        # Called with the lock held, including from inside the cache's own methods.
        self._pending.append(entry)

"""The lookup cache: answers by (map, key), each fresh for its TTL and kept a little longer.

An entry is fresh until ``expires``; after that it is only served when the database cannot
answer, and only until ``stale_until`` (``cache.max_stale`` seconds later). Errors are never
stored. The cache is bounded in entries: past ``max_entries`` the least recently used entry
goes (cachetools.LRUCache). Time comes from an injected clock, so tests step it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache

from mailmapd.proto import Found, NotFound

CacheKey = tuple[str, str]
Answer = Found | NotFound


@dataclass(slots=True)
class Entry:
    result: Answer
    expires: float
    stale_until: float


class _LRU(LRUCache[CacheKey, Entry]):
    """cachetools.LRUCache that reports evictions."""

    def __init__(self, maxsize: int, on_evict: Callable[[], None]) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[CacheKey, Entry]:
        item = super().popitem()
        self._on_evict()
        return item


class LookupCache:
    def __init__(
        self,
        max_entries: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[], None] = lambda: None,
    ) -> None:
        self._data = _LRU(max_entries, on_evict)
        self._clock = clock

    def __len__(self) -> int:
        return len(self._data)

    def fresh(self, key: CacheKey) -> Answer | None:
        """The answer if it is still within its TTL (the hot path: one dict lookup)."""
        entry = self._data.get(key)
        if entry is not None and self._clock() < entry.expires:
            return entry.result
        return None

    def stale(self, key: CacheKey) -> Answer | None:
        """An expired answer that may still stand in while the database is failing."""
        entry = self._data.get(key)
        if entry is not None and self._clock() < entry.stale_until:
            return entry.result
        return None

    def put(self, key: CacheKey, result: Answer, ttl: float, max_stale: float) -> None:
        if ttl <= 0:
            return
        expires = self._clock() + ttl
        self._data[key] = Entry(result, expires, expires + max_stale)

    def flush(self, table: str | None = None, key: str | None = None) -> int:
        """Drop everything, one map's entries, or one key of one map; return how many."""
        if table is None:
            count = len(self._data)
            self._data.clear()
            return count
        if key is not None:
            return 1 if self._data.pop((table, key), None) is not None else 0
        return self.flush_maps({table})

    def flush_maps(self, tables: set[str]) -> int:
        """Drop every entry of the given maps."""
        doomed = [k for k in self._data if k[0] in tables]
        for k in doomed:
            del self._data[k]
        return len(doomed)

"""The lookup cache: answers by map and key, each fresh for its TTL and kept a little longer.

An entry is fresh until it expires; after that it is only served when the database cannot
answer, and only for ``max_stale`` more seconds (``cache.max_stale``). Errors are never
stored. Time comes from an injected clock, so tests step it.

The cache is built for size (issue 7: a million entries within 300 MB of RSS), so an entry
is one ``bytes`` object in a plain dict per map, keyed by the lookup key::

    expiry (8-byte double, clock time) | value (UTF-8; empty: the key was not found)

A found value is never empty (mailmapd.proto.Found), so the empty value can stand for "not
found". There is no per-entry tuple, float or object. ``fresh_value`` hands out the value
still in UTF-8, which is what the server writes (the hot path: a cache hit becomes a reply
without an answer object in between); ``fresh`` and ``stale`` decode it into an Answer. A
mailbox entry costs about 190 to 210 bytes with its key (``bench/cache_memory.py``).

The bound is approximately least-recently-used, kept with two generations: new entries and
entries read since the last rotation live in ``young``, the others in ``old``. A hit in
``old`` moves the entry to ``young``. When ``young`` holds ``max_entries // 2`` entries and
another comes, ``old`` is dropped whole (reported to ``on_evict`` with its size), ``young``
becomes ``old``, and a new ``young`` starts. So at most ``max_entries`` entries are held,
and an entry put or read within the last ``max_entries // 2`` puts and reads is still there.
The entries of ``old`` not read before the next rotation go then, so right after a rotation
the cache may hold as few as ``max_entries // 2``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping
from typing import Final

from mailmapd.proto import NOT_FOUND, Found, NotFound

Answer = Found | NotFound
Generation = dict[str, dict[str, bytes]]  # map name -> key -> packed entry

_EXPIRY: Final = struct.Struct("d")
_VALUE: Final = _EXPIRY.size  # the offset of the value
_NO_ENTRIES: Final[Mapping[str, bytes]] = {}  # the map of a generation that has none; never written


def answer_of(value: bytes) -> Answer:
    """The Answer a cached value stands for (``fresh_value``'s form: b"" is not found)."""
    return Found(value.decode()) if value else NOT_FOUND


class LookupCache:
    def __init__(
        self,
        max_entries: int,
        *,
        max_stale: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[int], object] = lambda _: None,
    ) -> None:
        self._young_max = max(1, max_entries // 2)
        # Room left for the old generation: young is kept at a rotation only if it fits
        # (it does not when max_entries is 1).
        self._old_max = max_entries - self._young_max
        self._max_stale = max_stale
        self._clock = clock
        self._on_evict = on_evict
        self._young: Generation = {}
        self._old: Generation = {}
        self._young_count = 0
        self._old_count = 0

    def __len__(self) -> int:
        return self._young_count + self._old_count

    def fresh_value(self, table: str, key: str) -> bytes | None:
        """The answer if it is still within its TTL, as its value in UTF-8 (b"": not found).

        The hot path: two dict lookups on a hit, and no answer object."""
        packed = self._young.get(table, _NO_ENTRIES).get(key)
        if packed is None:
            packed = self._old.get(table, _NO_ENTRIES).get(key)
            if packed is None or self._clock() >= _EXPIRY.unpack_from(packed)[0]:
                return None
            self._promote(table, key, packed)
        elif self._clock() >= _EXPIRY.unpack_from(packed)[0]:
            return None
        return packed[_VALUE:]

    def fresh(self, table: str, key: str) -> Answer | None:
        """The answer if it is still within its TTL."""
        value = self.fresh_value(table, key)
        return None if value is None else answer_of(value)

    def stale(self, table: str, key: str) -> Answer | None:
        """An answer expired at most ``max_stale`` seconds ago, to stand in while the database fails."""
        packed = self._young.get(table, _NO_ENTRIES).get(key)
        in_old = packed is None
        if in_old:
            packed = self._old.get(table, _NO_ENTRIES).get(key)
        if packed is None or self._clock() >= _EXPIRY.unpack_from(packed)[0] + self._max_stale:
            return None
        if in_old:
            self._promote(table, key, packed)
        return answer_of(packed[_VALUE:])

    def put(self, table: str, key: str, result: Answer, ttl: float) -> None:
        """Keep ``result`` for ``ttl`` seconds (and ``max_stale`` more); ttl <= 0 keeps nothing.

        A Found with an empty value is kept as not found (the wire answers it so too)."""
        if ttl <= 0:
            return
        packed = _EXPIRY.pack(self._clock() + ttl)
        if isinstance(result, Found):
            packed += result.value.encode()
        young = self._young.get(table)
        if young is not None and key in young:
            young[key] = packed  # a new answer for a young entry: nothing moves
            return
        old = self._old.get(table)
        if old is not None and old.pop(key, None) is not None:
            self._old_count -= 1
        self._add_young(table, key, packed)

    def flush(self, table: str | None = None, key: str | None = None) -> int:
        """Drop everything, one map's entries, or one key of one map; return how many."""
        if table is None:
            count = len(self)
            self._young, self._old = {}, {}
            self._young_count = self._old_count = 0
            return count
        if key is None:
            return self.flush_maps({table})
        young = self._young.get(table)
        if young is not None and young.pop(key, None) is not None:
            self._young_count -= 1
            return 1
        old = self._old.get(table)
        if old is not None and old.pop(key, None) is not None:
            self._old_count -= 1
            return 1
        return 0

    def flush_maps(self, tables: set[str]) -> int:
        """Drop every entry of the given maps; return how many."""
        young = sum(len(self._young.pop(table, _NO_ENTRIES)) for table in tables)
        old = sum(len(self._old.pop(table, _NO_ENTRIES)) for table in tables)
        self._young_count -= young
        self._old_count -= old
        return young + old

    def _promote(self, table: str, key: str, packed: bytes) -> None:
        """Move an entry that was just read from old to young."""
        del self._old[table][key]
        self._old_count -= 1
        self._add_young(table, key, packed)

    def _add_young(self, table: str, key: str, packed: bytes) -> None:
        """Insert a key that is in neither generation, rotating first if young is full."""
        if self._young_count >= self._young_max:
            self._rotate()
        young = self._young.get(table)
        if young is None:
            young = self._young[table] = {}
        young[key] = packed
        self._young_count += 1

    def _rotate(self) -> None:
        """Drop old; young becomes old (if it fits in max_entries) and a new young starts."""
        evicted = self._old_count
        if self._young_count <= self._old_max:
            self._old, self._old_count = self._young, self._young_count
        else:
            evicted += self._young_count
            self._old, self._old_count = {}, 0
        self._young, self._young_count = {}, 0
        if evicted:
            self._on_evict(evicted)

"""The cache and the resolver around it: TTLs, the LRU bound, stale answers, coalescing,
and the metrics they report, with a fake clock and fake maps."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from mailmapd.backends import BackendError
from mailmapd.cache import LookupCache
from mailmapd.lookup import CachePolicy, Resolver
from mailmapd.metrics import Metrics
from mailmapd.proto import NOT_FOUND, Found, TempFail


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TableMap:
    """A map over a dict that can be made to fail or to block; counts its lookups."""

    def __init__(self, rows: dict[str, str]) -> None:
        self.rows = rows
        self.calls = 0
        self.fail: str | None = None
        self.gate: asyncio.Event | None = None

    async def lookup(self, key: str) -> str | None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise BackendError(self.fail, "down")
        return self.rows.get(key)


def make(
    rows: dict[str, str], *, positive: float = 60, negative: float = 10, max_stale: float = 30, max_entries: int = 100
) -> tuple[Resolver, TableMap, Clock, CollectorRegistry]:
    clock = Clock()
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    table = TableMap(rows)
    cache = LookupCache(max_entries, clock=clock, on_evict=metrics.cache_evictions.inc)
    resolver = Resolver(
        {"m": table},
        timeout=1,
        cache=cache,
        policies={"m": CachePolicy(positive, negative, max_stale)},
        metrics=metrics,
        clock=clock,
    )
    return resolver, table, clock, registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_found_is_cached_for_positive_ttl() -> None:
    resolver, table, clock, registry = make({"a": "1"})
    assert await resolver.resolve("m", "a") == Found("1")
    assert resolver.cached("m", "a") == Found("1")
    assert await resolver.resolve("m", "a") == Found("1")
    assert table.calls == 1
    clock.now += 60
    assert resolver.cached("m", "a") is None  # expired exactly at the TTL
    assert await resolver.resolve("m", "a") == Found("1")
    assert table.calls == 2
    assert sample(registry, "mailmapd_cache_hits_total", map="m") == 2
    assert sample(registry, "mailmapd_cache_misses_total", map="m") == 2


async def test_not_found_has_its_own_shorter_ttl() -> None:
    resolver, _table, clock, _ = make({})
    assert await resolver.resolve("m", "a") == NOT_FOUND
    clock.now += 9.9
    assert resolver.cached("m", "a") == NOT_FOUND
    clock.now += 0.2
    assert resolver.cached("m", "a") is None


async def test_zero_ttl_caches_nothing() -> None:
    resolver, table, _, _ = make({"a": "1"}, positive=0, negative=0)
    await resolver.resolve("m", "a")
    await resolver.resolve("m", "a")
    assert table.calls == 2


async def test_errors_are_never_cached() -> None:
    resolver, table, _, registry = make({"a": "1"})
    table.fail = "connect"
    assert await resolver.resolve("m", "a") == TempFail("database unavailable (connect)")
    assert resolver.cached("m", "a") is None
    table.fail = None
    assert await resolver.resolve("m", "a") == Found("1")
    assert sample(registry, "mailmapd_backend_errors_total", reason="connect") == 1
    assert sample(registry, "mailmapd_backend_up") == 1  # back up after an answer


async def test_stale_answer_is_served_during_an_outage_up_to_max_stale() -> None:
    resolver, table, clock, registry = make({"a": "1"}, positive=60, max_stale=30)
    await resolver.resolve("m", "a")
    table.fail = "connect"
    clock.now += 75  # expired 15 s ago: within max_stale
    assert await resolver.resolve("m", "a") == Found("1")
    assert sample(registry, "mailmapd_cache_stale_served_total", map="m") == 1
    assert sample(registry, "mailmapd_backend_up") == 0
    assert sample(registry, "mailmapd_lookup_seconds_count", map="m", source="stale") == 1
    clock.now += 20  # 35 s past the TTL: too old
    assert await resolver.resolve("m", "a") == TempFail("database unavailable (connect)")


async def test_stale_is_not_served_when_the_database_answers() -> None:
    resolver, table, clock, _ = make({"a": "1"})
    await resolver.resolve("m", "a")
    table.rows["a"] = "2"
    clock.now += 61
    assert await resolver.resolve("m", "a") == Found("2")


async def test_max_stale_zero_turns_stale_answers_off() -> None:
    resolver, table, clock, _ = make({"a": "1"}, max_stale=0)
    await resolver.resolve("m", "a")
    table.fail = "timeout"
    clock.now += 61
    assert isinstance(await resolver.resolve("m", "a"), TempFail)


async def test_broken_query_does_not_mark_the_backend_down() -> None:
    resolver, table, _, registry = make({"a": "1"})
    table.fail = "query"
    await resolver.resolve("m", "a")
    assert sample(registry, "mailmapd_backend_up") == 1
    assert sample(registry, "mailmapd_backend_errors_total", reason="query") == 1


async def test_concurrent_identical_lookups_share_one_search() -> None:
    resolver, table, _, _ = make({"a": "1"})
    table.gate = asyncio.Event()
    waiters = [asyncio.create_task(resolver.resolve("m", "a")) for _ in range(10)]
    await asyncio.sleep(0)
    table.gate.set()
    assert list(await asyncio.gather(*waiters)) == [Found("1")] * 10
    assert table.calls == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_search() -> None:
    resolver, table, _, _ = make({"a": "1"})
    table.gate = asyncio.Event()
    first = asyncio.create_task(resolver.resolve("m", "a"))
    second = asyncio.create_task(resolver.resolve("m", "a"))
    await asyncio.sleep(0)
    first.cancel()  # e.g. its client hung up
    table.gate.set()
    assert await second == Found("1")
    assert table.calls == 1


async def test_different_keys_do_not_share() -> None:
    resolver, table, _, _ = make({"a": "1", "b": "2"})
    results = await asyncio.gather(resolver.resolve("m", "a"), resolver.resolve("m", "b"))
    assert list(results) == [Found("1"), Found("2")]
    assert table.calls == 2


async def test_lru_bound_evicts_and_counts() -> None:
    resolver, _table, _, registry = make({"a": "1", "b": "2", "c": "3"}, max_entries=2)
    for key in ("a", "b"):
        await resolver.resolve("m", key)
    assert resolver.cached("m", "a") == Found("1")  # a is now the most recently used
    await resolver.resolve("m", "c")  # evicts b
    assert resolver.cached("m", "b") is None
    assert resolver.cached("m", "a") == Found("1")
    assert len(resolver.cache) == 2
    assert sample(registry, "mailmapd_cache_evictions_total") == 1


def test_flush_all_one_map_one_key() -> None:
    clock = Clock()
    cache = LookupCache(100, clock=clock)
    for table in ("m", "n"):
        for key in ("a", "b"):
            cache.put((table, key), Found(key), 60, 0)
    assert cache.flush("m", "a") == 1
    assert cache.fresh(("m", "a")) is None
    assert cache.fresh(("m", "b")) == Found("b")
    assert cache.flush("m") == 1
    assert cache.flush_maps({"n"}) == 2
    cache.put(("m", "a"), Found("a"), 60, 0)
    assert cache.flush() == 1
    assert len(cache) == 0


async def test_lookup_latency_is_recorded_by_source() -> None:
    resolver, _, _, registry = make({"a": "1"})
    await resolver.resolve("m", "a")
    await resolver.resolve("m", "a")
    assert sample(registry, "mailmapd_lookup_seconds_count", map="m", source="backend") == 1
    assert sample(registry, "mailmapd_lookup_seconds_count", map="m", source="cache") == 1

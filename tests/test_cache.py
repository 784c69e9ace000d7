"""The cache and the resolver around it: TTLs, the LRU bound, stale answers, coalescing,
and the metrics they report, with a fake clock and fake maps."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from mailmapd.backends import BackendError
from mailmapd.cache import LookupCache
from mailmapd.lookup import CachePolicy, Resolver
from mailmapd.metrics import Metrics
from mailmapd.proto import NOT_FOUND, Found, NotFound, TempFail


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
    cache = LookupCache(max_entries, max_stale=max_stale, clock=clock, on_evict=metrics.cache_evictions.inc)
    resolver = Resolver(
        {"m": table},
        timeout=1,
        cache=cache,
        policies={"m": CachePolicy(positive, negative)},
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
    assert resolver.cached_value("m", "a") == b"1"
    assert await resolver.resolve("m", "a") == Found("1")
    assert table.calls == 1
    clock.now += 60
    assert resolver.cached_value("m", "a") is None  # expired exactly at the TTL
    assert await resolver.resolve("m", "a") == Found("1")
    assert table.calls == 2
    assert sample(registry, "mailmapd_cache_hits_total", map="m") == 2
    assert sample(registry, "mailmapd_cache_misses_total", map="m") == 2


async def test_not_found_has_its_own_shorter_ttl() -> None:
    resolver, _table, clock, _ = make({})
    assert await resolver.resolve("m", "a") == NOT_FOUND
    clock.now += 9.9
    assert resolver.cached_value("m", "a") == b""
    clock.now += 0.2
    assert resolver.cached_value("m", "a") is None


async def test_zero_ttl_caches_nothing() -> None:
    resolver, table, _, _ = make({"a": "1"}, positive=0, negative=0)
    await resolver.resolve("m", "a")
    await resolver.resolve("m", "a")
    assert table.calls == 2


async def test_errors_are_never_cached() -> None:
    resolver, table, _, registry = make({"a": "1"})
    table.fail = "connect"
    assert await resolver.resolve("m", "a") == TempFail("database unavailable (connect)")
    assert resolver.cached_value("m", "a") is None
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
    assert resolver.cached_value("m", "a") == b"1"  # a is now the most recently used
    await resolver.resolve("m", "c")  # evicts b
    assert resolver.cached_value("m", "b") is None
    assert resolver.cached_value("m", "a") == b"1"
    assert len(resolver.cache) == 2
    assert sample(registry, "mailmapd_cache_evictions_total") == 1


async def test_lookup_latency_is_recorded_by_source() -> None:
    resolver, _, _, registry = make({"a": "1"})
    await resolver.resolve("m", "a")
    await resolver.resolve("m", "a")
    assert sample(registry, "mailmapd_lookup_seconds_count", map="m", source="backend") == 1
    assert sample(registry, "mailmapd_lookup_seconds_count", map="m", source="cache") == 1


# --------------------------------------------------------------------------- the cache on its own


def new_cache(max_entries: int = 100, *, max_stale: float = 0) -> tuple[LookupCache, Clock, list[int]]:
    """A cache on a fake clock, with the list of the eviction counts it reported."""
    clock = Clock()
    evictions: list[int] = []
    return LookupCache(max_entries, max_stale=max_stale, clock=clock, on_evict=evictions.append), clock, evictions


def held(cache: LookupCache) -> list[tuple[str, str]]:
    """Every (map, key) the cache holds, from both generations (twice if held twice)."""
    return [(table, key) for gen in (cache._young, cache._old) for table, keys in gen.items() for key in keys]


def test_fresh_until_the_ttl_then_none() -> None:
    cache, clock, _ = new_cache()
    cache.put("m", "a", Found("1"), 60)
    cache.put("m", "b", NOT_FOUND, 10)
    assert cache.fresh("m", "a") == Found("1")
    assert cache.fresh("m", "b") is NOT_FOUND
    assert cache.fresh("n", "a") is None  # maps are separate
    clock.now += 10
    assert cache.fresh("m", "b") is None  # expired exactly at the TTL
    clock.now += 49.9
    assert cache.fresh("m", "a") == Found("1")
    clock.now += 0.1
    assert cache.fresh("m", "a") is None


def test_a_new_answer_replaces_the_old_one() -> None:
    cache, clock, _ = new_cache()
    cache.put("m", "a", Found("1"), 60)
    clock.now += 50
    cache.put("m", "a", NOT_FOUND, 30)
    clock.now += 20  # past the first TTL, within the second
    assert cache.fresh("m", "a") is NOT_FOUND
    assert len(cache) == 1


def test_zero_or_negative_ttl_stores_nothing() -> None:
    cache, _, _ = new_cache()
    cache.put("m", "a", Found("1"), 0)
    cache.put("m", "b", NOT_FOUND, -1)
    assert cache.fresh("m", "a") is None
    assert cache.fresh("m", "b") is None
    assert len(cache) == 0


def test_stale_answers_within_max_stale_only() -> None:
    cache, clock, _ = new_cache(max_stale=30)
    cache.put("m", "a", Found("1"), 60)
    cache.put("m", "b", NOT_FOUND, 10)
    assert cache.stale("m", "a") == Found("1")  # a fresh answer is also good enough
    clock.now += 39.9
    assert cache.fresh("m", "b") is None
    assert cache.stale("m", "b") is NOT_FOUND
    clock.now += 0.1
    assert cache.stale("m", "b") is None
    clock.now += 49.9  # 89.9: 29.9 s past the TTL of a
    assert cache.fresh("m", "a") is None
    assert cache.stale("m", "a") == Found("1")
    clock.now += 0.1
    assert cache.stale("m", "a") is None
    assert cache.stale("m", "missing") is None


def test_max_stale_zero_serves_nothing_expired() -> None:
    cache, clock, _ = new_cache(max_stale=0)
    cache.put("m", "a", Found("1"), 60)
    clock.now += 60
    assert cache.stale("m", "a") is None


def test_bound_holds_and_every_eviction_is_counted() -> None:
    cache, _, evictions = new_cache(10)
    for n in range(100):
        cache.put("m", f"k{n}", Found(str(n)), 60)
        assert len(cache) <= 10
    assert len(cache) + sum(evictions) == 100
    assert set(evictions) == {5}  # a whole old generation (half of max_entries) at a time
    assert all(cache.fresh("m", f"k{n}") == Found(str(n)) for n in range(95, 100))  # the last half stays
    assert sorted(held(cache)) == sorted(set(held(cache)))


def test_a_hit_in_the_old_generation_survives_the_next_rotation() -> None:
    cache, _, evictions = new_cache(4)  # generations of 2
    cache.put("m", "a", Found("a"), 60)
    cache.put("m", "b", Found("b"), 60)
    cache.put("m", "c", Found("c"), 60)  # rotates: a and b are old, c is young
    assert evictions == []
    assert cache.fresh("m", "a") == Found("a")  # moves a to young, beside c
    cache.put("m", "d", Found("d"), 60)  # rotates: b goes, c and a become old
    assert evictions == [1]
    assert cache.fresh("m", "b") is None
    assert cache.fresh("m", "a") == Found("a")
    assert cache.stale("m", "c") == Found("c")  # a stale read counts as a use too
    assert len(cache) == 3
    assert sorted(held(cache)) == [("m", "a"), ("m", "c"), ("m", "d")]


def test_an_entry_is_never_held_or_counted_twice() -> None:
    cache, _, evictions = new_cache(4)
    for key in ("a", "b", "c"):  # a and b old, c young
        cache.put("m", key, Found(key), 60)
    cache.put("m", "a", Found("a2"), 60)  # a new answer for an old entry moves it to young
    cache.put("m", "c", Found("c2"), 60)  # and for a young one stays in young
    assert len(cache) == 3
    assert sorted(held(cache)) == [("m", "a"), ("m", "b"), ("m", "c")]
    cache.put("m", "d", Found("d"), 60)  # rotates: only b goes
    assert evictions == [1]
    assert cache.fresh("m", "a") == Found("a2")
    assert cache.fresh("m", "c") == Found("c2")
    assert len(cache) == len(held(cache)) == 3


def test_one_entry_at_most() -> None:
    cache, _, evictions = new_cache(1)
    cache.put("m", "a", Found("a"), 60)
    cache.put("m", "b", Found("b"), 60)
    assert len(cache) == 1
    assert evictions == [1]
    assert cache.fresh("m", "a") is None
    assert cache.fresh("m", "b") == Found("b")


def test_flush_all_one_map_one_key() -> None:
    cache, _, evictions = new_cache(6)  # generations of 3: the first three puts go old
    for table in ("m", "n"):
        for key in ("a", "b"):
            cache.put(table, key, Found(key), 60)
    assert "a" in cache._old["m"]
    assert "b" in cache._young["n"]
    assert cache.flush("m", "a") == 1  # from the old generation
    assert cache.flush("m", "a") == 0
    assert cache.flush("n", "b") == 1  # from the young generation
    assert cache.fresh("m", "a") is None
    assert cache.fresh("m", "b") == Found("b")
    assert len(cache) == 2
    assert cache.flush("m") == 1
    assert cache.flush("x") == 0
    cache.put("m", "a", Found("a"), 60)
    cache.put("o", "a", Found("a"), 60)
    assert cache.flush_maps({"n", "m", "x"}) == 2
    assert cache.fresh("o", "a") == Found("a")
    assert cache.flush() == 1
    assert len(cache) == 0
    assert held(cache) == []
    assert evictions == []


def test_non_ascii_keys_and_values() -> None:
    cache, _, _ = new_cache()
    cache.put("mailboxes", "jürgen@exämple.test", Found("exämple.test/jürgen/"), 60)
    cache.put("mailboxes", "用户@例子.测试", Found("例子.测试/用户/"), 60)
    cache.put("aliases", "🦆@example.test", Found("duck@example.test, 🦆🦆@example.test"), 60)
    cache.put("aliases", "ünknown@example.test", NOT_FOUND, 60)
    assert cache.fresh("mailboxes", "jürgen@exämple.test") == Found("exämple.test/jürgen/")
    assert cache.fresh("mailboxes", "jurgen@exämple.test") is None
    assert cache.fresh("mailboxes", "用户@例子.测试") == Found("例子.测试/用户/")
    assert cache.stale("aliases", "🦆@example.test") == Found("duck@example.test, 🦆🦆@example.test")
    assert cache.fresh("aliases", "ünknown@example.test") is NOT_FOUND


# --------------------------------------------------------------------------- against a reference model

TABLES = st.sampled_from(["m", "n"])
KEYS = st.sampled_from(["a", "b", "ä", "用"])
ANSWERS = st.one_of(st.just(NOT_FOUND), st.builds(Found, st.text(min_size=1, max_size=8)))
STEPS = {
    "put": st.tuples(st.just("put"), TABLES, KEYS, ANSWERS, st.sampled_from([0, 1, 5, 60, 60, 60])),
    "read": st.tuples(st.sampled_from(["fresh", "stale"]), TABLES, KEYS),
    "tick": st.tuples(st.just("tick"), st.sampled_from([0.5, 1, 5, 30])),
    "flush": st.one_of(
        st.tuples(st.just("flush"), st.one_of(st.none(), TABLES), st.one_of(st.none(), KEYS)),
        st.tuples(st.just("flush_maps"), st.frozensets(TABLES)),
    ),
}
# Mostly puts and reads, so that the cache fills and rotates between flushes.
OPS = st.sampled_from(["put"] * 4 + ["read"] * 4 + ["tick", "flush"]).flatmap(STEPS.__getitem__)


def flushes(op: tuple[Any, ...], table: str, key: str) -> bool:
    """Whether a flush or flush_maps operation of the model drops this entry."""
    if op[0] == "flush_maps":
        return table in op[1]
    _, flush_table, flush_key = op
    return flush_table is None or (flush_table == table and flush_key in {None, key})


@given(
    max_entries=st.sampled_from(range(1, 7)),
    max_stale=st.sampled_from([0, 3, 20]),
    ops=st.lists(OPS, min_size=50, max_size=300),
)
def test_the_cache_agrees_with_a_reference_model(
    max_entries: int, max_stale: float, ops: list[tuple[Any, ...]]
) -> None:
    """The model keeps every answer put and not flushed, and when each was last used (put,
    or read by a hit). The cache may have dropped an entry, but only one followed by more
    than max_entries // 2 uses of others (whether it has expired or not); it never answers
    wrongly, nor past expiry, and it counts each entry it holds, drops or flushes once."""
    cache, clock, evictions = new_cache(max_entries, max_stale=max_stale)
    # A generation holds max_entries // 2 entries, so an entry outlives that many uses of
    # others; with max_entries = 1 there is no old generation and it outlives none.
    window = max_entries // 2 + 1 if max_entries > 1 else 1
    model: dict[tuple[str, str], tuple[Found | NotFound, float]] = {}  # answer, expiry
    last_use: dict[tuple[str, str], int] = {}
    uses = added = flushed = 0

    def recent() -> set[tuple[str, str]]:
        """The entries used (put, or read by a hit) within the last ``window`` uses."""
        return {item for item in model if uses - last_use[item] < window}

    for op in ops:
        if op[0] == "put":
            _, table, key, answer, ttl = op
            if ttl > 0:
                added += (table, key) not in held(cache)
                model[table, key] = (answer, clock.now + ttl)
                uses += 1
                last_use[table, key] = uses
            cache.put(table, key, answer, ttl)
        elif op[0] in {"fresh", "stale"}:
            kind, table, key = op
            got = cache.fresh(table, key) if kind == "fresh" else cache.stale(table, key)
            answer, expiry = model.get((table, key), (None, -1.0))
            usable = clock.now < (expiry if kind == "fresh" else expiry + max_stale)
            if got is not None:
                assert usable
                assert got == answer
                uses += 1
                last_use[table, key] = uses
            else:
                assert not usable or (table, key) not in recent(), f"{table}/{key} dropped too early"
        elif op[0] == "tick":
            clock.now += op[1]
        else:
            doomed = [item for item in model if flushes(op, *item)]
            expected = sum(item in held(cache) for item in doomed)
            count = cache.flush(op[1], op[2]) if op[0] == "flush" else cache.flush_maps(set(op[1]))
            assert count == expected
            flushed += count
            for item in doomed:
                del model[item]
        assert len(cache) <= max_entries
        assert len(cache) == len(held(cache)) == len(set(held(cache)))
        assert recent() <= set(held(cache)), "an entry used recently was dropped"
        assert len(cache) + sum(evictions) + flushed == added

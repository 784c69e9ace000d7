"""The Resolver: a map name and a key in, Found | NotFound | TempFail | PermFail out.

This is where the failure rule lives. Every lookup has one deadline for its whole search
order; a database error, a lost connection or the deadline answers TempFail, never
NotFound: a wrong "not found" bounces real mail, a TempFail only delays it.

In front of the database sits the cache: ``cached_value()`` answers a fresh entry
synchronously, as the value in UTF-8 that the server writes (the server calls it from
``data_received``, with no task, no await and no answer object); a miss goes to
``resolve()``, where concurrent lookups of the same key share one database search. When the
database cannot answer, an answer up to ``cache.max_stale`` seconds past its TTL is served
instead of TEMP; errors themselves are never cached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mailmapd.backends import BackendError
from mailmapd.cache import LookupCache, answer_of
from mailmapd.maps import Map
from mailmapd.metrics import CounterChild, HistogramChild, Metrics
from mailmapd.proto import NOT_FOUND, Found, NotFound, PermFail, Result, TempFail

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CachePolicy:
    positive_ttl: float
    negative_ttl: float


class Resolver:
    def __init__(
        self,
        maps: Mapping[str, Map],
        timeout: float,
        *,
        cache: LookupCache | None = None,
        policies: Mapping[str, CachePolicy] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._maps = dict(maps)
        self._timeout = timeout
        self._cache = cache if cache is not None else LookupCache(1, clock=clock)
        self._policies = dict(policies or {})
        self._metrics = metrics
        self._inflight: dict[tuple[str, str], asyncio.Task[Result]] = {}
        self._stale_logged = -1e9
        self._query_error_logged: dict[str, float] = {}
        self._clock = clock
        self._hit_metrics: dict[str, tuple[CounterChild, HistogramChild]] = {}

    @property
    def cache(self) -> LookupCache:
        return self._cache

    def cached_value(self, table: str, key: str) -> bytes | None:
        """A fresh cached answer as its value in UTF-8 (b"": not found), or None.

        Synchronous: the hot path (``LookupCache.fresh_value``; ``answer_of`` makes it an Answer)."""
        started = time.perf_counter()
        value = self._cache.fresh_value(table, key)
        if value is not None and self._metrics is not None:
            hits, seconds = self._hit_metrics.get(table) or self._new_hit_metrics(table)
            hits.inc()
            seconds.observe(time.perf_counter() - started)
        return value

    def _new_hit_metrics(self, table: str) -> tuple[CounterChild, HistogramChild]:
        """A cache hit's labelled children, kept per map: labels() costs more than the counting.
        Only maps with cached entries get here, so this stays small."""
        assert self._metrics is not None
        children = (self._metrics.cache_hits.labels(table), self._metrics.lookup_seconds.labels(table, "cache"))
        self._hit_metrics[table] = children
        return children

    async def resolve(self, table: str, key: str) -> Result:
        """Answer one lookup; never raises for a database problem."""
        hit = self.cached_value(table, key)
        if hit is not None:
            return answer_of(hit)
        if table not in self._maps:
            return PermFail(f"unknown map {table!r}")
        if self._metrics is not None:
            self._metrics.cache_misses.labels(table).inc()
        cache_key = (table, key)
        task = self._inflight.get(cache_key)
        if task is None:
            # A task of its own, so that a client hanging up does not cancel the search
            # that other connections are waiting for; the deadline bounds it.
            task = asyncio.get_running_loop().create_task(self._search(table, key))
            self._inflight[cache_key] = task
            task.add_done_callback(lambda _: self._inflight.pop(cache_key, None))
        return await asyncio.shield(task)

    async def _search(self, table: str, key: str) -> Result:
        started = time.perf_counter()
        metrics = self._metrics
        if metrics is not None:
            metrics.requests_in_flight.inc()
        try:
            async with asyncio.timeout(self._timeout):
                value = await self._maps[table].lookup(key)
        except TimeoutError:
            return self._failed(table, key, "timeout", f"database did not answer within {self._timeout:g}s", started)
        except BackendError as exc:
            if exc.reason == "query":
                self._warn_query_error(table, exc)
            else:
                log.debug("lookup %s failed: %s", table, exc)
            return self._failed(table, key, exc.reason, f"database unavailable ({exc.reason})", started)
        finally:
            if metrics is not None:
                metrics.requests_in_flight.dec()
        result: Found | NotFound = Found(value) if value else NOT_FOUND
        policy = self._policies.get(table)
        if policy is not None:
            ttl = policy.positive_ttl if isinstance(result, Found) else policy.negative_ttl
            self._cache.put(table, key, result, ttl)
        if metrics is not None:
            metrics.backend_up.set(1)
        self._observe(table, "backend", started)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("lookup %s %r -> %s ms=%.2f", table, key, type(result).__name__, _ms(started))
        return result

    def _warn_query_error(self, table: str, exc: BackendError) -> None:
        """A failing query needs a person (a bad custom query, a missing table, a locked
        file): WARNING, at most once a minute per map."""
        now = self._clock()
        if now - self._query_error_logged.get(table, -1e9) >= 60:  # noqa: PLR2004 - one line a minute
            self._query_error_logged[table] = now
            log.warning("lookup %s: the query failed: %s", table, exc)

    def _failed(self, table: str, key: str, reason: str, message: str, started: float) -> Result:
        metrics = self._metrics
        if metrics is not None:
            metrics.backend_errors.labels(reason).inc()
            if reason != "query":  # a broken custom query is not the database being down
                metrics.backend_up.set(0)
        stale = self._cache.stale(table, key)
        if stale is not None:
            now = self._clock()
            if now - self._stale_logged >= 60:  # noqa: PLR2004 - at most one line a minute
                self._stale_logged = now
                log.warning("database failing (%s): serving expired cached answers", reason)
            if metrics is not None:
                metrics.cache_stale_served.labels(table).inc()
            self._observe(table, "stale", started)
            return stale
        self._observe(table, "none", started)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("lookup %s %r -> TempFail (%s) ms=%.2f", table, key, reason, _ms(started))
        return TempFail(message)

    def _observe(self, table: str, source: str, started: float) -> None:
        if self._metrics is not None:
            self._metrics.lookup_seconds.labels(table, source).observe(time.perf_counter() - started)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000

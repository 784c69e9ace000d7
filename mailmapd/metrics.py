"""Prometheus metrics, bound to an injected registry.

Label values are bounded: protocol names, map names from the config (an unknown map name is
reported as ``unknown``), result and source enums, host labels from the config. No label
ever holds a lookup key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mailmapd import __version__

# From tens of microseconds (a cache hit) to seconds (a database at its deadline).
LATENCY_BUCKETS = (
    0.00002,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

RESULTS = ("found", "notfound", "temp", "perm")
SOURCES = ("cache", "backend", "stale", "none")


@dataclass(frozen=True, slots=True)
class Metrics:
    lookups: Counter
    lookup_seconds: Histogram
    backend_queries: Counter
    backend_query_seconds: Histogram
    backend_errors: Counter
    backend_up: Gauge
    cache_hits: Counter
    cache_misses: Counter
    cache_evictions: Counter
    cache_stale_served: Counter
    cache_flushes: Counter
    connections: Counter
    connections_refused: Counter
    connections_open: Gauge
    requests_in_flight: Gauge
    malformed_requests: Counter
    reloads: Counter
    policy_decisions: Counter
    quota_scan_seconds: Histogram
    build_info: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        metrics = cls(
            lookups=Counter(
                "mailmapd_lookups",
                "Lookups answered, by protocol, map and result.",
                ["protocol", "map", "result"],
                registry=registry,
            ),
            lookup_seconds=Histogram(
                "mailmapd_lookup_seconds",
                "Time to answer a lookup, by map and by where the answer came from.",
                ["map", "source"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            backend_queries=Counter("mailmapd_backend_queries", "Database queries sent.", registry=registry),
            backend_query_seconds=Histogram(
                "mailmapd_backend_query_seconds",
                "Time for one database query, errors included.",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            backend_errors=Counter(
                "mailmapd_backend_errors",
                "Lookups the database could not answer, by reason (connect, query, timeout).",
                ["reason"],
                registry=registry,
            ),
            backend_up=Gauge(
                "mailmapd_backend_up",
                "1 when the last lookup that reached the database got an answer, else 0.",
                registry=registry,
            ),
            cache_hits=Counter("mailmapd_cache_hits", "Lookups answered from the cache.", ["map"], registry=registry),
            cache_misses=Counter(
                "mailmapd_cache_misses", "Lookups the cache could not answer.", ["map"], registry=registry
            ),
            cache_evictions=Counter(
                "mailmapd_cache_evictions", "Entries dropped to keep the cache within max_entries.", registry=registry
            ),
            cache_stale_served=Counter(
                "mailmapd_cache_stale_served",
                "Expired answers served because the database could not answer.",
                ["map"],
                registry=registry,
            ),
            cache_flushes=Counter(
                "mailmapd_cache_flushes",
                "Cache flushes, by trigger (command, reload, change).",
                ["trigger"],
                registry=registry,
            ),
            connections=Counter("mailmapd_connections", "Connections accepted.", ["protocol"], registry=registry),
            connections_refused=Counter(
                "mailmapd_connections_refused",
                "Connections closed at once because server.max_connections was reached.",
                registry=registry,
            ),
            connections_open=Gauge(
                "mailmapd_connections_open", "Connections open now.", ["protocol"], registry=registry
            ),
            requests_in_flight=Gauge(
                "mailmapd_requests_in_flight", "Lookups waiting for the database now.", registry=registry
            ),
            malformed_requests=Counter(
                "mailmapd_malformed_requests",
                "Requests that broke the protocol; each closed its connection.",
                ["protocol"],
                registry=registry,
            ),
            reloads=Counter(
                "mailmapd_reloads", "Configuration reloads (SIGHUP), by result.", ["result"], registry=registry
            ),
            policy_decisions=Counter(
                "mailmapd_policy_decisions",
                "Quota policy answers, by result (dunno, reject, defer).",
                ["result"],
                registry=registry,
            ),
            quota_scan_seconds=Histogram(
                "mailmapd_quota_scan_seconds",
                "Time to measure a mailbox's usage, by source (maildirsize, scan, mbox).",
                ["source"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            build_info=Gauge(
                "mailmapd_build_info", "Always 1; the version is a label.", ["version"], registry=registry
            ),
        )
        metrics.build_info.labels(__version__).set(1)
        metrics.backend_up.set(1)
        return metrics


class StateCollector(Collector):
    """Point-in-time facts read when Prometheus scrapes (cache size)."""

    def __init__(self, cache_entries: Callable[[], int]) -> None:
        self._cache_entries = cache_entries

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("mailmapd_cache_entries", "Entries in the lookup cache.", value=self._cache_entries())

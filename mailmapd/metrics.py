"""Prometheus metrics, bound to an injected registry.

Label values are bounded: protocol names, map names from the config (an unknown map name is
reported as ``unknown``), result and source enums, host labels from the config. No label
ever holds a lookup key.

The series that change on every request (lookups, cache hits, lookup time) are LoopCounter and
LoopHistogram: plain ints, no lock, exported when Prometheus scrapes, under the same names,
types, labels and buckets as prometheus_client's own. The rest are prometheus_client's.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import prometheus_client.metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

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

ChildT = TypeVar("ChildT")

RESULTS = ("found", "notfound", "temp", "perm")
SOURCES = ("cache", "backend", "stale", "none")


class _LoopMetric(Collector, Generic[ChildT]):
    """What LoopCounter and LoopHistogram share: a name, label names, and the children by label
    values, made on first use (``labels()``) and registered as a collector."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], *, registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], ChildT] = {}
        registry.register(self)

    def labels(self, *values: str) -> ChildT:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"expected label values for {', '.join(self.labelnames)}, got {values!r}")
            child = self._children[values] = self._new_child()
        return child

    def _new_child(self) -> ChildT:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def describe(self) -> Iterable[Metric]:
        yield self._family()


class LoopCounter(_LoopMetric["CounterChild"]):
    """A labelled counter for the hot path: ``counter.labels(*values).inc()`` adds to a plain int.

    Only the event loop's thread changes it, so it needs no lock (a prometheus_client Counter
    takes one per increment). The exporter's thread reads it while it changes; the GIL makes
    that safe: a scrape copies the children in one step, and a value it reads may be one
    increment behind, never torn.
    """

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for values, child in self._children.copy().items():
            family.add_metric(values, child.value, created=child.created if _created_series() else None)
        yield family


class CounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class LoopHistogram(_LoopMetric["HistogramChild"]):
    """A labelled histogram for the hot path: ``histogram.labels(*values).observe(seconds)``.

    Each child keeps a count per bucket (found by bisection) and a sum, in plain numbers;
    the cumulative ``_bucket`` series are added up at scrape time. Threads as for LoopCounter:
    a scrape copies each child's counts in one step, so its buckets and ``_count`` agree; its
    ``_sum`` may be one observation apart from them.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("histogram buckets must be sorted")
        self.bounds = (*bounds, INF) if bounds[-1:] != [INF] else tuple(bounds)
        # The "le" label values, written as prometheus_client writes them ("2e-05", "+Inf").
        self._les = [floatToGoString(bound) for bound in self.bounds]  # type: ignore[no-untyped-call] # unannotated there
        super().__init__(name, documentation, labelnames, registry=registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for values, child in self._children.copy().items():
            counts = child.counts.copy()
            cumulative, buckets = 0, []
            for le, count in zip(self._les, counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(values, buckets, child.sum)
            if _created_series():
                labels = dict(zip(self.labelnames, values, strict=True))
                family.add_sample(f"{self.name}_created", labels, child.created)
        yield family


class HistogramChild:
    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


def _created_series() -> bool:
    """Whether ``_created`` series are exported: prometheus_client's own switch
    (PROMETHEUS_DISABLE_CREATED_SERIES, disable_created_metrics()), read as its metrics read it."""
    return bool(prometheus_client.metrics._use_created)  # noqa: SLF001 - no public getter


@dataclass(frozen=True, slots=True)
class Metrics:
    lookups: LoopCounter
    lookup_seconds: LoopHistogram
    backend_queries: Counter
    backend_query_seconds: Histogram
    backend_errors: Counter
    backend_up: Gauge
    cache_hits: LoopCounter
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
            lookups=LoopCounter(
                "mailmapd_lookups",
                "Lookups answered, by protocol, map and result.",
                ["protocol", "map", "result"],
                registry=registry,
            ),
            lookup_seconds=LoopHistogram(
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
            cache_hits=LoopCounter(
                "mailmapd_cache_hits", "Lookups answered from the cache.", ["map"], registry=registry
            ),
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
                "Requests that broke the protocol, and clients that stopped reading their replies;"
                " each closed its connection.",
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

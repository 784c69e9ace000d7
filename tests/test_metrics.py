"""LoopCounter and LoopHistogram: the same exposition as prometheus_client's Counter and Histogram."""

from __future__ import annotations

import re
import threading

import prometheus_client.metrics
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.registry import DuplicateTimeseries

from mailmapd.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram, Metrics

# Values that land on, just above and far beyond bucket bounds, and the first and last buckets.
OBSERVATIONS = (0.0, 0.00002, 0.000021, 0.0003, 0.001, 2.5, 9.99, 10.0, 10.5, 1e9)
CREATED = re.compile(r"^(\w+_created\{[^}]*\}) \S+$", re.MULTILINE)


def exposition(registry: CollectorRegistry) -> str:
    """The text format, with the ``_created`` timestamps (the only difference) blanked."""
    return CREATED.sub(r"\1 T", generate_latest(registry).decode())


@pytest.fixture(params=[True, False], ids=["created", "no-created"])
def created_series(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """With and without _created series (PROMETHEUS_DISABLE_CREATED_SERIES=true)."""
    monkeypatch.setattr(prometheus_client.metrics, "_use_created", request.param)


@pytest.mark.usefixtures("created_series")
def test_counter_exposition_is_prometheus_clients() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Counter("mailmapd_lookups", "Lookups.", ["protocol", "map"], registry=theirs)
    counter = LoopCounter("mailmapd_lookups", "Lookups.", ["protocol", "map"], registry=ours)
    for labels, times in ((("socketmap", "domains"), 3), (("tcp_table", "mailboxes"), 1), (("policy", "quota"), 0)):
        reference_child, child = reference.labels(*labels), counter.labels(*labels)
        for _ in range(times):
            reference_child.inc()
            child.inc()
    assert exposition(ours) == exposition(theirs)
    assert ours.get_sample_value("mailmapd_lookups_total", {"protocol": "socketmap", "map": "domains"}) == 3
    assert ours.get_sample_value("mailmapd_lookups_total", {"protocol": "policy", "map": "quota"}) == 0


@pytest.mark.usefixtures("created_series")
def test_histogram_exposition_is_prometheus_clients() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    labels = ["map", "source"]
    reference = Histogram("mailmapd_t_seconds", "Time.", labels, buckets=LATENCY_BUCKETS, registry=theirs)
    histogram = LoopHistogram("mailmapd_t_seconds", "Time.", labels, buckets=LATENCY_BUCKETS, registry=ours)
    for value in OBSERVATIONS:
        reference.labels("domains", "cache").observe(value)
        histogram.labels("domains", "cache").observe(value)
    reference.labels("aliases", "backend").observe(0.004)
    histogram.labels("aliases", "backend").observe(0.004)
    assert exposition(ours) == exposition(theirs)
    count = ours.get_sample_value("mailmapd_t_seconds_count", {"map": "domains", "source": "cache"})
    assert count == len(OBSERVATIONS)


def test_histogram_with_inf_among_its_buckets() -> None:
    histogram = LoopHistogram("h", "H.", [], buckets=(1.0, float("inf")), registry=CollectorRegistry())
    assert histogram.bounds == (1.0, float("inf"))
    with pytest.raises(ValueError, match="sorted"):
        LoopHistogram("g", "G.", [], buckets=(2.0, 1.0), registry=CollectorRegistry())


def test_wrong_label_count_is_refused() -> None:
    counter = LoopCounter("c", "C.", ["map"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="map"):
        counter.labels("a", "b")
    histogram = LoopHistogram("h", "H.", ["map"], buckets=(1.0,), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="map"):
        histogram.labels()


def test_names_clash_with_prometheus_client_metrics() -> None:
    registry = CollectorRegistry()
    Counter("mailmapd_lookups", "Lookups.", registry=registry)
    with pytest.raises(DuplicateTimeseries):
        LoopCounter("mailmapd_lookups", "Lookups.", [], registry=registry)


def test_scrapes_while_the_loop_thread_counts() -> None:
    """A scrape in another thread never fails and never sees buckets that disagree with _count."""
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    stop = threading.Event()

    def count() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            table = f"map{i % 50}"  # new children appear while scrapes run
            metrics.lookups.labels("socketmap", table, "found").inc()
            metrics.lookup_seconds.labels(table, "cache").observe(0.00001 * (i % 7))

    worker = threading.Thread(target=count)
    worker.start()
    try:
        for _ in range(50):
            for family in registry.collect():
                if family.name != "mailmapd_lookup_seconds":
                    continue
                by_labels: dict[tuple[str, str], dict[str, float]] = {}
                for sample in family.samples:
                    key = (sample.labels["map"], sample.labels["source"])
                    by_labels.setdefault(key, {})[sample.name + sample.labels.get("le", "")] = sample.value
                for values in by_labels.values():
                    assert values["mailmapd_lookup_seconds_bucket+Inf"] == values["mailmapd_lookup_seconds_count"]
    finally:
        stop.set()
        worker.join()
    total = sum(child.value for child in metrics.lookups._children.values())
    assert total > 0

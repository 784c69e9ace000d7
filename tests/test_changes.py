"""Change tracking: the triggers bump counters, the watcher flushes the maps built on them."""

from __future__ import annotations

import logging

import pytest

from mailmapd.backends.sqlite import SQLiteBackend
from mailmapd.changes import ChangeWatcher
from tests.conftest import make_config


@pytest.fixture
async def backend(sqlite_url: str) -> SQLiteBackend:
    b = SQLiteBackend(make_config(sqlite_url).database)
    await b.fetch("SELECT 1", ())  # creates the tables and triggers
    return b


async def test_each_table_flushes_its_maps(backend: SQLiteBackend) -> None:
    flushed: list[frozenset[str] | None] = []
    watcher = ChangeWatcher(backend, flushed.append, custom_queries=False)
    try:
        assert await watcher.poll() == frozenset()  # the baseline
        await backend.execute("INSERT INTO users VALUES ('u@example.test', 'x', 1)")
        assert await watcher.poll() == frozenset({"mailboxes", "aliases", "email2email", "quota"})
        await backend.execute("UPDATE transport SET transport = 'x' WHERE domain = 'none'")  # no row: no change
        assert await watcher.poll() == frozenset()
        await backend.execute("INSERT INTO transport VALUES ('example.test', 'virtual:')")
        await backend.execute("DELETE FROM domains")  # no rows: a statement trigger would not fire either
        assert await watcher.poll() == frozenset({"transports"})
        await backend.execute("INSERT INTO forwardings VALUES ('a@example.test', 'b@example.test')")
        await backend.execute("INSERT INTO domains VALUES ('example.test')")
        assert await watcher.poll() == frozenset({"aliases", "forwardings", "domains"})
        assert flushed == [
            frozenset({"mailboxes", "aliases", "email2email", "quota"}),
            frozenset({"transports"}),
            frozenset({"aliases", "forwardings", "domains"}),
        ]
    finally:
        await backend.close()


async def test_custom_queries_flush_everything(backend: SQLiteBackend) -> None:
    flushed: list[frozenset[str] | None] = []
    watcher = ChangeWatcher(backend, flushed.append, custom_queries=True)
    try:
        await watcher.poll()
        await backend.execute("INSERT INTO domains VALUES ('example.test')")
        assert await watcher.poll() is None
        assert flushed == [None]
    finally:
        await backend.close()


async def test_without_the_counters_it_says_so_once(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, backend: SQLiteBackend
) -> None:
    await backend.execute("DROP TABLE mailmapd_changes")
    watcher = ChangeWatcher(backend, lambda maps: None, custom_queries=False)
    try:
        with caplog.at_level(logging.INFO, logger="mailmapd.changes"):
            assert await watcher.poll() == frozenset()
            assert await watcher.poll() == frozenset()
        assert caplog.text.count("no change counters") == 1
    finally:
        await backend.close()

"""The MySQL backend against a real MariaDB: failover, outages, stalls and bad queries.

Every failure must answer TEMP (never "not found"), and service must come back by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import aiomysql
import pymysql
import pytest

from mailmapd.backends import BackendError, Row
from mailmapd.backends.mysql import MySQLBackend
from mailmapd.daemon import make_resolver
from mailmapd.maps import combine
from mailmapd.proto import Found, NotFound, TempFail
from tests.conftest import load_tutorial_mysql, make_config, mysql_url
from tests.support.mariadb import DatabaseAccount, MariaDB
from tests.support.ports import free_port

MAILBOX = ("mailboxes", "sales@example.test")
EXPECTED = Found("example.test/sales/")


@pytest.fixture
def own_db(private_mariadb: MariaDB) -> DatabaseAccount:
    account = private_mariadb.create_database("mail", "mail_admin", "pw")
    load_tutorial_mysql(account)
    return account


async def test_lookups_on_mariadb(tutorial_account: DatabaseAccount) -> None:
    cfg = make_config(mysql_url(tutorial_account))
    backend = MySQLBackend(cfg.database)
    try:
        resolver = make_resolver(cfg, backend)
        assert await resolver.resolve(*MAILBOX) == EXPECTED
        assert await resolver.resolve("mailboxes", "nobody@unknown.test") == NotFound()
    finally:
        await backend.close()


class CountingBackend:
    """MySQLBackend, counting the statements it is asked to run."""

    def __init__(self, inner: MySQLBackend) -> None:
        self.dialect = inner.dialect
        self.inner = inner
        self.statements = 0

    async def fetch(self, sql: str, params: Sequence[str], lane: str | None = None) -> list[Row]:
        self.statements += 1
        return await self.inner.fetch(sql, params, lane)

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.parametrize(("combine", "statements"), [(True, 1), (False, 127)])
async def test_the_longest_transport_search_is_one_statement(
    tutorial_account: DatabaseAccount, combine: bool, statements: int
) -> None:
    """An address in a 127-label domain: 130 keys (the address, without its extension, the
    domain, its 126 parents, ``*``), found at the 127th (.sub.example.test). MariaDB takes the
    130-part statement, and answers as the queries one by one do."""
    key = "u+x@" + "a." * 124 + "sub.example.test"
    cfg = make_config(mysql_url(tutorial_account), lookup={"combine_queries": combine})
    backend = CountingBackend(MySQLBackend(cfg.database))
    try:
        resolver = make_resolver(cfg, backend)
        assert await resolver.resolve("transports", key) == Found("smtp:[127.0.0.1]:2525")
        assert backend.statements == statements
    finally:
        await backend.close()


async def test_alias_tables_of_different_column_types_keep_their_values(tutorial_account: DatabaseAccount) -> None:
    """A UNION of forwardings' DECIMAL and email2email's INT would give both one type, and 10
    would read 10.0: each template is a statement of its own, so the values are the queries'."""
    cfg = make_config(
        mysql_url(tutorial_account),
        maps={
            "forwardings": {"query": "SELECT 1.5 FROM forwardings WHERE source='%s'"},
            "email2email": {"query": "SELECT 10 FROM users WHERE email='%s'"},
        },
    )
    backend = MySQLBackend(cfg.database)
    try:
        resolver = make_resolver(cfg, backend)
        assert await resolver.resolve("aliases", "sales@example.test") == Found("10")
    finally:
        await backend.close()


async def test_a_template_mariadb_refuses_to_combine_is_asked_one_key_at_a_time(
    tutorial_account: DatabaseAccount, caplog: pytest.LogCaptureFixture
) -> None:
    """A trailing semicolon: MariaDB takes the query alone, not inside a derived table (1064)."""
    query = (
        "SELECT CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/') FROM users WHERE email='%s';"
    )
    cfg = make_config(mysql_url(tutorial_account), maps={"mailboxes": {"query": query}})
    backend = CountingBackend(MySQLBackend(cfg.database))
    try:
        resolver = make_resolver(cfg, backend)
        with caplog.at_level(logging.INFO, logger="mailmapd.maps"):
            # refused, the three keys alone (sales+x@, sales@, @example.test), refused again
            assert await resolver.resolve("mailboxes", "sales+x@example.test") == Found("example.test/sales/")
            assert backend.statements == 5
            assert await resolver.resolve("mailboxes", "nobody@example.test") == NotFound()
            assert backend.statements == 7  # nobody@example.test, @example.test
        [record] = [r for r in caplog.records if r.name == "mailmapd.maps"]
        message = record.getMessage()
        assert message.startswith("map mailboxes: its queries cannot run as one statement (mysql ")
        assert "(1064) You have an error in your SQL syntax" in message
        assert "\n" not in message
    finally:
        await backend.close()


async def test_database_stopped_answers_temp_then_recovers(private_mariadb: MariaDB, own_db: DatabaseAccount) -> None:
    cfg = make_config(
        mysql_url(own_db), lookup={"timeout": 5.0}, database={"url": mysql_url(own_db), "retry_interval": 60.0}
    )
    backend = MySQLBackend(cfg.database)
    resolver = make_resolver(cfg, backend)
    try:
        assert await resolver.resolve(*MAILBOX) == EXPECTED  # a pooled connection now exists
        private_mariadb.stop()
        down = await resolver.resolve(*MAILBOX)
        assert isinstance(down, TempFail)
        assert "database unavailable" in down.reason
        # Unknown keys too: an outage is never "not found".
        assert isinstance(await resolver.resolve("mailboxes", "nobody@example.test"), TempFail)
        private_mariadb.start()
        # Even with a 60 s retry_interval, the only host is tried again at once.
        assert await resolver.resolve(*MAILBOX) == EXPECTED
    finally:
        await backend.close()


async def test_stalled_database_answers_temp_at_the_deadline(private_mariadb: MariaDB, own_db: DatabaseAccount) -> None:
    cfg = make_config(mysql_url(own_db), lookup={"timeout": 0.5})
    backend = MySQLBackend(cfg.database)
    resolver = make_resolver(cfg, backend)
    try:
        assert await resolver.resolve(*MAILBOX) == EXPECTED
        private_mariadb.pause()
        try:
            result = await resolver.resolve(*MAILBOX)
        finally:
            private_mariadb.resume()
        assert result == TempFail("database did not answer within 0.5s")
        # The cancelled query left no broken connection behind.
        assert await resolver.resolve(*MAILBOX) == EXPECTED
    finally:
        await backend.close()


async def test_failover_to_the_next_host(own_db: DatabaseAccount, caplog: pytest.LogCaptureFixture) -> None:
    dead = free_port()  # nothing listens there
    url = f"mysql://{own_db.user}:{own_db.password}@127.0.0.1:{dead},{own_db.host}:{own_db.port}/{own_db.database}"
    cfg = make_config(url)
    backend = MySQLBackend(cfg.database)
    resolver = make_resolver(cfg, backend)
    try:
        with caplog.at_level(logging.WARNING, logger="mailmapd.backends.mysql"):
            assert await resolver.resolve(*MAILBOX) == EXPECTED
            assert await resolver.resolve(*MAILBOX) == EXPECTED
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        # The dead host is reported once, then skipped for retry_interval.
        assert len(warnings) == 1
        assert f"127.0.0.1:{dead}" in warnings[0].getMessage()
        assert own_db.password not in caplog.text
    finally:
        await backend.close()


async def test_no_host_answers(caplog: pytest.LogCaptureFixture) -> None:
    url = f"mysql://u:topsecret@127.0.0.1:{free_port()},127.0.0.1:{free_port()}/mail"
    backend = MySQLBackend(make_config(url).database)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as info:
            await backend.fetch("SELECT 1", ())
        assert info.value.reason == "connect"
        assert "topsecret" not in caplog.text
        assert "topsecret" not in str(info.value)
    finally:
        await backend.close()


async def test_a_broken_custom_query_is_temp_not_notfound(tutorial_account: DatabaseAccount) -> None:
    cfg = make_config(
        mysql_url(tutorial_account), maps={"mailboxes": {"query": "SELECT maildir FROM mailbox WHERE username='%s'"}}
    )
    backend = MySQLBackend(cfg.database)
    try:
        result = await make_resolver(cfg, backend).resolve(*MAILBOX)
        assert result == TempFail("database unavailable (query)")
    finally:
        await backend.close()


async def test_recycled_connection_is_replaced(own_db: DatabaseAccount, private_mariadb: MariaDB) -> None:
    """A connection the server closed while idle (wait_timeout, a restart) costs no TEMP."""
    cfg = make_config(mysql_url(own_db))
    backend = MySQLBackend(cfg.database)
    resolver = make_resolver(cfg, backend)
    try:
        assert await resolver.resolve(*MAILBOX) == EXPECTED
        for line in private_mariadb.execute(
            "SELECT id FROM information_schema.processlist WHERE user = 'mail_admin'"
        ).split():
            private_mariadb.execute(f"KILL {int(line)}")
        assert await resolver.resolve(*MAILBOX) == EXPECTED
    finally:
        await backend.close()


async def test_failover_past_a_host_that_accepts_but_never_answers(own_db: DatabaseAccount) -> None:
    """connect_timeout covers the greeting and login, not only the TCP connect."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # never greet

    hung = await asyncio.start_server(silent, "127.0.0.1", 0)
    hung_port = hung.sockets[0].getsockname()[1]
    url = f"mysql://{own_db.user}:{own_db.password}@127.0.0.1:{hung_port},{own_db.host}:{own_db.port}/mail"
    cfg = make_config(url, database={"url": url, "connect_timeout": 0.3}, lookup={"timeout": 3.0})
    backend = MySQLBackend(cfg.database)
    try:
        assert await make_resolver(cfg, backend).resolve(*MAILBOX) == EXPECTED
        assert accepted  # the hung host was really tried first
    finally:
        await backend.close()
        for w in accepted:
            w.close()
        hung.close()
        await hung.wait_closed()


async def test_wrong_password_is_a_connection_failure_and_fails_over(
    own_db: DatabaseAccount, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"mysql://{own_db.user}:wrong@{own_db.host}:{own_db.port}/mail"
    backend = MySQLBackend(make_config(url).database)
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(BackendError) as info:
            await backend.fetch("SELECT 1", ())
        assert info.value.reason == "connect"
        assert "Access denied" in caplog.text  # said at the default log level
    finally:
        await backend.close()


async def test_a_stalled_query_holds_only_its_own_lanes_connections(
    private_mariadb: MariaDB, own_db: DatabaseAccount
) -> None:
    """users locked; lookups on it give up at their deadline again and again: they hold at most
    pool_size connections (the given-up queries keep theirs until they finish, no new one per
    lookup), a query on another table is answered meanwhile, and the stalled ones are answered
    once the lock goes. A lane is a map's: its statements differ (one key, or a search order of
    two or three in one statement) and share its connections."""
    from tests.reliability_support import threads_connected, users_locked  # noqa: PLC0415 - helpers of that suite

    cfg = make_config(mysql_url(own_db), database={"url": mysql_url(own_db), "pool_size": 2})
    backend = MySQLBackend(cfg.database)
    users = "SELECT email FROM users WHERE email = %s"
    searches = [
        combine([(i, users, [key]) for i, key in enumerate(keys)])
        for keys in (["a@x"], ["a@x", "@x"], ["a+b@x", "a@x", "@x"])
    ]
    domains = "SELECT domain FROM domains WHERE domain = %s"
    try:
        assert await backend.fetch(domains, ["example.test"], "domains") == [("example.test",)]
        with users_locked(own_db):
            before = threads_connected(private_mariadb)
            for i in range(10):
                sql, params = searches[i % len(searches)]
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(backend.fetch(sql, params, "mailboxes"), 0.05)
            assert await asyncio.wait_for(backend.fetch(domains, ["example.test"], "domains"), 1.0) == [
                ("example.test",)
            ]
            # The users lane opened its 2 connections; the domains lane reused its own.
            assert threads_connected(private_mariadb) - before == 2
        assert await asyncio.wait_for(backend.fetch(users, ["sales@example.test"], "mailboxes"), 5.0) == [
            ("sales@example.test",)
        ]
    finally:
        await backend.close()


class _FakeCursor:
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def execute(self, _sql: str, _params: object) -> int:
        await asyncio.sleep(0.001)
        return 1

    async def fetchall(self) -> list[tuple[str]]:
        return [("x",)]


class _FakeConnection:
    """Stands in for an aiomysql connection: only what MySQLBackend uses."""

    opened: ClassVar[list[_FakeConnection]] = []

    def __init__(self) -> None:
        self.closed = False
        _FakeConnection.opened.append(self)

    def cursor(self) -> _FakeCursor:
        return _FakeCursor()

    def close(self) -> None:
        self.closed = True


async def test_lookups_passed_over_while_the_first_host_connects_return_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst bigger than pool_size while the first host is still opening its connections: the
    lookups that went on to the second host, which is down, come back to the first and wait
    for it, rather than answer TEMP."""

    async def connect(**kwargs: object) -> _FakeConnection:
        if kwargs["port"] == 3307:
            raise pymysql.err.OperationalError(2003, "Can't connect to MySQL server")
        await asyncio.sleep(0.05)
        return _FakeConnection()

    monkeypatch.setattr(aiomysql, "connect", connect)
    url = "mysql://u:p@127.0.0.1:3306,127.0.0.1:3307/mail"
    backend = MySQLBackend(make_config(url, database={"url": url, "pool_size": 2}).database)
    try:
        results = await asyncio.gather(*(backend.fetch("SELECT 1", ["k"]) for _ in range(10)), return_exceptions=True)
        assert results == [[("x",)]] * 10
    finally:
        await backend.close()


async def test_a_connect_finishing_as_its_lookup_is_cancelled_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup's deadline falls in the loop turn in which its new connection completes: the
    connection is closed, not left open outside every pool."""
    _FakeConnection.opened.clear()
    lookup: asyncio.Future[list[Any]] | None = None

    async def connect(**_: object) -> _FakeConnection:
        await asyncio.sleep(0.01)
        assert lookup is not None
        asyncio.get_running_loop().call_soon(lookup.cancel)  # the deadline fires now
        return _FakeConnection()

    monkeypatch.setattr(aiomysql, "connect", connect)
    url = "mysql://u:p@127.0.0.1:3306/mail"
    backend = MySQLBackend(make_config(url, database={"url": url}).database)
    try:
        lookup = asyncio.ensure_future(backend.fetch("SELECT 1", ["k"]))
        with pytest.raises(asyncio.CancelledError):
            await lookup
        await asyncio.sleep(0.01)
        assert [c.closed for c in _FakeConnection.opened] == [True]
    finally:
        await backend.close()

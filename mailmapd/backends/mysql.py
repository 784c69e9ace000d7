"""MySQL and MariaDB through aiomysql: the production backend.

Each map has its own few connections to each host (``_Lane``). Hosts are used in the
order the URL lists them; a host that fails is skipped for ``retry_interval`` seconds while
another host is available (mysql_table(5)'s ``hosts`` and ``retry_interval``). When every
host is marked failed they are all tried again anyway, so a database that comes back is
used at once rather than after the interval. A lost connection is retried once on a fresh
connection to the same host before the host is marked failed: that is what a server restart
or an idle connection closed by ``wait_timeout`` looks like. Connections run with
autocommit, so every SELECT sees what other tools committed, and utf8mb4, so any UTF-8 key
is sent intact.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiomysql
import pymysql

from mailmapd.backends import BackendError, Row
from mailmapd.sqltemplate import MYSQL, Dialect

if TYPE_CHECKING:
    from mailmapd.config import DatabaseConfig

log = logging.getLogger(__name__)

# Client-side error numbers (CR_*) that mean the connection, not the query, failed.
_CONNECTION_ERRORS = frozenset(
    {
        2002,  # CR_CONNECTION_ERROR: cannot connect through the socket
        2003,  # CR_CONN_HOST_ERROR: cannot connect to host
        2006,  # CR_SERVER_GONE_ERROR
        2013,  # CR_SERVER_LOST: lost connection during query
        2055,  # CR_SERVER_LOST_EXTENDED
        1040,  # ER_CON_COUNT_ERROR: too many connections
        1044,  # ER_DBACCESS_DENIED_ERROR: this host denies the database to the user
        1045,  # ER_ACCESS_DENIED_ERROR: this host refuses the login (another may not)
        1049,  # ER_BAD_DB_ERROR: this host lacks the database
        1053,  # ER_SERVER_SHUTDOWN
        1927,  # ER_CONNECTION_KILLED (MariaDB)
        4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
    }
)


class _ConnectError(Exception):
    """No connection to this host could be set up."""


class _LostConnectionError(Exception):
    """The connection broke while a query ran."""


class _BusyHostError(Exception):
    """This host's connections for the query stayed busy, or it failed meanwhile: next host."""


class _Lane:
    """The connections one map's queries may hold on one host: its own ``pool_size``.

    Each map gets its own, as each of Postfix's mysql: tables keeps its own connection:
    lookups stuck on a locked table then hold only their own connections, and the other maps
    keep answering.
    """

    __slots__ = ("connecting", "idle", "slots")

    def __init__(self, size: int) -> None:
        self.idle: list[tuple[Any, float]] = []  # (connection, when it was last given back)
        self.slots = asyncio.Semaphore(size)  # connections in use or being opened
        self.connecting = 0  # of which being opened

    def take(self, now: float, recycle: float) -> Any:
        """An idle connection fit to use, or None."""
        while self.idle:
            conn, since = self.idle.pop()
            if not conn.closed and now - since < recycle:
                return conn
            conn.close()
        return None

    def close_idle(self) -> None:
        for conn, _ in self.idle:
            conn.close()
        self.idle.clear()


@dataclass(slots=True)
class _Host:
    label: str
    kwargs: dict[str, Any]
    lanes: dict[str, _Lane] = field(default_factory=dict)  # by map name or SQL text: a bounded set
    failed_until: float = 0.0


# "Illegal mix of collations": the key has characters the column's character set cannot
# hold (a tutorial table created in latin1 or utf8mb3, a key with an emoji or CJK text).
_COLLATION_ERRORS = frozenset({1267, 1270, 1271})


def _unrepresentable_key(exc: pymysql.err.MySQLError, params: Sequence[object]) -> bool:
    """A non-ASCII key the column cannot even compare names no row: not found, not TEMP.

    Only for non-ASCII keys: a query whose own columns clash fails for every key, and that
    must stay a TEMP that a person sees, never a silent "not found".
    """
    return (
        bool(exc.args)
        and exc.args[0] in _COLLATION_ERRORS
        and any(isinstance(p, str) and not p.isascii() for p in params)
    )


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, pymysql.err.InterfaceError)):
        return True
    if isinstance(exc, pymysql.err.OperationalError) and exc.args:
        return exc.args[0] in _CONNECTION_ERRORS
    return False


class MySQLBackend:
    dialect: Dialect = MYSQL

    def __init__(self, cfg: DatabaseConfig, clock: Any = time.monotonic) -> None:
        url = cfg.url
        common: dict[str, Any] = {
            "user": url.user,
            "password": url.password,
            "db": url.database,
            "charset": "utf8mb4",
            "autocommit": True,
            # aiomysql's own timeout covers only the TCP connect; _connect() bounds the rest.
            "connect_timeout": cfg.connect_timeout,
        }
        hosts: list[_Host] = []
        if url.unix_socket:
            hosts.append(_Host(f"unix:{url.unix_socket}", {**common, "unix_socket": url.unix_socket}))
        hosts.extend(_Host(f"{h.host}:{h.port}", {**common, "host": h.host, "port": h.port}) for h in url.hosts)
        self._hosts = hosts
        self._pool_size = cfg.pool_size
        self._recycle = cfg.pool_recycle
        self._retry_interval = cfg.retry_interval
        self._connect_timeout = cfg.connect_timeout
        self._clock = clock
        self._running: set[asyncio.Task[Any]] = set()  # queries and connects, also those given up on
        self._closed = False

    def _candidates(self) -> list[_Host]:
        now = self._clock()
        usable = [h for h in self._hosts if h.failed_until <= now]
        return usable or sorted(self._hosts, key=lambda h: h.failed_until)

    async def fetch(self, sql: str, params: Sequence[str], lane: str | None = None) -> list[Row]:
        rows, _ = await self._on_first_host(sql, params, retry=True, lane_key=lane or sql)
        return rows

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run a statement that changes data (admin commands) on the first host that answers.

        Not run again when the connection breaks: the server may have applied it already."""
        _, count = await self._on_first_host(sql, params, retry=False, lane_key=sql)
        return count

    async def _on_first_host(
        self, sql: str, params: Sequence[object], *, retry: bool, lane_key: str
    ) -> tuple[list[Row], int]:
        last: BaseException | None = None
        candidates = self._candidates()
        # spare: another host follows. A host passed over while busy is appended, to be asked
        # again with no bound but the lookup's deadline if every later host fails too (the
        # loop runs on over what is appended; spare=False cannot be passed over again).
        order = [(host, host is not candidates[-1]) for host in candidates]
        for host, spare in order:
            try:
                try:
                    return await self._run_on(host, sql, params, spare=spare, lane_key=lane_key)
                except _LostConnectionError:
                    if not retry:
                        raise
                    # A pooled connection the server had closed (wait_timeout, restart):
                    # one more try on a fresh connection before blaming the host.
                    return await self._run_on(host, sql, params, spare=spare, lane_key=lane_key, fresh=True)
            except _BusyHostError:
                order.append((host, False))
                continue
            except (_ConnectError, _LostConnectionError) as exc:
                last = exc.__cause__ or exc
            if host.failed_until <= self._clock():
                log.warning(
                    "mysql %s: unreachable, skipping it for %gs: %s", host.label, self._retry_interval, _describe(last)
                )
            host.failed_until = self._clock() + self._retry_interval
        raise BackendError("connect", f"no database host answered: {_describe(last)}")

    async def _run_on(
        self,
        host: _Host,
        sql: str,
        params: Sequence[object],
        *,
        spare: bool,
        lane_key: str,
        fresh: bool = False,
    ) -> tuple[list[Row], int]:
        if self._closed:
            raise BackendError("connect", "the database connections are closed (stopping or reloaded)")
        lane = host.lanes.get(lane_key)
        if lane is None:
            lane = host.lanes[lane_key] = _Lane(self._pool_size)
        # Waiting for a busy lane is not the host's fault: on the last host the lookup
        # deadline bounds it. With a spare host, a lookup waits at most connect_timeout, and
        # none goes on to a host that others found failing while it waited: queued behind the
        # connects to a silent host, it would reach the next host too late.
        if spare and lane.connecting and lane.slots.locked():
            raise _BusyHostError  # others are still finding out whether this host answers
        marked = host.failed_until
        if spare and lane.slots.locked():
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await lane.slots.acquire()
            except TimeoutError:
                raise _BusyHostError from None
        else:
            await lane.slots.acquire()
        if spare and host.failed_until > max(marked, self._clock()):  # marked while we waited
            lane.slots.release()
            raise _BusyHostError
        try:
            if fresh:
                lane.close_idle()  # after a server restart every idle connection is dead
            conn = lane.take(self._clock(), self._recycle)
            if conn is None:
                lane.connecting += 1
                try:
                    conn = await self._connect(host)
                finally:
                    lane.connecting -= 1
        except BaseException:
            lane.slots.release()
            raise
        # The query runs as a task of its own, shielded: a lookup that gives up at its
        # deadline leaves it to finish and hand its connection back, so a stalled table holds
        # at most pool_size connections instead of a new one per lookup.
        query = asyncio.get_running_loop().create_task(_query(conn, sql, params))
        self._running.add(query)
        query.add_done_callback(lambda task: self._settle(task, lane, conn))
        result = await asyncio.shield(query)
        if host.failed_until:
            log.info("mysql %s: answering again", host.label)
            host.failed_until = 0.0
        if isinstance(result, pymysql.err.MySQLError):
            if _unrepresentable_key(result, params):
                return [], 0
            raise self._query_error(host, result) from result
        return result

    def _settle(self, task: asyncio.Task[Any], lane: _Lane, conn: Any) -> None:
        """A query ended: its connection goes back to the lane, or is closed when it broke."""
        self._running.discard(task)
        lane.slots.release()
        if task.cancelled() or task.exception() is not None or self._closed:
            conn.close()
        else:
            lane.idle.append((conn, self._clock()))

    async def _connect(self, host: _Host) -> Any:
        """A new connection within connect_timeout (TCP, greeting and login), or _ConnectError.

        The connect runs as a task waited on with asyncio.wait: on Python 3.11, aiomysql's
        asyncio.wait_for can swallow a cancellation that arrives as the TCP connect completes,
        and the lookup would then wait on a host that never greets until its own deadline.
        """
        attempt = asyncio.get_running_loop().create_task(aiomysql.connect(**host.kwargs))
        self._running.add(attempt)
        attempt.add_done_callback(self._running.discard)
        try:
            done, _ = await asyncio.wait({attempt}, timeout=self._connect_timeout)
        except BaseException:  # the lookup was cancelled, perhaps as the connect completed
            self._abandon(attempt)
            raise
        if not done:
            self._abandon(attempt)
            raise _ConnectError from TimeoutError(f"no greeting and login within {self._connect_timeout:g}s")
        exc = attempt.exception()
        if exc is None:
            return attempt.result()
        if isinstance(exc, pymysql.err.MySQLError) and not _is_connection_error(exc):
            raise self._query_error(host, exc) from exc
        if isinstance(exc, OSError | pymysql.err.MySQLError):
            raise _ConnectError from exc
        raise exc

    def _abandon(self, attempt: asyncio.Task[Any]) -> None:
        """Cancel a connect given up on; whatever it opened or still opens is closed."""
        attempt.cancel()
        # Cancel again later in case the first cancellation was swallowed (see _connect).
        asyncio.get_running_loop().call_later(self._connect_timeout, attempt.cancel)

        def closed(task: asyncio.Task[Any]) -> None:
            if not task.cancelled() and task.exception() is None:
                task.result().close()

        attempt.add_done_callback(closed)

    def _query_error(self, host: _Host, exc: pymysql.err.MySQLError) -> BackendError:
        """The query itself failed (a bad custom query, a missing table): another host would
        answer the same, so no failover. The resolver logs it."""
        return BackendError("query", f"mysql {host.label}: {_describe(exc)}")

    async def close(self) -> None:
        self._closed = True
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running))
        for host in self._hosts:
            for lane in host.lanes.values():
                lane.close_idle()
            host.lanes.clear()


async def _query(conn: Any, sql: str, params: Sequence[object]) -> tuple[list[Row], int] | pymysql.err.MySQLError:
    """Rows and row count, or the error of a query the server refused (the connection is fine).

    Raises _LostConnectionError when the connection broke, which also closes it (_settle).
    """
    try:
        async with conn.cursor() as cur:
            count = await cur.execute(sql, tuple(params))
            rows: list[Row] = list(await cur.fetchall())
    except pymysql.err.MySQLError as exc:
        if _is_connection_error(exc):
            raise _LostConnectionError from exc
        return exc
    except OSError as exc:
        raise _LostConnectionError from exc
    return rows, int(count)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no host configured"
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) == 2:  # noqa: PLR2004 - (errno, message)
        return f"({exc.args[0]}) {exc.args[1]}"
    return f"{type(exc).__name__}: {exc}"

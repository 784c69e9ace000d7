"""MySQL and MariaDB through aiomysql: the production backend.

One pool per host. Hosts are used in the order the URL lists them; a host that fails is
skipped for ``retry_interval`` seconds while another host is available (mysql_table(5)'s
``hosts`` and ``retry_interval``). When every host is marked failed they are all tried
again anyway, so a database that comes back is used at once rather than after the
interval. A lost connection is retried once on a fresh connection to the same host before
the host is marked failed: that is what a server restart or an idle connection closed by
``wait_timeout`` looks like. Connections run with autocommit, so every SELECT sees what
other tools committed, and utf8mb4, so any UTF-8 key is sent intact.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(slots=True)
class _Host:
    label: str
    kwargs: dict[str, Any]
    pool: Any = None  # aiomysql.Pool, created on first use
    failed_until: float = 0.0


# "Illegal mix of collations": the key has characters the column's character set cannot
# hold (a tutorial table created in latin1 or utf8mb3, a key with an emoji or CJK text).
_COLLATION_ERRORS = frozenset({1267, 1270, 1271})


def _unrepresentable_key(exc: pymysql.err.MySQLError, params: Sequence[str]) -> bool:
    """A non-ASCII key the column cannot even compare names no row: not found, not TEMP.

    Only for non-ASCII keys: a query whose own columns clash fails for every key, and that
    must stay a TEMP that a person sees, never a silent "not found".
    """
    return bool(exc.args) and exc.args[0] in _COLLATION_ERRORS and any(not p.isascii() for p in params)


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
        self._locks = {h.label: asyncio.Lock() for h in hosts}

    def _candidates(self) -> list[_Host]:
        now = self._clock()
        usable = [h for h in self._hosts if h.failed_until <= now]
        return usable or sorted(self._hosts, key=lambda h: h.failed_until)

    async def _pool(self, host: _Host) -> Any:
        if host.pool is None:
            async with self._locks[host.label]:
                if host.pool is None:
                    host.pool = await aiomysql.create_pool(
                        minsize=0,
                        maxsize=self._pool_size,
                        pool_recycle=self._recycle,
                        **host.kwargs,
                    )
        return host.pool

    async def fetch(self, sql: str, params: Sequence[str]) -> list[Row]:
        last: BaseException | None = None
        for host in self._candidates():
            try:
                try:
                    return await self._fetch_on(host, sql, params)
                except _LostConnectionError:
                    # A pooled connection the server had closed (wait_timeout, restart):
                    # one more try on a fresh connection before blaming the host.
                    return await self._fetch_on(host, sql, params)
            except _ConnectError as exc:
                last = exc.__cause__ or exc
            except _LostConnectionError as exc:
                last = exc.__cause__ or exc
            if host.failed_until <= self._clock():
                log.warning(
                    "mysql %s: unreachable, skipping it for %gs: %s", host.label, self._retry_interval, _describe(last)
                )
            host.failed_until = self._clock() + self._retry_interval
        raise BackendError("connect", f"no database host answered: {_describe(last)}")

    async def _fetch_on(self, host: _Host, sql: str, params: Sequence[str]) -> list[Row]:
        pool = await self._pool(host)
        # connect_timeout bounds the whole set-up of a new connection (TCP, greeting, login),
        # not only the TCP connect: a host that accepts but never answers must fail over too.
        # Waiting for a busy pool's free connection is not the host's fault: the lookup
        # deadline bounds that.
        opens_new = pool.freesize == 0 and pool.size < pool.maxsize
        try:
            async with asyncio.timeout(self._connect_timeout if opens_new else None):
                conn = await pool.acquire()
        except (OSError, TimeoutError, pymysql.err.MySQLError) as exc:
            if isinstance(exc, pymysql.err.MySQLError) and not _is_connection_error(exc):
                raise self._query_error(host, exc) from exc
            raise _ConnectError from exc
        try:
            async with conn.cursor() as cur:
                await cur.execute(sql, tuple(params))
                rows: list[Row] = list(await cur.fetchall())
        except pymysql.err.MySQLError as exc:
            if _is_connection_error(exc):
                raise _LostConnectionError from exc
            if _unrepresentable_key(exc, params):
                return []
            raise self._query_error(host, exc) from exc
        except OSError as exc:
            raise _LostConnectionError from exc
        finally:
            pool.release(conn)
        if host.failed_until:
            log.info("mysql %s: answering again", host.label)
            host.failed_until = 0.0
        return rows

    def _query_error(self, host: _Host, exc: pymysql.err.MySQLError) -> BackendError:
        """The query itself failed (a bad custom query, a missing table): another host would
        answer the same, so no failover. The resolver logs it."""
        return BackendError("query", f"mysql {host.label}: {_describe(exc)}")

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run a statement that changes data (admin commands) on the first host that answers."""
        last: BaseException | None = None
        for host in self._candidates():
            try:
                pool = await self._pool(host)
                async with pool.acquire() as conn, conn.cursor() as cur:
                    return int(await cur.execute(sql, tuple(params)))
            except pymysql.err.MySQLError as exc:
                if not _is_connection_error(exc):
                    raise BackendError("query", f"mysql {host.label}: {exc.args[-1]}") from exc
                last = exc
            except OSError as exc:
                last = exc
        raise BackendError("connect", f"no database host answered: {_describe(last)}")

    async def close(self) -> None:
        for host in self._hosts:
            if host.pool is not None:
                pool, host.pool = host.pool, None
                pool.close()
                await pool.wait_closed()


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no host configured"
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) == 2:  # noqa: PLR2004 - (errno, message)
        return f"({exc.args[0]}) {exc.args[1]}"
    return f"{type(exc).__name__}: {exc}"

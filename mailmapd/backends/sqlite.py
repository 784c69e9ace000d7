"""The embedded default: SQLite through aiosqlite.

It creates the tutorial's tables on first use, and teaches SQLite the two MySQL functions
the seed's queries call (CONCAT and SUBSTRING_INDEX), so the same queries run on both.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import aiosqlite

from mailmapd.backends import BackendError, Row
from mailmapd.schema import SQLITE_TABLES, sqlite_change_tracking
from mailmapd.sqltemplate import SQLITE, Dialect

if TYPE_CHECKING:
    from mailmapd.config import DatabaseConfig

log = logging.getLogger(__name__)


def substring_index(text: object, delim: object, count: object) -> str | None:
    """MySQL's SUBSTRING_INDEX(str, delim, count)."""
    if text is None or delim is None or count is None:
        return None
    s, d, n = str(text), str(delim), int(str(count))
    if not d or n == 0:
        return ""
    parts = s.split(d)
    return d.join(parts[:n]) if n > 0 else d.join(parts[n:])


def concat(*args: object) -> str | None:
    """MySQL's CONCAT(): NULL when any argument is NULL."""
    if any(a is None for a in args):
        return None
    return "".join(str(a) for a in args)


class SQLiteBackend:
    dialect: Dialect = SQLITE

    def __init__(self, cfg: DatabaseConfig) -> None:
        self._path = cfg.url.path
        self._timeout = cfg.connect_timeout
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> aiosqlite.Connection:
        if self._conn is not None:
            return self._conn
        async with self._lock:
            if self._conn is None:
                Path(self._path).parent.mkdir(mode=0o750, parents=True, exist_ok=True)
                conn = await aiosqlite.connect(self._path, timeout=self._timeout)
                try:
                    await conn.create_function("SUBSTRING_INDEX", 3, substring_index, deterministic=True)
                    await conn.create_function("CONCAT", -1, concat, deterministic=True)
                    for ddl in (*SQLITE_TABLES, *sqlite_change_tracking()):
                        await conn.execute(ddl)
                    await conn.commit()
                except BaseException:
                    await conn.close()
                    raise
                self._conn = conn
                log.info("opened sqlite database %s", self._path)
        return self._conn

    async def fetch(self, sql: str, params: Sequence[str], lane: str | None = None) -> list[Row]:  # noqa: ARG002 - one connection
        try:
            conn = await self._connect()
            async with conn.execute(sql, tuple(params)) as cursor:
                return [tuple(row) for row in await cursor.fetchall()]
        except sqlite3.Error as exc:
            raise BackendError("query", f"sqlite: {exc}") from exc
        except OSError as exc:
            raise BackendError("connect", f"sqlite {self._path}: {exc}") from exc

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run a statement that changes data (admin commands); returns the row count."""
        try:
            conn = await self._connect()
            cursor = await conn.execute(sql, tuple(params))
            await conn.commit()
        except sqlite3.Error as exc:
            raise BackendError("query", f"sqlite: {exc}") from exc
        return cursor.rowcount

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

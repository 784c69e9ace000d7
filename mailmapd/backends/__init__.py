"""Database backends behind one small Protocol.

A backend runs a compiled query with bound parameters and returns the rows. It knows
nothing of maps, search orders or Postfix; ``mailmapd.maps`` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mailmapd.config import DatabaseConfig
    from mailmapd.sqltemplate import Dialect

Row = tuple[Any, ...]


class BackendError(Exception):
    """The database could not answer. ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Backend(Protocol):
    dialect: Dialect

    async def fetch(self, sql: str, params: Sequence[str], lane: str | None = None) -> list[Row]:
        """Run one SELECT; raise BackendError when the database cannot answer.

        ``lane`` names the connections it may use (a map's name); by default the SQL text's own."""
        ...

    async def close(self) -> None: ...


class TimedBackend:
    """A backend that reports each query's duration and outcome (for the metrics)."""

    def __init__(self, inner: Backend, on_query: Callable[[float, bool], None]) -> None:
        self.dialect = inner.dialect
        self._inner = inner
        self._on_query = on_query

    async def fetch(self, sql: str, params: Sequence[str], lane: str | None = None) -> list[Row]:
        started = time.perf_counter()
        ok = False
        try:
            rows = await self._inner.fetch(sql, params, lane)
            ok = True
        finally:
            self._on_query(time.perf_counter() - started, ok)
        return rows

    async def close(self) -> None:
        await self._inner.close()


def open_backend(cfg: DatabaseConfig) -> Backend:
    """The backend for ``database.url``. Nothing connects until the first query."""
    if cfg.url.scheme == "sqlite":
        from mailmapd.backends.sqlite import SQLiteBackend  # noqa: PLC0415 - import only what the URL needs

        return SQLiteBackend(cfg)
    from mailmapd.backends.mysql import MySQLBackend  # noqa: PLC0415 - aiomysql loads only for mysql://

    return MySQLBackend(cfg)

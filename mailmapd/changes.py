"""Noticing changes other tools make in the database, without waiting for cache TTLs.

Triggers (mailmapd.schema.*_change_tracking) bump a counter per table in
``mailmapd_changes`` on every insert, update and delete. The watcher reads the counters every
``cache.poll_interval`` seconds (one small query) and flushes the maps built on a table whose
counter moved. Without the table, answers follow the cache TTLs, and that is said once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mailmapd.backends import Backend, BackendError

log = logging.getLogger(__name__)

# Which maps the seed's queries build on each table. A custom query may read any table,
# so with one configured every change flushes everything.
TABLE_MAPS: dict[str, frozenset[str]] = {
    "domains": frozenset({"domains"}),
    "forwardings": frozenset({"aliases", "forwardings"}),
    "users": frozenset({"mailboxes", "aliases", "email2email", "quota"}),
    "transport": frozenset({"transports"}),
}
POLL_SQL = "SELECT tbl, version FROM mailmapd_changes"


class ChangeWatcher:
    def __init__(
        self,
        backend: Backend,
        on_change: Callable[[frozenset[str] | None], None],
        *,
        custom_queries: bool,
    ) -> None:
        self._backend = backend
        self._on_change = on_change
        self._custom = custom_queries
        self._last: dict[str, int] | None = None
        self._missing_logged = False

    async def run(self, interval: float) -> None:
        """Poll until cancelled, or until the counters turn out to be missing."""
        await self.poll()  # the baseline, at once: a change right after start is not missed
        while not self._missing_logged:
            await asyncio.sleep(interval)
            await self.poll()

    async def poll(self) -> frozenset[str] | None:
        """Read the counters once; returns the maps flushed (None: all), or an empty set."""
        try:
            rows = await self._backend.fetch(POLL_SQL, ())
        except BackendError as exc:
            if exc.reason == "query" and not self._missing_logged:
                # Stop asking (a failing query every few seconds would only fill the logs);
                # a reload after creating the table starts the watcher again.
                self._missing_logged = True
                log.info(
                    "no change counters (table mailmapd_changes): answers follow the cache TTLs;"
                    " see docs/operations.md to create them, then reload"
                )
            return frozenset()
        versions = {str(tbl): int(version) for tbl, version in rows}
        previous, self._last = self._last, versions
        if previous is None:
            return frozenset()
        changed = {t for t, v in versions.items() if previous.get(t) != v}
        if not changed:
            return frozenset()
        maps: frozenset[str] | None = None
        if not self._custom:
            maps = frozenset().union(*(TABLE_MAPS.get(t, frozenset()) for t in changed))
        log.debug("tables changed: %s", ", ".join(sorted(changed)))
        self._on_change(maps)
        return maps

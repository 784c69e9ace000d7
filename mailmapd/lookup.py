"""The Resolver: a map name and a key in, Found | NotFound | TempFail | PermFail out.

This is where the failure rule lives. Every lookup has one deadline for its whole search
order; a database error, a lost connection or the deadline answers TempFail, never
NotFound: a wrong "not found" bounces real mail, a TempFail only delays it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from mailmapd.backends import BackendError
from mailmapd.maps import Map
from mailmapd.proto import NOT_FOUND, Found, PermFail, Result, TempFail

log = logging.getLogger(__name__)


class Resolver:
    def __init__(self, maps: Mapping[str, Map], timeout: float) -> None:
        self._maps = dict(maps)
        self._timeout = timeout

    @property
    def map_names(self) -> list[str]:
        return list(self._maps)

    async def resolve(self, table: str, key: str) -> Result:
        """Answer one lookup; never raises for a database problem."""
        the_map = self._maps.get(table)
        if the_map is None:
            return PermFail(f"unknown map {table!r}")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                value = await the_map.lookup(key)
        except TimeoutError:
            result: Result = TempFail(f"database did not answer within {self._timeout:g}s")
        except BackendError as exc:
            log.debug("lookup %s failed: %s", table, exc)
            result = TempFail(f"database unavailable ({exc.reason})")
        else:
            result = Found(value) if value else NOT_FOUND
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "lookup %s %r -> %s ms=%.2f",
                table,
                key,
                type(result).__name__,
                (time.perf_counter() - started) * 1000,
            )
        return result

"""The Resolver: folding, the deadline and the failure rule, with fake maps."""

from __future__ import annotations

import asyncio

import pytest

from mailmapd.backends import BackendError
from mailmapd.lookup import Resolver
from mailmapd.proto import NOT_FOUND, Found, PermFail, TempFail


class DictMap:
    def __init__(self, rows: dict[str, str]) -> None:
        self.rows = rows
        self.asked: list[str] = []

    async def lookup(self, key: str) -> str | None:
        self.asked.append(key)
        return self.rows.get(key)


class HangingMap:
    async def lookup(self, key: str) -> str | None:
        await asyncio.Event().wait()
        return None


class FailingMap:
    async def lookup(self, key: str) -> str | None:
        raise BackendError("connect", "no database host answered: refused")


async def test_found_and_not_found() -> None:
    resolver = Resolver({"m": DictMap({"a@d.test": "v"})}, timeout=1)
    assert await resolver.resolve("m", "a@d.test") == Found("v")
    assert await resolver.resolve("m", "b@d.test") == NOT_FOUND


async def test_unknown_map_is_a_permanent_config_error() -> None:
    resolver = Resolver({"m": DictMap({})}, timeout=1)
    assert await resolver.resolve("nosuch", "k") == PermFail("unknown map 'nosuch'")


async def test_deadline_answers_temp_never_not_found() -> None:
    resolver = Resolver({"m": HangingMap()}, timeout=0.05)
    result = await resolver.resolve("m", "k")
    assert isinstance(result, TempFail)
    assert "did not answer within 0.05s" in result.reason


async def test_backend_error_answers_temp_with_its_class() -> None:
    resolver = Resolver({"m": FailingMap()}, timeout=1)
    assert await resolver.resolve("m", "k") == TempFail("database unavailable (connect)")


async def test_other_exceptions_reach_the_connection_handler() -> None:
    class Buggy:
        async def lookup(self, key: str) -> str | None:
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await Resolver({"m": Buggy()}, timeout=1).resolve("m", "k")

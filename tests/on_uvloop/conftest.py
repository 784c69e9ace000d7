"""Tests in this folder run on uvloop, the loop `mailmapd serve` runs where it is installed
(server.event_loop = "auto"; a dependency on Linux). A conftest of their own, so that only
the tests here get it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config,
    item: pytest.Item,
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop}

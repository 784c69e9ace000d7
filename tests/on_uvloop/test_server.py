"""Every test of tests/test_server.py again, on uvloop. Its transports do not subclass
asyncio's, its Server objects take no attributes, and it pauses writing at its own buffer sizes."""

from __future__ import annotations

import asyncio

from tests.test_server import *  # noqa: F403 - every test there, collected again here


async def test_runs_on_uvloop() -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")

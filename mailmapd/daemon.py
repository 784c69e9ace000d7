"""Wiring: config in, a running daemon out, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack

from mailmapd.backends import Backend, open_backend
from mailmapd.config import Config, ListenConfig
from mailmapd.lookup import Resolver
from mailmapd.maps import build_maps
from mailmapd.sdnotify import notify
from mailmapd.server import Handler, Server, SocketmapHandler, TcpTableHandler

log = logging.getLogger(__name__)


def make_handler(lc: ListenConfig) -> Handler:
    if lc.protocol == "socketmap":
        return SocketmapHandler()
    if lc.protocol == "tcp_table":
        assert lc.map is not None  # config validation requires it
        return TcpTableHandler(lc.map)
    raise NotImplementedError(f"protocol {lc.protocol} is not served yet")


def make_resolver(cfg: Config, backend: Backend) -> Resolver:
    return Resolver(build_maps(cfg, backend), cfg.lookup.timeout)


async def start_server(cfg: Config, backend: Backend) -> Server:
    """Open every listener of ``cfg``; the caller stops the server."""
    server = Server(cfg.server, make_resolver(cfg, backend))
    try:
        for lc in cfg.listen:
            await server.listen(lc, make_handler(lc))
    except BaseException:
        await server.stop()
        raise
    return server


async def serve(cfg: Config) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully."""
    if not cfg.listen:
        log.warning("%s: no [[listen]] section: nothing to serve", cfg.path)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        backend = open_backend(cfg.database)
        stack.push_async_callback(backend.close)
        server = await start_server(cfg, backend)
        stack.push_async_callback(server.stop)
        log.info("mailmapd ready: database %s", cfg.database.url.redacted())
        notify("READY=1")
        await stop.wait()
        log.info("stopping")
        notify("STOPPING=1")

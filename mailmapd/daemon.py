"""Wiring: config in, a running daemon out, until SIGTERM or SIGINT; SIGHUP reloads.

The App owns everything with a lifetime: the backend, the cache and resolver, the server and
its listeners, the metrics exporter, the control socket and the change watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from mailmapd import sdnotify
from mailmapd.backends import Backend, BackendError, TimedBackend, open_backend
from mailmapd.cache import LookupCache
from mailmapd.changes import ChangeWatcher
from mailmapd.config import Config, ConfigError, InetAddress, ListenConfig, load_config, parse_address
from mailmapd.control import ControlServer
from mailmapd.lookup import CachePolicy, Resolver
from mailmapd.maps import build_maps
from mailmapd.metrics import Metrics, StateCollector
from mailmapd.quota import QuotaPolicy
from mailmapd.sdactivation import InheritedSocket, inherited_sockets, match
from mailmapd.server import Handler, PolicyHandler, Server, SocketmapHandler, TcpTableHandler

log = logging.getLogger(__name__)

# Seconds a thread waiting for the GIL lets the event loop's thread run before asking for it
# (sys.setswitchinterval; Python's default is 0.005). See serve().
_GIL_SWITCH_INTERVAL = 0.0005


def make_handler(lc: ListenConfig, decide: Callable[[dict[str, str]], Awaitable[str]] | None = None) -> Handler:
    if lc.protocol == "socketmap":
        return SocketmapHandler()
    if lc.protocol == "policy":
        if decide is None:
            raise ConfigError(f"listen {lc.address}: the policy protocol needs the daemon's quota policy")
        return PolicyHandler(decide)
    assert lc.map is not None  # config validation requires it for tcp_table
    return TcpTableHandler(lc.map)


def make_resolver(cfg: Config, backend: Backend, metrics: Metrics | None = None) -> Resolver:
    """The resolver for ``cfg``, with a fresh cache bounded by ``cache.max_entries``."""
    on_evict: Callable[[int], object] = metrics.cache_evictions.inc if metrics is not None else (lambda _: None)
    maps = build_maps(cfg, backend)
    policies = {name: CachePolicy(*cfg.ttls(name)) for name in maps}
    cache = LookupCache(cfg.cache.max_entries, max_stale=cfg.cache.max_stale, on_evict=on_evict)
    return Resolver(maps, cfg.lookup.timeout, cache=cache, policies=policies, metrics=metrics)


class App:
    def __init__(self, cfg: Config, registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics.create(self.registry)
        self._backend: Backend | None = None
        self.resolver: Resolver | None = None
        self.server: Server | None = None
        self._exporter: Any = None
        self._control: ControlServer | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.policy: QuotaPolicy | None = None
        self.registry.register(StateCollector(lambda: len(self.resolver.cache) if self.resolver else 0))

    # ------------------------------------------------------------------ lifecycle

    async def start(self, inherited: list[InheritedSocket] | None = None) -> None:
        cfg = self.cfg
        raw = open_backend(cfg.database)
        self._backend = raw
        await _probe(raw, cfg)
        self.resolver = make_resolver(cfg, self._timed(raw), self.metrics)
        self.policy = QuotaPolicy(self.resolver, cfg.quota, metrics=self.metrics)
        self.server = Server(cfg.server, self.resolver, self.metrics)
        await self._open_listeners(cfg.listen, inherited or [])
        self._start_exporter(cfg)
        await self._start_control(cfg)
        self._start_watcher(cfg, raw)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        exporter_stopped = asyncio.get_running_loop().create_task(self._stop_exporter())
        try:
            if self._control is not None:
                await self._control.stop()
            if self.server is not None:
                await self.server.stop()
        finally:
            await exporter_stopped
            if self._backend is not None:
                await self._backend.close()

    async def reload(self, path: str) -> bool:
        """Re-read the config; on any error keep running on the old one. Flushes the cache."""
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)  # noqa: TRY400 - the message is the whole story
            self.metrics.reloads.labels("error").inc()
            return False
        assert self.server is not None
        old_backend = self._backend
        raw = open_backend(new.database)
        resolver = make_resolver(new, self._timed(raw), self.metrics)
        try:
            await self._swap_listeners(new)
        except (OSError, ConfigError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)  # noqa: TRY400
            await raw.close()
            self.metrics.reloads.labels("error").inc()
            return False
        self.server.cfg = new.server
        self.server.resolver = resolver
        self.resolver = resolver
        self.policy = QuotaPolicy(resolver, new.quota, metrics=self.metrics)
        self._backend = raw
        try:
            if self._exporter is None or new.metrics != self.cfg.metrics:
                await self._stop_exporter()
                self._start_exporter(new)
            if self._control is not None:
                await self._control.stop()
                self._control = None
            await self._start_control(new)
        except OSError as exc:
            # The lookups run on the new configuration already; say what is missing.
            log.error("reload: %s (the rest of the new configuration is in use)", exc)  # noqa: TRY400
        if self._watcher is not None:
            self._watcher.cancel()
        self._start_watcher(new, raw)
        self.cfg = new
        self.metrics.cache_flushes.labels("reload").inc()
        self.metrics.reloads.labels("ok").inc()
        log.info("configuration reloaded from %s; cache flushed", path)
        if old_backend is not None:
            # Lookups already running on the old backend finish within their deadline.
            asyncio.get_running_loop().call_later(new.lookup.timeout + 1, _close_later, old_backend)
        return True

    # ------------------------------------------------------------------ parts

    def _timed(self, backend: Backend) -> Backend:
        def on_query(seconds: float, _ok: bool) -> None:
            self.metrics.backend_queries.inc()
            self.metrics.backend_query_seconds.observe(seconds)

        return TimedBackend(backend, on_query)

    async def _open_listeners(self, listeners: tuple[ListenConfig, ...], inherited: list[InheritedSocket]) -> None:
        assert self.server is not None
        used: set[int] = set()
        for lc in listeners:
            passed = match(inherited, lc.address)
            sock = None
            if passed is not None and passed.fd not in used:
                used.add(passed.fd)
                sock = socket.socket(fileno=passed.fd)
            await self.server.listen(lc, make_handler(lc, self.decide), sock)
        unused = [i for i in inherited if i.fd not in used]
        if unused:
            names = ", ".join(f"{i.address} ({i.name})" for i in unused)
            raise ConfigError(f"systemd passed sockets that no [[listen]] uses: {names}")

    async def _swap_listeners(self, new: Config) -> None:
        assert self.server is not None
        current = set(self.server.listen_addresses)
        wanted = {lc.address: lc for lc in new.listen}
        old = {lc.address: lc for lc in self.cfg.listen}
        for address, lc in wanted.items():
            if address in current and old.get(address) != lc:
                await self.server.close_listener(address)  # same address, new settings
                current.discard(address)
        for address, lc in wanted.items():
            if address not in current:
                await self.server.listen(lc, make_handler(lc, self.decide))
        for address in current - wanted.keys():
            await self.server.close_listener(address)

    async def _stop_exporter(self) -> None:
        """Stop the metrics endpoint and free its port, in a thread: shutdown() waits for the
        HTTP server's 0.5 s poll, which must hold up neither the loop nor a restart."""
        if self._exporter is None:
            return
        httpd, self._exporter = self._exporter[0], None

        def stop() -> None:
            httpd.shutdown()
            httpd.server_close()

        await asyncio.to_thread(stop)

    def _start_exporter(self, cfg: Config) -> None:
        if not cfg.metrics.address:
            return
        address = parse_address(cfg.metrics.address, "metrics.address")
        assert isinstance(address, InetAddress)
        try:
            self._exporter = start_http_server(address.port, addr=address.host, registry=self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics.address {cfg.metrics.address}: {exc.strerror or exc}") from exc
        log.info("metrics on http://%s:%d/metrics", address.host, self._exporter[0].server_port)

    @property
    def metrics_port(self) -> int | None:
        return int(self._exporter[0].server_port) if self._exporter is not None else None

    async def _start_control(self, cfg: Config) -> None:
        if not cfg.server.control_socket:
            return
        control = ControlServer(cfg.server.control_socket, self.flush)
        await control.start()
        self._control = control

    def _start_watcher(self, cfg: Config, backend: Backend) -> None:
        self._watcher = None
        if cfg.cache.poll_interval <= 0:
            return
        custom = any(cfg.map_config(name).query for name in cfg.maps)
        watcher = ChangeWatcher(backend, self._changed, custom_queries=custom)
        self._watcher = asyncio.get_running_loop().create_task(watcher.run(cfg.cache.poll_interval))

    async def decide(self, request: dict[str, str]) -> str:
        """The quota policy of the current configuration (it changes on reload)."""
        assert self.policy is not None
        return await self.policy.decide(request)

    def flush(self, table: str | None, key: str | None) -> int:
        if self.resolver is None:
            return 0
        self.metrics.cache_flushes.labels("command").inc()
        return self.resolver.cache.flush(table, key)

    def _changed(self, maps: frozenset[str] | None) -> None:
        if self.resolver is None:
            return
        count = self.resolver.cache.flush() if maps is None else self.resolver.cache.flush_maps(set(maps))
        self.metrics.cache_flushes.labels("change").inc()
        log.info("database changed: dropped %d cached answers", count)


async def _probe(backend: Backend, cfg: Config) -> None:
    """One query at start: creates SQLite's tables, and says early if MySQL is unreachable."""
    try:
        async with asyncio.timeout(cfg.lookup.timeout):
            await backend.fetch("SELECT 1", ())
    except (BackendError, TimeoutError) as exc:
        log.warning(
            "database %s not answering at start (%s); lookups answer TEMP until it does",
            cfg.database.url.redacted(),
            exc,
        )


def _close_later(backend: Backend) -> None:
    asyncio.get_running_loop().create_task(backend.close())


async def start_server(cfg: Config, backend: Backend) -> Server:
    """A bare server over ``backend`` (tests): listeners of ``cfg``, no exporter or control."""
    resolver = make_resolver(cfg, backend)
    policy = QuotaPolicy(resolver, cfg.quota)
    server = Server(cfg.server, resolver)
    try:
        for lc in cfg.listen:
            await server.listen(lc, make_handler(lc, policy.decide))
    except BaseException:
        await server.stop()
        raise
    return server


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The loop ``server.event_loop`` asks for: uvloop's for "uvloop", and for "auto" when it
    is installed (its loop and transports are C: less CPU per request, see bench/warm_path.py);
    otherwise asyncio's own."""
    if choice != "asyncio":
        try:
            import uvloop  # noqa: PLC0415 - optional: only where it is installed
        except ImportError:
            if choice == "uvloop":  # load_config refuses this already; a Config built by hand may not
                raise ConfigError('server.event_loop: "uvloop" is not installed') from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


async def serve(cfg: Config) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully; SIGHUP reloads the config file."""
    if not cfg.listen:
        log.warning("%s: no [[listen]] section: nothing to serve", cfg.path)
    loop = asyncio.get_running_loop()
    log.info("event loop: %s", "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio")
    # The threads beside the loop (SQLite's, the quota scans, the metrics endpoint) need the GIL
    # for each step. While the loop is busy, Python makes them wait its switch interval (5 ms)
    # for every step: a client flooding the daemon with cached lookups stretched an SQLite
    # lookup of ~5 steps past a 1 s deadline (tests/test_reliability.py, never-reads, under
    # coverage). 0.5 ms bounds that wait; it costs nothing while no other thread wants the GIL.
    sys.setswitchinterval(_GIL_SWITCH_INTERVAL)
    stop = asyncio.Event()
    reloads: list[asyncio.Task[bool]] = []
    app = App(cfg)

    def on_hup() -> None:
        sdnotify.notify("RELOADING=1")
        task = loop.create_task(app.reload(cfg.path))
        task.add_done_callback(lambda _: sdnotify.notify("READY=1"))
        reloads.append(task)
        task.add_done_callback(reloads.remove)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await app.start(inherited_sockets())
        log.info("mailmapd ready: database %s", cfg.database.url.redacted())
        sdnotify.notify("READY=1")
        await stop.wait()
        log.info("stopping")
        sdnotify.notify("STOPPING=1")
    finally:
        while reloads:  # each task removes itself when done
            await reloads[0]
        await app.stop()

"""asyncio listeners and the per-connection loop.

Each connection is an ``asyncio.Protocol`` (on uvloop where it is installed). Bytes go
through the protocol's sans-IO decoder; each complete request is answered in order. A request
that can be answered without waiting (a cache hit, a key that cannot exist) is written from
``data_received`` directly, with no task and no await; the first one that needs the database
starts a task that answers it and everything queued behind it, in order, then ends.
Concurrency comes from many connections, as Postfix opens them.

A malformed request closes its connection (Postfix reconnects and retries) and is logged;
it never gets a made-up answer. A client that does not read its replies gets
``server.idle_timeout`` to start again, then its connection is aborted.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import pwd
import socket
import stat
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from mailmapd.config import MAP_NAMES, ConfigError, InetAddress, ListenConfig, ServerConfig, UnixAddress, parse_address
from mailmapd.metrics import CounterChild, Metrics
from mailmapd.proto import (
    NOT_FOUND,
    Found,
    NotFound,
    PermFail,
    ProtocolError,
    Result,
    TempFail,
    decode_key,
    policy,
    socketmap,
    tcptable,
)
from mailmapd.proto.netstring import NetstringDecoder

log = logging.getLogger(__name__)

# listen(2) backlog for every listener: Postfix opens connections in bursts.
_BACKLOG = 1024
# asyncio's create_unix_server() removes the socket file on close from Python 3.13 on.
_ASYNCIO_CLEANS_UNIX_SOCKETS = sys.version_info >= (3, 13)
# Requests answered in one go from data_received, or between two yields of a worker.
_SYNC_BUDGET = 64

_RESULT_LABELS: dict[type, str] = {Found: "found", NotFound: "notfound", TempFail: "temp", PermFail: "perm"}
_FOUND_LABEL, _NOT_FOUND_LABEL = _RESULT_LABELS[Found], _RESULT_LABELS[NotFound]


class Resolver(Protocol):
    """What answers lookups (mailmapd.lookup.Resolver; a fake in tests)."""

    def cached_value(self, table: str, key: str) -> bytes | None:
        """A fresh answer known without waiting, as its value in UTF-8 (b"": not found), or None."""
        ...

    async def resolve(self, table: str, key: str) -> Result: ...


class Decoder(Protocol):
    @property
    def pending(self) -> int: ...

    def feed(self, data: bytes) -> Sequence[Any]: ...


# A lookup for the resolver: (map, decoded key). A plain tuple, not a dataclass: one is made
# for every request, and creating a frozen dataclass costs more than the cache lookup.
Job = tuple[str, str]


@dataclass(frozen=True, slots=True)
class PolicyJob:
    """A policy request: its attributes."""

    request: dict[str, str]


class Handler(Protocol):
    """What one protocol contributes: framing, parsing, and encoding of results."""

    name: str

    def new_decoder(self) -> Decoder: ...

    def start(self, frame: Any) -> bytes | Job | PolicyJob:
        """The reply when it is known now, else the job to do. Raises ProtocolError."""
        ...

    def encode(self, result: Result) -> bytes: ...

    def encode_value(self, value: bytes) -> bytes:
        """The reply for a cached answer: its value in UTF-8, b"" meaning not found."""
        ...

    async def decide(self, job: PolicyJob) -> bytes:
        """The reply to a policy request (policy handlers only)."""
        ...


class _LookupOnly:
    async def decide(self, job: PolicyJob) -> bytes:
        raise ProtocolError(f"this listener answers lookups, not policy requests ({len(job.request)} attributes)")


class SocketmapHandler(_LookupOnly):
    name = "socketmap"

    def __init__(self, max_request: int = socketmap.MAX_REQUEST_DEFAULT) -> None:
        self._max_request = max_request

    def new_decoder(self) -> Decoder:
        return NetstringDecoder(self._max_request)

    def start(self, frame: bytes) -> bytes | Job:
        table, key = socketmap.decode_request(frame)
        if key is None:
            return socketmap.encode_reply(NOT_FOUND)
        return table, key

    def encode(self, result: Result) -> bytes:
        return socketmap.encode_reply(result)

    encode_value = staticmethod(socketmap.encode_value)  # the hot path: no frame of our own


class TcpTableHandler(_LookupOnly):
    """tcp_table carries no map name: each listener serves one map."""

    name = "tcp_table"

    def __init__(self, table: str) -> None:
        self._table = table

    def new_decoder(self) -> Decoder:
        return tcptable.LineDecoder()

    def start(self, frame: bytes) -> bytes | Job:
        key = decode_key(tcptable.request_key(frame))
        if key is None:
            return tcptable.encode_reply(NOT_FOUND)
        return self._table, key

    def encode(self, result: Result) -> bytes:
        return tcptable.encode_reply(result)

    encode_value = staticmethod(tcptable.encode_value)  # the hot path: no frame of our own


class PolicyHandler:
    """Postfix's SMTPD policy protocol: the quota policy decides each request."""

    name = "policy"

    def __init__(self, decide: Callable[[dict[str, str]], Awaitable[str]]) -> None:
        self._decide = decide

    def new_decoder(self) -> Decoder:
        return policy.PolicyDecoder()

    def start(self, frame: Any) -> bytes | Job | PolicyJob:
        return PolicyJob(frame)

    def encode(self, result: Result) -> bytes:
        return policy.encode_reply(result)

    def encode_value(self, value: bytes) -> bytes:
        raise NotImplementedError(f"a policy listener has no cached lookups to answer ({len(value)} bytes)")

    async def decide(self, job: PolicyJob) -> bytes:
        return policy.encode_action(await self._decide(job.request))


class _Connection(asyncio.Protocol):
    def __init__(self, server: Server, handler: Handler) -> None:
        self._server = server
        self._handler = handler
        self._decoder = handler.new_decoder()
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        # Requests waiting behind one that needs the database: raw frames, or the job the
        # first of them became. Not None while a worker task runs.
        self._queue: deque[Any] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._last_activity = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None  # runs while replies cannot be sent
        self._read_paused = False
        self._write_paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._aborted = False
        self.closing = False

    # ---------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's implement asyncio.Transport without subclassing it.
        self._transport = cast("asyncio.Transport", transport)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        if not self._server.admit(self, self._handler.name):
            self._transport.abort()
            return
        self._last_activity = self._loop.time()
        self._idle_timer = self._loop.call_later(self._server.cfg.idle_timeout, self._check_idle)
        log.debug("%s connection from %s", self._handler.name, self._peer)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._idle_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        if self._worker is not None:
            self._worker.cancel()
        if self._decoder.pending and exc is None and not self._aborted:
            log.info(
                "%s: %s closed the connection in the middle of a request",
                self._handler.name,
                self._peer,
            )
        self._server.forget(self, self._handler.name)
        log.debug("%s connection from %s closed", self._handler.name, self._peer)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            self._malformed(exc)
            return
        if self._queue is not None:
            self._queue.extend(frames)
        else:
            # Answer at once what needs no waiting (a cache hit, a key that cannot exist), up
            # to a budget: one client's pipelined burst must not hold the loop from the others.
            done = 0
            for frame in frames:
                if done >= _SYNC_BUDGET or self._write_paused:
                    break
                try:
                    job = self._handler.start(frame)
                except ProtocolError as exc:
                    self._malformed(exc)
                    return
                done += 1
                reply = self._reply_now(job)
                if reply is None:
                    self._queue = deque([job])
                    break
                self._write(reply)
            if self._queue is None and done < len(frames):
                self._queue = deque()
            if self._queue is not None:
                self._queue.extend(frames[done:])
                self._worker = self._loop.create_task(self._work())
        if self._queue is not None and len(self._queue) >= self._server.cfg.max_pipelined:
            self._set_reading(paused=True)

    def _reply_now(self, job: bytes | Job | PolicyJob) -> bytes | None:
        """The reply if it is known without waiting (a cache hit, or no job at all); None when
        the job must wait."""
        if isinstance(job, bytes):
            return job
        if isinstance(job, tuple) and (value := self._server.resolver.cached_value(*job)) is not None:
            self._server.count_lookup(self._handler.name, job[0], _FOUND_LABEL if value else _NOT_FOUND_LABEL)
            return self._handler.encode_value(value)
        return None

    def pause_writing(self) -> None:
        # The peer does not read its replies: stop reading its requests until it does, and
        # give it server.idle_timeout to start reading again.
        self._write_paused = True
        self._writable.clear()
        self._update_reading()
        self._watch_stall()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._writable.set()
        self._update_reading()
        if self._stall_timer is not None and not self._transport_closing():
            self._stall_timer.cancel()
            self._stall_timer = None

    # ---------------------------------------------------------------- answering

    async def _work(self) -> None:
        """Answer the queue in order: frames (bytes) still to parse, or jobs already parsed."""
        queue = self._queue
        assert queue is not None
        handled = 0
        try:
            while queue:
                if self._write_paused:
                    await self._writable.wait()  # the peer reads again (or the connection ends)
                item = queue.popleft()
                if not isinstance(item, tuple | PolicyJob):  # a raw frame: parse it now
                    try:
                        item = self._handler.start(item)
                    except ProtocolError as exc:
                        self._malformed(exc)
                        return
                reply = self._reply_now(item)
                if reply is not None:
                    self._write(reply)
                elif isinstance(item, tuple):
                    self._answer(item, await self._resolve(item))
                elif isinstance(item, PolicyJob):
                    self._write(await self._decide(item))
                handled += 1
                if handled % _SYNC_BUDGET == 0:
                    await asyncio.sleep(0)  # let the other connections in
                if self._read_paused and len(queue) < self._server.cfg.max_pipelined // 2 + 1:
                    self._set_reading(paused=False)
        finally:
            self._queue = None
            self._worker = None
        if self.closing:
            self.close()

    async def _resolve(self, job: Job) -> Result:
        table, key = job
        try:
            return await self._server.resolver.resolve(table, key)
        except Exception:
            # The one broad except: a bug must cost one TEMP answer, not the daemon.
            log.exception("%s: internal error answering %s", self._handler.name, table)
            return TempFail("internal error in mailmapd, see its log")

    async def _decide(self, job: PolicyJob) -> bytes:
        try:
            return await self._handler.decide(job)
        except Exception:
            log.exception("%s: internal error answering a policy request", self._handler.name)
            return policy.encode_action("DEFER_IF_PERMIT internal error in mailmapd, see its log")

    def _answer(self, job: Job, result: Result) -> None:
        self._write(self._handler.encode(result))
        self._server.count_lookup(self._handler.name, job[0], _RESULT_LABELS[type(result)])

    # ---------------------------------------------------------------- helpers

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _malformed(self, exc: ProtocolError) -> None:
        if self._server.metrics is not None:
            self._server.metrics.malformed_requests.labels(self._handler.name).inc()
        log.warning("%s: malformed request from %s, closing: %s", self._handler.name, self._peer, exc)
        self.abort()

    def _transport_closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def _set_reading(self, *, paused: bool) -> None:
        self._read_paused = paused
        self._update_reading()

    def _update_reading(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if self._read_paused or self._write_paused:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    def _check_idle(self) -> None:
        idle = self._server.cfg.idle_timeout
        remaining = self._last_activity + idle - self._loop.time()
        if self._worker is None and remaining <= 0:
            log.debug("%s: closing idle connection from %s", self._handler.name, self._peer)
            self.close()
            return
        self._idle_timer = self._loop.call_later(max(remaining, 1.0), self._check_idle)

    def _watch_stall(self) -> None:
        """Abort the connection unless its replies can be sent within server.idle_timeout."""
        if self._stall_timer is None:
            self._stall_timer = self._loop.call_later(self._server.cfg.idle_timeout, self._stalled)

    def _stalled(self) -> None:
        self._stall_timer = None
        log.info(
            "%s: %s has not read its replies for %gs (server.idle_timeout), closing",
            self._handler.name,
            self._peer,
            self._server.cfg.idle_timeout,
        )
        if self._server.metrics is not None:
            # A peer that stops reading breaks the request/reply exchange like a malformed
            # request does; one counter for both keeps the dashboard and alerts as they are.
            self._server.metrics.malformed_requests.labels(self._handler.name).inc()
        self.abort()

    @property
    def worker(self) -> asyncio.Task[None] | None:
        """The task answering this connection's requests, while there is one."""
        return self._worker

    def close(self) -> None:
        """Close now if idle, else once the requests in flight are answered.

        The transport closes once its buffered replies are sent; a peer that does not take
        them within server.idle_timeout is aborted.
        """
        self.closing = True
        if self._worker is None and self._transport is not None:
            self._transport.close()
            if self._transport.get_write_buffer_size():
                self._watch_stall()

    def abort(self) -> None:
        self._aborted = True
        if self._transport is not None:
            self._transport.abort()


@dataclass(frozen=True, slots=True)
class _Listener:
    """One listening server and what it was opened for (uvloop's Server takes no attributes)."""

    server: asyncio.Server
    protocol: str
    address: str  # as configured: inet:HOST:PORT or unix:/PATH


class Server:
    """All listeners of one daemon and the connections they accepted."""

    def __init__(self, cfg: ServerConfig, resolver: Resolver, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.resolver = resolver
        self.metrics = metrics
        self.known_maps: frozenset[str] = frozenset(MAP_NAMES)
        self.loop = asyncio.get_running_loop()
        self._listeners: list[_Listener] = []
        self._retired: list[asyncio.Server] = []
        self._unix_paths: list[str] = []
        self._connections: set[_Connection] = set()
        self._refused = 0
        self._lookup_counters: dict[tuple[str, str, str], CounterChild] = {}
        self._stopping = False

    @property
    def sockets(self) -> list[tuple[str, Any]]:
        """(protocol, sockname) for every listening socket, e.g. to read back port 0."""
        out: list[tuple[str, Any]] = []
        for listener in self._listeners:
            out.extend((listener.protocol, sock.getsockname()) for sock in listener.server.sockets)
        return out

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def count_lookup(self, protocol: str, table: str, result_label: str) -> None:
        """mailmapd_lookups_total, for every request: its labelled child is kept at hand, since
        labels() costs more than the increment (measured end to end in bench/warm_path.py)."""
        key = (protocol, table, result_label)
        counter = self._lookup_counters.get(key)
        if counter is None:
            if self.metrics is None:
                return
            label = table if table in self.known_maps else "unknown"  # bounded label values
            counter = self.metrics.lookups.labels(protocol, label, result_label)
            if len(self._lookup_counters) < 1000:  # noqa: PLR2004 - unknown map names must not grow this
                self._lookup_counters[key] = counter
        counter.inc()

    def admit(self, conn: _Connection, protocol: str) -> bool:
        if self._stopping:
            # Accepted by the event loop just before stop() closed the listeners: closed
            # unread, so its client retries on the next run (Postfix does, once).
            return False
        if len(self._connections) >= self.cfg.max_connections:
            if self.metrics is not None:
                self.metrics.connections_refused.inc()
            self._refused += 1
            if self._refused == 1 or self._refused % 1000 == 0:
                log.warning(
                    "connection limit server.max_connections=%d reached; refused %d so far",
                    self.cfg.max_connections,
                    self._refused,
                )
            return False
        self._connections.add(conn)
        if self.metrics is not None:
            self.metrics.connections.labels(protocol).inc()
            self.metrics.connections_open.labels(protocol).inc()
        return True

    def forget(self, conn: _Connection, protocol: str) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            if self.metrics is not None:
                self.metrics.connections_open.labels(protocol).dec()

    async def listen(self, lc: ListenConfig, handler: Handler, inherited: socket.socket | None = None) -> None:
        """Open one listener from a ``[[listen]]`` section, or serve a socket systemd passed."""

        def factory() -> _Connection:
            return _Connection(self, handler)

        address = parse_address(lc.address, "listen.address")
        try:
            srv = await self._open(factory, address, lc, inherited)
        except OSError as exc:
            raise OSError(exc.errno, f"{lc.address}: {exc.strerror or exc}") from exc
        self._listeners.append(_Listener(srv, handler.name, lc.address))
        for sock in srv.sockets:
            log.info(
                "listening for %s on %s%s",
                handler.name,
                _describe_sockname(sock.getsockname()),
                " (from systemd)" if inherited is not None else "",
            )

    async def _open(
        self,
        factory: Callable[[], _Connection],
        address: InetAddress | UnixAddress,
        lc: ListenConfig,
        inherited: socket.socket | None,
    ) -> asyncio.Server:
        if inherited is not None:
            # systemd owns an inherited socket and its file; listen() again with a backlog
            # no smaller than the socket unit's default.
            if isinstance(address, InetAddress):
                return await self.loop.create_server(factory, sock=inherited, backlog=_BACKLOG)
            # The socket file is systemd's too: from Python 3.13 asyncio removes it when the
            # server closes unless told not to (uvloop never does).
            asyncio_loop = not type(self.loop).__module__.startswith("uvloop")
            keep: dict[str, Any] = {"cleanup_socket": False} if _ASYNCIO_CLEANS_UNIX_SOCKETS and asyncio_loop else {}
            return await self.loop.create_unix_server(factory, sock=inherited, backlog=_BACKLOG, **keep)
        if isinstance(address, InetAddress):
            return await self.loop.create_server(factory, address.host, address.port, reuse_address=True)
        return await self._listen_unix(factory, address, lc)

    async def close_listener(self, address: str) -> None:
        """Stop accepting on one configured address (a reload removed it)."""
        for listener in [x for x in self._listeners if x.address == address]:
            self._listeners.remove(listener)
            listener.server.close()
            # Its established connections keep being served; since Python 3.12.1
            # wait_closed() would wait for them, so stop() awaits it at the end.
            self._retired.append(listener.server)
            path = address[5:] if address.startswith("unix:") else None
            if path is not None and path in self._unix_paths:
                self._unix_paths.remove(path)
                remove_stale_socket(path)

    @property
    def listen_addresses(self) -> list[str]:
        return [listener.address for listener in self._listeners]

    async def _listen_unix(
        self, factory: Callable[[], _Connection], address: UnixAddress, lc: ListenConfig
    ) -> asyncio.Server:
        remove_stale_socket(address.path)
        old_umask = os.umask(0o117)  # no window in which the socket is world-accessible
        try:
            srv = await self.loop.create_unix_server(factory, address.path)
        finally:
            os.umask(old_umask)
        self._unix_paths.append(address.path)
        try:
            _set_socket_access(address.path, lc)
        except BaseException:
            srv.close()
            raise
        return srv

    async def stop(self) -> None:
        """Stop accepting, finish requests in flight, close connections; bounded in time."""
        self._stopping = True
        for listener in self._listeners:
            listener.server.close()
        for conn in list(self._connections):
            conn.close()
        workers = [c.worker for c in self._connections if c.worker is not None]
        if workers:
            await asyncio.wait(workers, timeout=self.cfg.shutdown_timeout)
        for conn in list(self._connections):
            conn.abort()
        for srv in [*(listener.server for listener in self._listeners), *self._retired]:
            await srv.wait_closed()
        for path in self._unix_paths:
            remove_stale_socket(path)
        self._listeners.clear()
        self._retired.clear()


def _describe_sockname(name: object) -> str:
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"inet:[{host}]:{port}" if ":" in str(host) else f"inet:{host}:{port}"
    return f"unix:{name}"


def remove_stale_socket(path: str) -> None:
    """Remove a socket file left behind by an earlier run.

    A file that is not a socket is never removed (binding then fails with "in use"), and
    neither is a socket another process still listens on.
    """
    try:
        if not stat.S_ISSOCK(Path(path).lstat().st_mode):
            return
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            Path(path).unlink(missing_ok=True)  # nobody answers: left behind
            return
    raise OSError(errno.EADDRINUSE, f"{path}: another process is listening on this socket")


def _set_socket_access(path: str, lc: ListenConfig) -> None:
    try:
        uid = pwd.getpwnam(lc.owner).pw_uid if lc.owner else -1
    except KeyError:
        raise ConfigError(f"listen {lc.address}: owner {lc.owner!r}: no such user") from None
    try:
        gid = grp.getgrnam(lc.group).gr_gid if lc.group else -1
    except KeyError:
        raise ConfigError(f"listen {lc.address}: group {lc.group!r}: no such group") from None
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)
    Path(path).chmod(lc.mode if lc.mode is not None else 0o660)

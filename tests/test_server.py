"""The server on real sockets (127.0.0.1:0 and unix sockets), with a fake resolver."""

from __future__ import annotations

import asyncio
import logging
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from mailmapd.config import ListenConfig, ServerConfig
from mailmapd.metrics import Metrics
from mailmapd.proto import NOT_FOUND, Found, NotFound, Result, TempFail
from mailmapd.proto.netstring import encode
from mailmapd.server import Server, SocketmapHandler, TcpTableHandler, _Connection
from tests import golden


@dataclass
class FakeResolver:
    """Answers from golden.ANSWERS; records what it was asked; can be made to block."""

    asked: list[tuple[str, str]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    hot: dict[tuple[str, str], Result] = field(default_factory=dict)

    def cached_value(self, table: str, key: str) -> bytes | None:
        hit = self.hot.get((table, key))
        if hit is None:
            return None
        assert isinstance(hit, Found | NotFound), "only answers are cached"
        return hit.value.encode() if isinstance(hit, Found) else b""

    async def resolve(self, table: str, key: str) -> Result:
        if (hit := self.hot.get((table, key))) is not None:
            return hit
        self.asked.append((table, key))
        if self.gate is not None:
            await self.gate.wait()
        return golden.ANSWERS.get(key.encode(), NOT_FOUND)


@dataclass
class Running:
    server: Server
    resolver: FakeResolver
    socketmap: tuple[str, int]
    tcp_table: tuple[str, int]
    unix_path: str


async def start(tmp_path: Path, metrics: Metrics | None = None, **server_cfg: float) -> Running:
    resolver = FakeResolver()
    server = Server(ServerConfig(**server_cfg), resolver, metrics)  # type: ignore[arg-type]
    unix_path = str(tmp_path / "mailmapd.sock")
    await server.listen(ListenConfig("socketmap", "inet:127.0.0.1:0"), SocketmapHandler())
    await server.listen(ListenConfig("tcp_table", "inet:127.0.0.1:0", map="mailboxes"), TcpTableHandler("mailboxes"))
    await server.listen(ListenConfig("socketmap", f"unix:{unix_path}"), SocketmapHandler())
    names = [name for _, name in server.sockets]
    return Running(server, resolver, names[0], names[1], unix_path)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    r = await start(tmp_path)
    yield r
    await r.server.stop()


async def exchange(
    addr: tuple[str, int] | str, request: bytes, chunk: int, reply_len: int, timeout: float = 5.0
) -> bytes:
    if isinstance(addr, str):
        reader, writer = await asyncio.open_unix_connection(addr)
    else:
        reader, writer = await asyncio.open_connection(*addr)
    try:
        for i in range(0, len(request), chunk):
            writer.write(request[i : i + chunk])
            await writer.drain()
        return await asyncio.wait_for(reader.readexactly(reply_len), timeout)
    finally:
        writer.close()


GOLDEN_SOCKETMAP = golden.load("socketmap")
GOLDEN_TCP = golden.load("tcptable")


@pytest.mark.parametrize("chunk", golden.CHUNK_SIZES)
async def test_socketmap_golden_on_one_connection(running: Running, chunk: int) -> None:
    """Every golden exchange, pipelined on one connection, answered in order."""
    requests = b"".join(req for req, _ in GOLDEN_SOCKETMAP)
    replies = b"".join(rep for _, rep in GOLDEN_SOCKETMAP)
    assert await exchange(running.socketmap, requests, chunk, len(replies)) == replies


@pytest.mark.parametrize("chunk", golden.CHUNK_SIZES)
async def test_tcp_table_golden_on_one_connection(running: Running, chunk: int) -> None:
    requests = b"".join(req for req, _ in GOLDEN_TCP)
    replies = b"".join(rep for _, rep in GOLDEN_TCP)
    assert await exchange(running.tcp_table, requests, chunk, len(replies)) == replies


async def test_unix_socket_serves_and_is_not_world_accessible(running: Running) -> None:
    req, rep = GOLDEN_SOCKETMAP[0]
    assert await exchange(running.unix_path, req, 4096, len(rep)) == rep
    assert stat.S_IMODE(Path(running.unix_path).stat().st_mode) == 0o660


async def test_unix_socket_mode_is_configurable(tmp_path: Path) -> None:
    server = Server(ServerConfig(), FakeResolver())
    path = str(tmp_path / "s")
    await server.listen(ListenConfig("socketmap", f"unix:{path}", mode=0o666), SocketmapHandler())
    try:
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o666
    finally:
        await server.stop()
    assert not Path(path).exists()


async def test_stale_socket_is_replaced_but_a_regular_file_is_not(tmp_path: Path) -> None:
    first = await start(tmp_path)
    # Simulate a crash: the socket file stays behind.
    for listener in first.server._listeners:
        listener.server.close()
    first.server._unix_paths.clear()
    await first.server.stop()
    assert Path(first.unix_path).exists()
    second = await start(tmp_path)
    await second.server.stop()

    regular = tmp_path / "regular"
    regular.write_text("not a socket")
    server = Server(ServerConfig(), FakeResolver())
    with pytest.raises(OSError, match="in use"):
        await server.listen(ListenConfig("socketmap", f"unix:{regular}"), SocketmapHandler())
    await server.stop()
    assert regular.read_text() == "not a socket"


async def test_tcp_table_key_is_percent_decoded(running: Running) -> None:
    await exchange(running.tcp_table, b"get a%20b%25c\n", 4096, 1, timeout=5)
    assert running.resolver.asked == [("mailboxes", "a b%c")]


async def test_invalid_utf8_key_is_not_found_without_asking(running: Running) -> None:
    reply = socket_reply(NOT_FOUND)
    assert await exchange(running.socketmap, encode(b"mailboxes \xff\xfe"), 4096, len(reply)) == reply
    nul = encode(b"mailboxes a\x00b")
    assert await exchange(running.socketmap, nul, 4096, len(reply)) == reply
    assert running.resolver.asked == []


def socket_reply(result: Result) -> bytes:
    return SocketmapHandler().encode(result)


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"x:abc,", id="bad-length"),
        pytest.param(b"3:abc;", id="no-comma"),
        pytest.param(b"999999:", id="over-limit"),
        pytest.param(b"5:nomap,", id="no-space"),
    ],
)
async def test_malformed_socketmap_closes_only_that_connection(
    running: Running, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection(*running.socketmap)
    other_r, other_w = await asyncio.open_connection(*running.socketmap)
    with caplog.at_level(logging.WARNING, logger="mailmapd.server"):
        writer.write(garbage)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no made-up answer
    writer.close()
    assert "malformed request" in caplog.text
    req, rep = GOLDEN_SOCKETMAP[0]
    other_w.write(req)
    assert await asyncio.wait_for(other_r.readexactly(len(rep)), 5) == rep
    other_w.close()


async def test_malformed_tcp_table_closes(running: Running) -> None:
    reader, writer = await asyncio.open_connection(*running.tcp_table)
    writer.write(b"put key value\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_requests_behind_a_slow_one_keep_their_order(running: Running) -> None:
    running.resolver.gate = asyncio.Event()
    reader, writer = await asyncio.open_connection(*running.socketmap)
    writer.write(encode(b"m alice@example.test") + encode(b"m \xff") + encode(b"m list@example.test"))
    await asyncio.sleep(0)  # let the server read; nothing can be answered yet
    running.resolver.gate.set()
    expected = (
        socket_reply(Found("example.test/alice/"))
        + socket_reply(NOT_FOUND)
        + socket_reply(Found("alice@example.test,bob@other.test"))
    )
    assert await asyncio.wait_for(reader.readexactly(len(expected)), 5) == expected
    writer.close()


async def test_internal_error_answers_temp_and_keeps_serving(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(table: str, key: str) -> Result:
        raise RuntimeError("bug")

    running.server.resolver = type(
        "Broken", (), {"resolve": staticmethod(broken), "cached_value": staticmethod(lambda table, key: None)}
    )()
    reader, writer = await asyncio.open_connection(*running.socketmap)
    expected = socket_reply(TempFail("internal error in mailmapd, see its log"))
    with caplog.at_level(logging.ERROR, logger="mailmapd.server"):
        writer.write(encode(b"m k") + encode(b"m k"))
        # Both answered: the connection survives the error.
        assert await asyncio.wait_for(reader.readexactly(2 * len(expected)), 5) == 2 * expected
    assert "internal error" in caplog.text
    writer.close()


async def test_connection_limit_refuses_the_excess(tmp_path: Path) -> None:
    r = await start(tmp_path, max_connections=2)
    try:
        clients = [await asyncio.open_connection(*r.socketmap) for _ in range(2)]
        req, rep = GOLDEN_SOCKETMAP[0]
        for reader, writer in clients:  # both admitted and served
            writer.write(req)
            assert await asyncio.wait_for(reader.readexactly(len(rep)), 5) == rep
        reader, writer = await asyncio.open_connection(*r.socketmap)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        for _, w in clients:
            w.close()
    finally:
        await r.server.stop()


async def test_idle_connection_is_closed(tmp_path: Path) -> None:
    r = await start(tmp_path, idle_timeout=0.2)
    try:
        reader, writer = await asyncio.open_connection(*r.socketmap)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await r.server.stop()


async def test_stop_answers_requests_in_flight(tmp_path: Path) -> None:
    r = await start(tmp_path)
    r.resolver.gate = asyncio.Event()
    reader, writer = await asyncio.open_connection(*r.socketmap)
    writer.write(encode(b"m alice@example.test"))
    while not r.resolver.asked:  # wait until the request is in flight
        await asyncio.sleep(0.01)
    stopping = asyncio.create_task(r.server.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waiting for the request in flight
    r.resolver.gate.set()
    await asyncio.wait_for(stopping, 5)
    expected = socket_reply(Found("example.test/alice/"))
    assert await reader.read() == expected  # answered, then closed
    writer.close()
    # No new connections once stopped.
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*r.socketmap)


async def test_stop_is_bounded_by_shutdown_timeout(tmp_path: Path) -> None:
    r = await start(tmp_path, shutdown_timeout=0.1)
    r.resolver.gate = asyncio.Event()  # never set: the request hangs
    reader, writer = await asyncio.open_connection(*r.socketmap)
    writer.write(encode(b"m alice@example.test"))
    while not r.resolver.asked:  # wait until the request is in flight
        await asyncio.sleep(0.01)
    await asyncio.wait_for(r.server.stop(), 5)
    assert await reader.read() == b""
    writer.close()


async def test_temp_result_maps_to_each_protocol(running: Running) -> None:
    tmp = TempFail("database unavailable")
    assert await exchange(
        running.socketmap, encode(b"m tempfail@example.test"), 4096, len(socket_reply(tmp))
    ) == socket_reply(tmp)
    line = await exchange(running.tcp_table, b"get tempfail@example.test\n", 4096, 4)
    assert line == b"400 "


async def test_cache_hit_is_answered_without_a_task_even_behind_nothing(running: Running) -> None:
    """A fresh answer goes out from data_received: the resolver's async path is never used."""
    running.resolver.hot[("m", "hot@example.test")] = Found("cached-value")
    reply = socket_reply(Found("cached-value"))
    assert await exchange(running.socketmap, encode(b"m hot@example.test"), 1, len(reply)) == reply
    assert running.resolver.asked == []


async def test_cache_hit_waits_its_turn_behind_a_slow_lookup(running: Running) -> None:
    running.resolver.gate = asyncio.Event()
    running.resolver.hot[("m", "hot@example.test")] = Found("cached-value")
    reader, writer = await asyncio.open_connection(*running.socketmap)
    writer.write(encode(b"m alice@example.test") + encode(b"m hot@example.test"))
    await asyncio.sleep(0.05)
    running.resolver.gate.set()
    expected = socket_reply(Found("example.test/alice/")) + socket_reply(Found("cached-value"))
    assert await asyncio.wait_for(reader.readexactly(len(expected)), 5) == expected
    writer.close()


async def test_cache_hits_found_and_not_found_on_both_protocols_are_answered_and_counted(tmp_path: Path) -> None:
    """A cached answer, found or not found, written from its cached form by each protocol's
    encoder, and counted with its result label."""
    registry = CollectorRegistry()
    r = await start(tmp_path, Metrics.create(registry))
    r.resolver.hot[("mailboxes", "alice@example.test")] = Found("example.test/alice/")
    r.resolver.hot[("mailboxes", "nobody@example.test")] = NOT_FOUND
    try:
        for key, socket_wire, tcp_wire in (
            (b"alice@example.test", b"22:OK example.test/alice/,", b"200 example.test/alice/\n"),
            (b"nobody@example.test", b"9:NOTFOUND ,", b"500 not found\n"),
        ):
            for _ in range(2):
                assert await exchange(r.socketmap, encode(b"mailboxes " + key), 4096, len(socket_wire)) == socket_wire
                assert await exchange(r.tcp_table, b"get " + key + b"\n", 4096, len(tcp_wire)) == tcp_wire
        assert r.resolver.asked == []  # every answer came from the cache
        for protocol in ("socketmap", "tcp_table"):
            for result in ("found", "notfound"):
                labels = {"protocol": protocol, "map": "mailboxes", "result": result}
                assert registry.get_sample_value("mailmapd_lookups_total", labels) == 2
    finally:
        await r.server.stop()


async def test_server_metrics(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    resolver = FakeResolver()
    server = Server(ServerConfig(), resolver, metrics)
    await server.listen(ListenConfig("socketmap", "inet:127.0.0.1:0"), SocketmapHandler())
    addr = server.sockets[0][1]
    try:
        reader, writer = await asyncio.open_connection(*addr)
        # The second request is malformed (a map name that is not ASCII): the first is
        # answered, then the connection is closed.
        writer.write(encode(b"mailboxes alice@example.test") + encode(b"no-such-map-\xff x"))
        assert await asyncio.wait_for(reader.read(), 5) == socket_reply(Found("example.test/alice/"))
        writer.close()
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(encode(b"nosuchmap key"))
        assert await asyncio.wait_for(reader.readexactly(len(socket_reply(NOT_FOUND))), 5) == socket_reply(NOT_FOUND)
        writer.close()
        await writer.wait_closed()
        for _ in range(500):  # until the server has seen both connections close
            if server.connection_count == 0:
                break
            await asyncio.sleep(0.01)

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        assert value("mailmapd_lookups_total", protocol="socketmap", map="mailboxes", result="found") == 1
        # A map name the client made up is never a label value.
        assert value("mailmapd_lookups_total", protocol="socketmap", map="unknown", result="notfound") == 1
        assert value("mailmapd_malformed_requests_total", protocol="socketmap") == 1
        assert value("mailmapd_connections_total", protocol="socketmap") == 2
        assert value("mailmapd_connections_open", protocol="socketmap") == 0
    finally:
        await server.stop()


async def test_client_that_never_reads_is_aborted_after_idle_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that sends requests and never reads the replies holds its connection for at
    most server.idle_timeout once mailmapd stops reading it; the others are answered meanwhile."""
    caplog.set_level(logging.INFO, logger="mailmapd.server")
    registry = CollectorRegistry()
    r = await start(tmp_path, Metrics.create(registry), idle_timeout=0.5)
    value = "x" * 1000  # each 20-byte request has a 1 KiB reply: the buffers fill fast
    r.resolver.hot[("m", "hot@example.test")] = Found(value)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, r.socketmap)
        chunk = encode(b"m hot@example.test") * 4096

        async def send_until_refused() -> None:
            while True:
                await loop.sock_sendall(sock, chunk)

        flood = asyncio.create_task(send_until_refused())
        answered = 0
        async with asyncio.timeout(8):
            while not flood.done():  # until mailmapd aborts the non-reader, which ends the sends
                reply = socket_reply(Found(value))
                assert await exchange(r.socketmap, encode(b"m hot@example.test"), 4096, len(reply)) == reply
                answered += 1
                await asyncio.sleep(0.05)
        with pytest.raises(ConnectionError):
            flood.result()
        while r.server.connection_count:  # the steady client's last connection closes too
            await asyncio.sleep(0.01)
    finally:
        sock.close()
        await r.server.stop()
    assert answered >= 5  # the stalled connection never held up the others
    stalled = [rec for rec in caplog.records if "has not read its replies" in rec.getMessage()]
    assert len(stalled) == 1
    assert stalled[0].levelno == logging.INFO
    assert "127.0.0.1:" in stalled[0].getMessage()
    assert registry.get_sample_value("mailmapd_malformed_requests_total", {"protocol": "socketmap"}) == 1


class StuckTransport:
    """A transport whose peer takes nothing: close() leaves the replies buffered."""

    def __init__(self) -> None:
        self.closing = False
        self.aborted = False

    def get_extra_info(self, _name: str) -> tuple[str, int]:
        return ("192.0.2.1", 4242)

    def write(self, _data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing or self.aborted

    def get_write_buffer_size(self) -> int:
        return 1000

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_closing_does_not_wait_forever_for_a_peer_that_does_not_read() -> None:
    """An idle connection is closed, but its transport would wait for its replies to drain:
    a peer that does not take them within idle_timeout is aborted."""
    server = Server(ServerConfig(idle_timeout=0.1), FakeResolver())
    conn = _Connection(server, SocketmapHandler())
    transport = StuckTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        while not transport.closing:  # closed by the idle timer
            await asyncio.sleep(0.01)
        while not transport.aborted:  # then aborted: its replies could not be sent
            await asyncio.sleep(0.01)
    conn.connection_lost(None)
    assert server.connection_count == 0

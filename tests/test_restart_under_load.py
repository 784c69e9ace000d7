"""Issue 8, the last case: ``systemctl restart mailmapd.service`` under load, with mailmapd.socket
holding the sockets. Zero failed lookups.

``tests/support/socketunit.py`` plays systemd (no systemd runs in the container): it binds
127.0.0.1 port 0 twice (socketmap, tcp_table) and a unix socket (socketmap), keeps them open, and
starts ``python -m mailmapd -c CONFIG serve`` with them as descriptors 3, 4, 5 (LISTEN_FDS,
LISTEN_FDNAMES=mailmapd:mailmapd:mailmapd, LISTEN_PID), waiting for READY=1. A restart is
SIGTERM, wait for the exit, start again on the same sockets. The database is the tutorial data on
SQLite, TTLs 1 s (so most lookups reach the database), as in the SIGHUP case
(tests/test_reliability.py, case 8).

While the daemon is restarted several times, these clients ask without pause:

- socketmap over TCP and over the unix socket, each on one long-lived connection, as a Postfix
  daemon's shared client handle keeps it (auto_clnt.c);
- socketmap with a fresh connection per lookup, as a newly started Postfix process has;
- tcp_table on one long-lived connection;
- Postfix itself: ``postmap -q -`` on ``socketmap:inet:...`` and on ``tcp:...``, reading keys
  from a pipe for the whole run.

The Python clients retry exactly as Postfix's clients do, and no more:

- socketmap, ``dict_sockmap_lookup()`` in src/util/dict_sockmap.c (read in the vdukhovni/postfix
  mirror, postfix/src/util/dict_sockmap.c, and the same in the 2.11 and 3.x copies NetBSD
  ships): "We retry connection-level errors once, to make server restarts transparent". If
  the request or the reply fails with ``NETSTRING_ERR_EOF`` (end of file or an I/O error such
  as ECONNRESET or EPIPE; netstring.c) and errno is not ETIMEDOUT, it drops the connection
  (``auto_clnt_recover()``) and tries once more on a new one. A second such error, a timeout,
  a malformed reply, or a failed connect (``auto_clnt_access()`` returns no stream: no retry at
  all) fails the lookup (``DICT_ERR_RETRY``: Postfix defers, postmap exits with "query error").
- tcp_table, ``dict_tcp_lookup()`` in src/util/dict_tcp.c: up to ``DICT_TCP_MAXTRY`` (10)
  attempts, with ``sleep(1)`` between them, where an attempt fails if the connect fails or the
  reply line ends early (EOF or an I/O error). A ``400`` reply fails the lookup at once.

Both wait 100 s for a reply (``DICT_SOCKMAP_DEF_TIMEOUT``, ``DICT_TCP_TMOUT``); these clients
give up after ``IO_TIMEOUT`` (20 s) and count that as a failed lookup, which is stricter. A TEMP
(``400``) answer is a failed lookup, as it is to Postfix.

Each daemon run serves ``MAILMAPD_RESTART_INTERVAL`` seconds from its READY=1, then is restarted,
until ``MAILMAPD_RESTART_SECONDS`` have passed (by default 1 and 6: three restarts).

Checked: every lookup of every client is answered, right (found keys with their value, unknown
keys not found), with no TEMP; both postmap runs exit 0, print exactly the found keys, in order,
and warn of nothing but dict_tcp's retries; every daemon run logged its three sockets "(from
systemd)", answered lookups, sent STOPPING=1, stopped with status 0 within TimeoutStopSec (no
SIGKILL) and logged no ERROR (a connection accepted as the daemon stopped once made one: the
second test below pins that down); the unix socket file is still there at the end;
and the restarts did cut connections (some lookups needed their retry).

The long form, by hand (figures in docs/reliability.md)::

    MAILMAPD_RESTART_SECONDS=60 MAILMAPD_RESTART_INTERVAL=5 MAILMAPD_RESTART_CLIENTS=20 \\
        python -m pytest tests/test_restart_under_load.py -q -s -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import random
import re
import shutil
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from mailmapd.config import ListenConfig, ServerConfig
from mailmapd.proto import Found, ProtocolError, netstring, tcptable
from mailmapd.server import Server, SocketmapHandler
from tests import reliability_support as rs
from tests.support.postfix import HOSTNAME
from tests.support.socketunit import Service, SocketUnit
from tests.test_service import serve_argv

SECONDS = float(os.environ.get("MAILMAPD_RESTART_SECONDS", "6"))  # length of the load
INTERVAL = float(os.environ.get("MAILMAPD_RESTART_INTERVAL", "1"))  # each run serves INTERVAL s, then restarts
CLIENTS = int(os.environ.get("MAILMAPD_RESTART_CLIENTS", "8"))  # long-lived socketmap and tcp_table clients each
IO_TIMEOUT = 20.0  # seconds for one reply; Postfix waits 100
SOCKMAP_ATTEMPTS = 2  # dict_sockmap.c: the first try and one retry
TCP_MAXTRY = 10  # dict_tcp.c DICT_TCP_MAXTRY
TCP_PAUSE = 1.0  # dict_tcp.c: sleep(1) between attempts
POSTMAP_PACE = 0.005  # seconds between two keys written to a postmap's stdin

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class LookupFailedError(Exception):
    """The lookup failed the way Postfix's client would fail it (DICT_ERR_RETRY)."""


def connector(address: str) -> Callable[[], Awaitable[Streams]]:
    """Opens a connection to a mailmapd address in config syntax (inet:HOST:PORT or unix:PATH)."""
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        return lambda: asyncio.open_unix_connection(path)
    host, _, port = address.removeprefix("inet:").rpartition(":")
    return lambda: asyncio.open_connection(host, int(port))


class _Connection:
    """The client's one connection, opened when a lookup needs it (auto_clnt_access())."""

    def __init__(self, connect: Callable[[], Awaitable[Streams]]) -> None:
        self._connect = connect
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Streams:
        if self.reader is None or self.writer is None:
            async with asyncio.timeout(IO_TIMEOUT):
                self.reader, self.writer = await self._connect()
        return self.reader, self.writer

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class SocketmapClient(_Connection):
    """dict_sockmap_lookup(): one request, one reply; a connection-level error is retried once on a
    new connection, nothing else is retried. ``keep=False`` closes after each lookup (a fresh
    process per lookup)."""

    def __init__(self, address: str, *, keep: bool = True) -> None:
        super().__init__(connector(address))
        self.keep = keep

    async def lookup(self, table: str, key: str) -> tuple[str, int]:
        """The reply (``OK value``, ``NOTFOUND ``, ``TEMP reason``...) and the attempts it took."""
        for attempt in range(1, SOCKMAP_ATTEMPTS + 1):
            try:
                reader, writer = await self.open()
            except (OSError, TimeoutError) as exc:  # auto_clnt_access() found no stream: no retry
                raise LookupFailedError(f"connect: {exc!r}") from exc
            try:
                async with asyncio.timeout(IO_TIMEOUT):
                    writer.write(netstring.encode(f"{table} {key}".encode()))
                    await writer.drain()
                    reply = (await rs.read_netstring(reader)).decode()
            except TimeoutError as exc:  # NETSTRING_ERR_TIME: no retry
                await self.close()
                raise LookupFailedError(f"no reply within {IO_TIMEOUT:g}s (attempt {attempt})") from exc
            except ValueError as exc:  # NETSTRING_ERR_FORMAT: no retry
                await self.close()
                raise LookupFailedError(f"malformed reply: {exc}") from exc
            except (rs.ClosedError, OSError) as exc:  # NETSTRING_ERR_EOF: retried once
                await self.close()
                if attempt < SOCKMAP_ATTEMPTS:
                    continue
                raise LookupFailedError(f"unexpected disconnect on the retry too: {exc!r}") from exc
            if not self.keep:
                await self.close()
            return reply, attempt
        raise AssertionError("unreachable")

    async def ask(self, probe: rs.Probe) -> tuple[str, int]:
        return await self.lookup(probe.table, probe.key)


class TcpTableClient(_Connection):
    """dict_tcp_lookup(): up to 10 attempts, one second apart, each on the open connection or a new
    one; an attempt fails on a failed connect or a reply line cut short. The reply is translated
    to socketmap's form (200 -> OK, 500 -> NOTFOUND, 400 -> TEMP)."""

    def __init__(self, address: str) -> None:
        super().__init__(connector(address))

    async def lookup(self, key: str) -> tuple[str, int]:
        errors: list[str] = []
        for attempt in range(1, TCP_MAXTRY + 1):
            if attempt > 1:
                await asyncio.sleep(TCP_PAUSE)
            try:
                reader, writer = await self.open()
            except TimeoutError as exc:
                raise LookupFailedError(f"connect: no answer within {IO_TIMEOUT:g}s") from exc
            except OSError as exc:
                errors.append(f"connect: {exc!r}")
                continue
            try:
                async with asyncio.timeout(IO_TIMEOUT):
                    writer.write(b"get " + tcptable.hex_quote(key.encode()) + b"\n")
                    await writer.drain()
                    line = await reader.readuntil(b"\n")
            except TimeoutError as exc:  # stricter than dict_tcp.c, which retries after 100 s
                await self.close()
                raise LookupFailedError(f"no reply within {IO_TIMEOUT:g}s (attempt {attempt})") from exc
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
                await self.close()
                errors.append(f"read: {exc!r}")
                continue
            reply = self._translate(line.decode().removesuffix("\n"))
            if not reply.startswith(("OK ", "NOTFOUND ")):
                await self.close()  # dict_tcp.c disconnects after a 4xx or a malformed reply
            return reply, attempt
        raise LookupFailedError(f"{TCP_MAXTRY} attempts failed: {errors[-3:]}")

    async def ask(self, probe: rs.Probe) -> tuple[str, int]:
        assert probe.table == "mailboxes"  # the tcp_table listener serves this map
        return await self.lookup(probe.key)

    def _translate(self, line: str) -> str:
        status, _, text = line.partition(" ")
        try:
            value = tcptable.hex_unquote(text.encode()).decode()
        except (ProtocolError, UnicodeDecodeError):
            return f"malformed tcp_table reply {line[:100]!r}"
        return {"200": f"OK {value}", "500": "NOTFOUND ", "400": f"TEMP {value}"}.get(
            status, f"tcp_table reply {line[:100]!r}"
        )


# --------------------------------------------------------------------------- the answers


@dataclass
class Tally:
    """Every lookup of every client, by client kind: right, wrong, TEMP or failed."""

    right: collections.Counter[str] = field(default_factory=collections.Counter)
    retried: collections.Counter[str] = field(default_factory=collections.Counter)  # answered after a reconnect
    bad: collections.Counter[str] = field(default_factory=collections.Counter)  # wrong, TEMP or failed
    samples: list[str] = field(default_factory=list)

    def answered(self, kind: str, probe: rs.Probe, reply: str, attempts: int) -> None:
        if attempts > 1:
            self.retried[kind] += 1
        if reply == probe.expect:
            self.right[kind] += 1
        else:
            what = "TEMP" if reply.startswith("TEMP") else "wrong"
            self.problem(kind, what, f"{probe.table} {probe.key!r}: {reply[:200]!r}, expected {probe.expect!r}")

    def problem(self, kind: str, what: str, detail: str) -> None:
        self.bad[f"{what} ({kind})"] += 1
        if len(self.samples) < 10:  # enough to see the pattern
            self.samples.append(f"{kind} {what}: {detail}")

    @property
    def answers(self) -> int:
        return sum(self.right.values()) + sum(self.bad.values())


class Client(Protocol):
    """A Postfix-like client: the reply to one probe, and the attempts it took."""

    async def ask(self, probe: rs.Probe) -> tuple[str, int]: ...

    async def close(self) -> None: ...


async def worker(kind: str, client: Client, *, pick: rs.Picker, tally: Tally, stop: asyncio.Event, seed: int) -> None:
    """One client asking ``pick``'s probes, one at a time, until ``stop``."""
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            probe = pick(rng)
            try:
                reply, attempts = await client.ask(probe)
            except LookupFailedError as exc:
                tally.problem(kind, "failed", f"{probe.table} {probe.key!r}: {exc}")
                continue
            tally.answered(kind, probe, reply, attempts)
    finally:
        await client.close()


# --------------------------------------------------------------------------- postmap


@dataclass
class PostmapRun:
    table: str
    keys: int = 0
    expected: list[str] = field(default_factory=list)  # "key<TAB>value" of the found keys, in order
    output: list[str] = field(default_factory=list)
    stderr: str = ""
    status: int | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)  # its first lookup has begun

    def problems(self) -> list[str]:
        out = []
        if self.status != 0 or "fatal:" in self.stderr:
            out.append(f"postmap {self.table} exited {self.status}: {self.stderr[-600:]!r}")
        if self.output != self.expected:
            diff = [(i, a, b) for i, (a, b) in enumerate(itertools.zip_longest(self.output, self.expected)) if a != b]
            out.append(
                f"postmap {self.table}: {len(self.output)} lines printed, {len(self.expected)} expected; "
                f"first differences (line, printed, expected): {diff[:3]}"
            )
        # dict_tcp.c warns at each attempt it retries ("read TCP map reply from ...: unexpected
        # EOF"); dict_sockmap.c retries silently. Any other warning is a problem.
        out += [f"postmap {self.table}: {line}" for line in self.stderr.splitlines() if _unexpected_warning(line)]
        return out

    @property
    def warnings(self) -> int:
        return self.stderr.count("warning:")


def _unexpected_warning(line: str) -> bool:
    return "warning:" in line and not re.search(r"read TCP map reply from \S+: unexpected EOF", line)


def postmap_keys() -> Iterator[tuple[str, str | None]]:
    """ASCII keys of the mailboxes map and the value postmap prints for each (None: not found)."""
    for n in itertools.count():
        yield (f"vip+p{n}@example.test", "example.test/vip/") if n % 3 else (f"u{n}@nx{n}.test", None)


def has_socket(pid: int) -> bool:
    """Whether the process holds a socket: postmap opens its map's connection at the first lookup."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(fd.readlink().name.startswith("socket:") for fd in fds.iterdir())
    except OSError:  # exited, or an fd closed while we looked
        return False


async def postmap_worker(postfix_dir: Path, run: PostmapRun, stop: asyncio.Event) -> None:
    """``postmap -q - TABLE`` fed one key every POSTMAP_PACE s until ``stop``, then to its end."""
    postmap = shutil.which("postmap") or "/usr/sbin/postmap"
    proc = await asyncio.create_subprocess_exec(
        postmap,
        "-c",
        str(postfix_dir),
        "-q",
        "-",
        run.table,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    out = asyncio.create_task(proc.stdout.read())  # read all along: a full pipe would stall postmap
    err = asyncio.create_task(proc.stderr.read())
    keys = postmap_keys()
    try:
        while not stop.is_set() and proc.returncode is None:
            key, value = next(keys)
            proc.stdin.write(f"{key}\n".encode())
            await proc.stdin.drain()
            run.keys += 1
            if value is not None:
                run.expected.append(f"{key}\t{value}")
            if not run.connected.is_set() and has_socket(proc.pid):
                run.connected.set()
            await asyncio.sleep(POSTMAP_PACE)
    except (BrokenPipeError, ConnectionResetError):
        pass  # postmap died: its status and stderr say why
    finally:
        proc.stdin.close()
        try:
            async with asyncio.timeout(IO_TIMEOUT * 2):
                run.status = await proc.wait()
        except TimeoutError:
            proc.kill()
            run.status = await proc.wait()
        run.output = (await out).decode().splitlines()
        run.stderr = (await err).decode()


# --------------------------------------------------------------------------- the daemon runs


_METRICS_PORT = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


def lookups_answered(run: Service) -> float:
    """mailmapd_lookups_total of a running daemon, from its metrics exporter."""
    ports = [int(m[1]) for line in run.lines if (m := _METRICS_PORT.search(line))]
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/metrics", timeout=IO_TIMEOUT) as response:
        return rs.metric(response.read().decode(), "mailmapd_lookups_total")


@dataclass
class RunFacts:
    pid: int
    lookups: float  # answered before its SIGTERM
    status: int | None = None
    killed: bool = False
    stop_seconds: float = 0.0  # SIGTERM to exit
    gap_seconds: float = 0.0  # SIGTERM to the next run's READY=1: nobody accepts in between


def error_lines(run: Service) -> list[str]:
    """The ERROR, CRITICAL and traceback lines of a run's log."""
    return [line for line in run.lines if line.startswith(("ERROR", "CRITICAL", "Exception")) or "Traceback" in line]


def config_text(url: str, addresses: list[str]) -> str:
    """TTLs 1 s and lookup.timeout 5 s as in the SIGHUP case; a [[listen]] per passed socket."""
    toml = rs.config_toml(
        url,
        listen=(),
        cache={"positive_ttl": 1.0, "negative_ttl": 1.0},
        lookup={"timeout": 5.0},
        server={"shutdown_timeout": 10.0},  # the default; mailmapd.service allows 30 s
    )
    socketmap_inet, tcp_inet, socketmap_unix = addresses
    toml += f'[[listen]]\nprotocol = "socketmap"\naddress = "{socketmap_inet}"\n'
    toml += f'[[listen]]\nprotocol = "tcp_table"\nmap = "mailboxes"\naddress = "{tcp_inet}"\n'
    toml += f'[[listen]]\nprotocol = "socketmap"\naddress = "{socketmap_unix}"\n'
    return toml


async def restart_under_load(work: Path, *, seconds: float, interval: float, clients: int) -> rs.CaseReport:
    report = rs.CaseReport(
        "restart through the socket unit under load (SQLite)",
        f"{clients} socketmap (TCP), {max(1, clients // 4)} socketmap (unix), {max(1, clients // 4)} socketmap "
        f"(new connection per lookup), {clients} tcp_table clients, postmap -q - on socketmap and on tcp; "
        f"each daemon run restarted {interval:g} s after its READY=1, for {seconds:g} s",
    )
    url = rs.sqlite_url(work)
    postfix_dir = work / "postfix"
    postfix_dir.mkdir()
    # myhostname set: without it postmap spends ~2 s at start-up looking up this host's name.
    (postfix_dir / "main.cf").write_text(f"compatibility_level = 3.6\nmyhostname = {HOSTNAME}\n")
    config = work / "mailmapd.toml"
    runs: list[RunFacts] = []
    with SocketUnit(serve_argv(config), ["inet", "inet", "unix"]) as unit:
        config.write_text(config_text(url, unit.addresses))
        socketmap_inet, tcp_inet, socketmap_unix = unit.addresses
        await asyncio.to_thread(unit.start)
        host, port = socketmap_inet.removeprefix("inet:").rsplit(":", 1)
        report.problems += await rs.ask_all((host, int(port)), rs.KNOWN)

        stop = asyncio.Event()
        tally = Tally()
        few = max(1, clients // 4)
        clients_by_kind: list[tuple[str, Client, rs.Picker]] = [
            *(("socketmap", SocketmapClient(socketmap_inet), rs.MIXED) for _ in range(clients)),
            *(("socketmap unix", SocketmapClient(socketmap_unix), rs.MIXED) for _ in range(few)),
            *(("socketmap new-connection", SocketmapClient(socketmap_inet, keep=False), rs.MIXED) for _ in range(few)),
            *(("tcp_table", TcpTableClient(tcp_inet), rs.MAILBOXES) for _ in range(clients)),
        ]
        tasks = [
            worker(kind, client, pick=pick, tally=tally, stop=stop, seed=seed)
            for seed, (kind, client, pick) in enumerate(clients_by_kind)
        ]
        postmaps = [
            PostmapRun(f"socketmap:{socketmap_inet}:mailboxes"),
            PostmapRun(f"tcp:{tcp_inet.removeprefix('inet:')}"),
        ]
        tasks += [postmap_worker(postfix_dir, run, stop) for run in postmaps]
        running = [asyncio.create_task(t) for t in tasks]
        # The first restart must find every postmap connected, not starting up.
        async with asyncio.timeout(IO_TIMEOUT):
            await asyncio.gather(*(pm.connected.wait() for pm in postmaps))
        started = time.monotonic()
        try:
            while True:
                current = unit.service
                assert current is not None
                # Each run serves ``interval`` seconds (from its READY=1), then is restarted.
                await asyncio.sleep(max(0.0, max(current.ready, started) + interval - time.monotonic()))
                if time.monotonic() - started >= seconds:
                    break
                facts = RunFacts(current.pid, await asyncio.to_thread(lookups_answered, current))
                sigterm = time.monotonic()
                new = await asyncio.to_thread(unit.restart)
                facts.status, facts.killed = current.proc.returncode, current.killed
                facts.stop_seconds, facts.gap_seconds = current.exited - sigterm, new.ready - sigterm
                runs.append(facts)
        finally:
            stop.set()
            results = await asyncio.gather(*running, return_exceptions=True)
        report.seconds = time.monotonic() - started
        last = unit.service
        assert last is not None
        facts = RunFacts(last.pid, await asyncio.to_thread(lookups_answered, last))
        facts.status = await asyncio.to_thread(unit.stop)
        facts.killed = last.killed
        runs.append(facts)
        in_place = unit.sockets_in_place()
        daemon_runs = list(unit.runs)

    for result in results:
        if isinstance(result, BaseException):
            raise result
    report.requests = tally.answers + sum(p.keys if p.status == 0 else len(p.output) for p in postmaps)
    report.problems += [f"{n} lookups {what}" for what, n in tally.bad.items()]
    report.problems += tally.samples
    for pm in postmaps:
        report.problems += pm.problems()
    for kind in ("socketmap", "socketmap unix", "socketmap new-connection", "tcp_table"):
        report.check(tally.right[kind] > 0, f"no {kind} lookup was answered")
    report.check(sum(tally.retried.values()) > 0, "no lookup needed a retry: the restarts cut no connection")
    for facts, dr in zip(runs, daemon_runs, strict=True):
        report.check(len(dr.lines_with("(from systemd)")) == 3, f"pid {dr.pid} did not use the 3 passed sockets")
        report.check(facts.lookups > 0, f"pid {dr.pid} answered no lookup")
        report.check(
            facts.status == 0 and not facts.killed, f"pid {dr.pid}: exit status {facts.status}, SIGKILL {facts.killed}"
        )
        report.check("STOPPING=1" in dr.notified, f"pid {dr.pid} sent no STOPPING=1")
        report.problems += [f"pid {dr.pid} logged: {line}" for line in error_lines(dr)[:5]]
    report.check(in_place, "a socket unit's unix socket file disappeared")
    report.check(len(runs) >= 3, f"{len(runs) - 1} restarts; at least 2 wanted")
    report.facts.update(
        {
            "restarts": len(runs) - 1,
            "lookups answered per run (metrics, before SIGTERM)": [int(f.lookups) for f in runs],
            "answers by client": dict(tally.right),
            "lookups answered after a reconnect (the retry)": dict(tally.retried),
            "postmap keys sent / found lines printed / warnings": [
                (p.table.split(":")[0], p.keys, len(p.output), p.warnings) for p in postmaps
            ],
            "SIGTERM to exit, slowest": f"{max(f.stop_seconds for f in runs[:-1]):.2f} s",
            "SIGTERM to the next READY=1, slowest (no one accepts)": f"{max(f.gap_seconds for f in runs[:-1]):.2f} s",
        }
    )
    return report


@pytest.mark.timeout(SECONDS * 3 + 90)
async def test_restart_through_the_socket_unit_under_load(tmp_path: Path) -> None:
    """Restarts through the socket unit while Postfix-like clients ask: not one lookup fails."""
    report = await restart_under_load(tmp_path, seconds=SECONDS, interval=INTERVAL, clients=CLIENTS)
    print(report.render())  # noqa: T201 - the figures, with -s or -rP
    assert not report.problems, report.render()


# --------------------------------------------------------------------------- the stop race, in one process


class _Answers:
    """A resolver that finds every key (mailmapd.server's Resolver protocol)."""

    def cached_value(self, table: str, key: str) -> bytes | None:
        return None

    async def resolve(self, table: str, key: str) -> Found:
        return Found(f"{table}:{key}")


def _accepted_not_made() -> bool:
    """Whether asyncio has accepted a connection and built its transport, and the protocol's
    ``connection_made`` has not run yet.

    asyncio (3.11 to 3.13) accepts in the listening socket's read callback and builds the
    transport in a task running ``BaseSelectorEventLoop._accept_connection2``, which then waits
    for the transport; the transport schedules ``connection_made`` for the next loop iteration.
    """
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        if getattr(coro, "__name__", "") == "_accept_connection2" and getattr(coro, "cr_await", None) is not None:
            return True
    return False


async def test_stop_leaves_no_connection_behind() -> None:
    """A connection accepted by the event loop just before ``Server.stop()`` must not be served after it.

    In the daemon, App.stop() closes the database once Server.stop() returns: a lookup that starts
    on such a connection then fails in the log of the stopping daemon ("Task exception was never
    retrieved ... Connection closed", or aiosqlite's "Event loop is closed"; about 1 run in 26
    under 12 one-connection-per-lookup clients), or could answer TEMP. Here the moment is reached
    deterministically: stop() is called when asyncio has accepted the connection and not yet made
    its protocol. (From Python 3.12.1, Server.wait_closed() also waits for that connection, so
    stop() may not return at all: that fails here too.)
    """
    server = Server(ServerConfig(), _Answers())
    writer: asyncio.StreamWriter | None = None
    try:
        await server.listen(ListenConfig("socketmap", "inet:127.0.0.1:0"), SocketmapHandler())
        host, port = server.sockets[0][1][:2]
        connecting = asyncio.create_task(asyncio.open_connection(host, port))
        for _ in range(1000):  # a step of the loop at a time, from before the connect
            if _accepted_not_made():
                break
            await asyncio.sleep(0)
        else:
            raise RuntimeError("asyncio never accepted the connection: the probe of its internals is out of date")
        try:
            async with asyncio.timeout(IO_TIMEOUT):
                await server.stop()
            stopped = True
        except TimeoutError:
            stopped = False
        reader, writer = await connecting
        writer.write(netstring.encode(b"mailboxes late@example.test"))
        await asyncio.sleep(0.1)  # let the loop run whatever stop() left behind
        late = server.connection_count
        try:
            async with asyncio.timeout(2.0):
                after_stop = await reader.read(4096)  # b"": closed, as every connection must be
        except ConnectionError:
            after_stop = b""
        except TimeoutError:
            after_stop = b"(nothing: the connection was left open)"
        assert (stopped, late, after_stop) == (True, 0, b""), "a connection outlived Server.stop()"
    finally:
        if writer is not None:
            writer.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IO_TIMEOUT):
                await server.stop()

"""The reliability cases, shared by tests/test_reliability.py (short forms, in CI) and
bench/reliability.py (long forms, by hand).

Each case starts mailmapd as a real process (``python -m mailmapd -c CONFIG serve``, through
tests/test_service.py's ``Daemon``) listening on 127.0.0.1 port 0, drives it with asyncio
clients speaking the real protocols, injects its fault (a killed, locked or paused MariaDB, a
dead host, a connection flood, broken clients, hostile keys, a key-space flood, SIGHUP), and
returns a ``CaseReport``: what ran, for how long, how many requests were answered, the figures
it measured, and the problems (every check that failed). A test asserts there are none; the
bench prints the report.

The checks are about answers and resource bounds, never about elapsed time: a wait for the
daemon to recover polls against a generous bound and fails naming what it waited for.

Every answer a client receives is classified against the answer a healthy mailmapd gives for
that key (``Probe.expect``): the right answer, ``TEMP``, or wrong. Many probes carry the key in
their answer (``aliases sales+rN@example.test`` answers ``OK sales+rN@example.test``), so an
answer given to the wrong request shows up as wrong too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import re
import resource
import socket
import sqlite3
import struct
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mailmapd.proto import ProtocolError, netstring, policy, socketmap, tcptable
from mailmapd.schema import SQLITE_TABLES
from tests import tutorial_data
from tests.conftest import load_tutorial_mysql, mysql_url
from tests.support.mariadb import DatabaseAccount, MariaDB
from tests.test_service import Daemon, serve_argv

LOOPBACK = "127.0.0.1"
REPLY_TIMEOUT = 20.0  # seconds a client waits for one reply before counting it as stalled
RECOVERY_BOUND = 15.0  # seconds within which answers must be right again after a fault ends
SETTLE_BOUND = 20.0  # seconds for the daemon to reach a state it must reach (connections closed...)
RSS_BOUND_KIB = 100 * 1024  # the daemon's resident memory may grow by less than this during a case

Address = tuple[str, int]


# --------------------------------------------------------------------------- reports


@dataclass
class CaseReport:
    """What one case ran and found. ``problems`` empty means every check passed."""

    case: str
    setup: str = ""
    seconds: float = 0.0
    requests: int = 0
    facts: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def render(self) -> str:
        lines = [f"case {self.case}: {self.setup}", f"  ran {self.seconds:.1f} s, {self.requests} requests answered"]
        lines.extend(f"  {name}: {value}" for name, value in self.facts.items())
        if self.problems:
            lines.append(f"  PROBLEMS ({len(self.problems)}):")
            lines.extend(f"    - {p}" for p in self.problems)
        else:
            lines.append("  problems: none")
        return "\n".join(lines)


# --------------------------------------------------------------------------- the database


def mysql_account(db: MariaDB, charset: str | None = None) -> DatabaseAccount:
    """The tutorial database on ``db``; ``charset`` converts its four tables (a legacy schema)."""
    account = db.create_database("mail", "mail_admin", "mail_admin_password")
    load_tutorial_mysql(account)
    if charset is not None:
        for table in ("domains", "forwardings", "users", "transport"):
            db.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET {charset}", "mail")
    return account


def sqlite_url(work: Path) -> str:
    """A SQLite file holding the tutorial database (the daemon adds its change tracking)."""
    path = work / "mail.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        for ddl in SQLITE_TABLES:
            conn.execute(ddl)
        for sql, params in tutorial_data.insert_statements("?"):
            conn.execute(sql, params)
    return f"sqlite://{path}"


@contextlib.contextmanager
def users_locked(account: DatabaseAccount) -> Iterator[None]:
    """``LOCK TABLES users WRITE`` held by another client: every query on users waits."""
    conn = account.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("LOCK TABLES users WRITE")
        yield
        with conn.cursor() as cur:
            cur.execute("UNLOCK TABLES")
    finally:
        conn.close()


def threads_connected(db: MariaDB) -> int:
    return int(db.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'").split()[1])


# --------------------------------------------------------------------------- the daemon


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def config_toml(
    url: str,
    *,
    listen: Sequence[str] = ("socketmap",),
    database: dict[str, object] | None = None,
    lookup: dict[str, object] | None = None,
    cache: dict[str, object] | None = None,
    server: dict[str, object] | None = None,
    mailbox_base: Path | None = None,
) -> str:
    """A config: the given listeners on loopback port 0 (tcp_table serves mailboxes), the metrics
    exporter on port 0, no control socket, no change polling; the quota policy's mailboxes under
    ``mailbox_base``."""
    sections: dict[str, dict[str, object]] = {
        "database": {"url": url, **(database or {})},
        "lookup": dict(lookup or {}),
        "cache": {"poll_interval": 0.0, **(cache or {})},
        "metrics": {"address": f"inet:{LOOPBACK}:0"},
        "server": {"control_socket": "", "shutdown_timeout": 2.0, **(server or {})},
    }
    if mailbox_base is not None:
        sections["quota"] = {"mailbox_base": str(mailbox_base)}
    lines = ['log_level = "info"']
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    # Port 0 twice would be the same address to the config: each listener gets its own
    # loopback address (127.0.0.1, 127.0.0.2, ...).
    for i, protocol in enumerate(listen, 1):
        lines += ["[[listen]]", f'protocol = "{protocol}"', f'address = "inet:127.0.0.{i}:0"']
        if protocol == "tcp_table":
            lines.append('map = "mailboxes"')
    return "\n".join(lines) + "\n"


_LISTENING = re.compile(r"listening for (\S+) on inet:(127\.0\.0\.\d+):(\d+)")
_METRICS = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels`` (0 when there are none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


@dataclass
class Mailmapd:
    """A running daemon: its process, the addresses it listens on, its metrics and its log."""

    daemon: Daemon
    listeners: dict[str, Address]
    metrics_port: int

    @property
    def socketmap(self) -> Address:
        return self.listeners["socketmap"]

    @property
    def pid(self) -> int:
        return self.daemon.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def scrape(self) -> str:
        url = f"http://{LOOPBACK}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=REPLY_TIMEOUT) as response:
            return str(response.read().decode())

    async def metrics(self) -> str:
        return await asyncio.to_thread(self.scrape)

    async def reload(self) -> None:
        """SIGHUP, then wait for the daemon to log that the new configuration is in use."""
        await asyncio.to_thread(self.daemon.reload)

    def lines_with(self, text: str, since: int = 0) -> list[str]:
        return [line for line in self.daemon.lines[since:] if text in line]

    def log_problems(self) -> list[str]:
        """ERROR lines and tracebacks the daemon logged: each one is a problem."""
        bad = [line for line in self.daemon.lines if line.startswith(("ERROR", "CRITICAL")) or "Traceback" in line]
        return [f"the daemon logged: {line}" for line in bad[:10]]


@contextlib.asynccontextmanager
async def running_mailmapd(work: Path, toml: str) -> AsyncIterator[Mailmapd]:
    """mailmapd as a child process with ``toml`` as its config file, until the block ends."""
    config = work / "mailmapd.toml"
    config.write_text(toml)
    daemon = Daemon(serve_argv(config))
    try:
        await asyncio.to_thread(daemon.wait_ready)
        listeners = {m[1]: (m[2], int(m[3])) for line in daemon.lines if (m := _LISTENING.search(line))}
        ports = [int(m[1]) for line in daemon.lines if (m := _METRICS.search(line))]
        yield Mailmapd(daemon, listeners, ports[0])
    finally:
        await asyncio.to_thread(daemon.close)


def raise_nofile(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``wanted`` (up to the hard limit).

    A daemon started afterwards inherits it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


# --------------------------------------------------------------------------- clients


class ClosedError(Exception):
    """The daemon closed (or reset) the connection instead of answering."""

    def __init__(self, partial: bytes = b"") -> None:
        super().__init__(f"connection closed by mailmapd after {len(partial)} bytes of a reply")
        self.partial = partial


async def read_netstring(reader: asyncio.StreamReader) -> bytes:
    """One netstring's payload; ClosedError if the daemon closes first, ValueError if malformed."""
    try:
        head = await reader.readuntil(b":")
        digits = head[:-1]
        if not digits.isdigit() or len(digits) > len(str(netstring.MAX_LEN_DEFAULT)):
            raise ValueError(f"bad netstring length from mailmapd: {head[:20]!r}")
        body = await reader.readexactly(int(digits) + 1)
    except asyncio.IncompleteReadError as exc:
        raise ClosedError(exc.partial) from exc
    except ConnectionError as exc:
        raise ClosedError from exc
    if body[-1:] != b",":
        raise ValueError(f"netstring from mailmapd does not end with ',': {body[-20:]!r}")
    return body[:-1]


class Conn:
    """One client connection to a mailmapd listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, address: Address) -> Conn:
        reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    async def socketmap(self, table: str, key: bytes | str) -> str:
        raw = key.encode() if isinstance(key, str) else key
        self.writer.write(netstring.encode(table.encode() + b" " + raw))
        return (await read_netstring(self.reader)).decode("utf-8", "replace")

    async def tcp_get(self, key: bytes) -> str:
        self.writer.write(b"get " + tcptable.hex_quote(key) + b"\n")
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise ClosedError(exc.partial) from exc
        except ConnectionError as exc:
            raise ClosedError from exc
        return line.decode("utf-8", "replace")

    async def lookup(self, probe: Probe, *, tcp: bool = False) -> str:
        """Ask ``probe`` over socketmap, or over tcp_table (a mailboxes listener) with the answer
        translated to socketmap's form (200 -> OK, 500 -> NOTFOUND, 400 -> TEMP)."""
        if not tcp:
            return await self.socketmap(probe.table, probe.key)
        line = (await self.tcp_get(probe.key.encode())).removesuffix("\n")
        status, _, text = line.partition(" ")
        if status == "500":
            return "NOTFOUND "
        try:
            value = tcptable.hex_unquote(text.encode()).decode("utf-8", "replace")
        except ProtocolError:
            return f"tcp_table reply {line[:100]!r}"
        return {"200": f"OK {value}", "400": f"TEMP {value}"}.get(status, f"tcp_table reply {line[:100]!r}")

    async def until_closed(self) -> bytes:
        """Everything the daemon sends until it closes the connection."""
        try:
            return await self.reader.read()
        except ConnectionError:
            return b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --------------------------------------------------------------------------- probes


@dataclass(frozen=True, slots=True)
class Probe:
    """A lookup and the socketmap reply a healthy mailmapd gives for it.

    ``kind`` groups probes in the tallies: ``known`` (a fixed set, cached in most cases), or the
    table the lookup reads (``users``, ``domains``, ``transport``).
    """

    table: str
    key: str
    expect: str
    kind: str


# Fixed keys of the tutorial data (tests/tutorial_data.py) and their answers.
KNOWN: tuple[Probe, ...] = (
    Probe("mailboxes", "sales@example.test", "OK example.test/sales/", "known"),
    Probe("mailboxes", "josé@example.test", "OK example.test/josé/", "known"),
    Probe("mailboxes", "nobody@unknown.test", "NOTFOUND ", "known"),
    Probe("domains", "example.test", "OK example.test", "known"),
    Probe("quota", "sales@example.test", "OK 10485760", "known"),
    Probe("transports", "vip@example.test", "OK lmtp:unix:private/dovecot-lmtp", "known"),
    Probe("aliases", "team@example.test", "OK sales@example.test,josé@example.test,friend@elsewhere.test", "known"),
    Probe("aliases", "someone@catchall.test", "OK sales@example.test", "known"),
)


def known(n: int) -> Probe:
    return KNOWN[n % len(KNOWN)]


def alias_ext(n: int) -> Probe:
    """Four queries on forwardings and users; the answer carries the key's extension."""
    return Probe("aliases", f"sales+r{n}@example.test", f"OK sales+r{n}@example.test", "users")


def mailbox_ext(n: int) -> Probe:
    return Probe("mailboxes", f"vip+r{n}@example.test", "OK example.test/vip/", "users")


def unknown_mailbox(n: int) -> Probe:
    return Probe("mailboxes", f"u{n}@nx{n}.test", "NOTFOUND ", "users")


def unknown_domain(n: int) -> Probe:
    return Probe("domains", f"nx{n}.test", "NOTFOUND ", "domains")


def subdomain_transport(n: int) -> Probe:
    return Probe("transports", f"x{n}@h{n}.sub.example.test", "OK smtp:[127.0.0.1]:2525", "transport")


Family = Callable[[int], Probe]
Picker = Callable[[random.Random], Probe]


def picker(*families: tuple[float, Family], keyspace: int = 100_000) -> Picker:
    """Probes drawn from weighted families, each with n in range(keyspace)."""
    funcs = [f for _, f in families]
    weights = [w for w, _ in families]

    def pick(rng: random.Random) -> Probe:
        return rng.choices(funcs, weights)[0](rng.randrange(keyspace))

    return pick


MIXED = picker(
    (2, known), (2, alias_ext), (1, mailbox_ext), (1, unknown_mailbox), (1, unknown_domain), (1, subdomain_transport)
)

# For tcp_table clients: the listener serves the mailboxes map only.
_KNOWN_MAILBOXES = [p for p in KNOWN if p.table == "mailboxes"]
MAILBOXES = picker((1, lambda n: _KNOWN_MAILBOXES[n % len(_KNOWN_MAILBOXES)]), (2, mailbox_ext), (1, unknown_mailbox))

_fresh = iter(range(10**9, 2 * 10**9))


def fresh_probes() -> list[Probe]:
    """One never-asked key of each family: their answers must come from the database."""
    n = next(_fresh)
    return [alias_ext(n), mailbox_ext(n), unknown_mailbox(n), unknown_domain(n), subdomain_transport(n)]


async def ask_all(address: Address, probes: Sequence[Probe]) -> list[str]:
    """Ask each probe on one connection; return a description of every answer that differs."""
    conn = await Conn.open(address)
    try:
        out = []
        for p in probes:
            reply = await conn.socketmap(p.table, p.key)
            if reply != p.expect:
                out.append(f"{p.table} {p.key!r}: {reply!r}, expected {p.expect!r}")
        return out
    finally:
        await conn.close()


async def until_correct(address: Address, bound: float = RECOVERY_BOUND) -> tuple[float | None, list[str]]:
    """Ask fresh keys until every answer is right; (seconds it took or None, wrong answers seen)."""
    started = time.monotonic()
    wrong: list[str] = []
    while time.monotonic() - started < bound:
        try:
            bad = await ask_all(address, fresh_probes())
        except (ClosedError, OSError) as exc:
            bad = [f"connection failed: {exc}"]
        if not bad:
            return time.monotonic() - started, wrong
        wrong.extend(b for b in bad if "TEMP" not in b and "connection failed" not in b)
        await asyncio.sleep(0.1)
    return None, wrong


# --------------------------------------------------------------------------- load


@dataclass
class Tally:
    """Answers received by the load clients, classified against ``Probe.expect``."""

    answers: int = 0
    right: collections.Counter[str] = field(default_factory=collections.Counter)
    temp: collections.Counter[str] = field(default_factory=collections.Counter)
    temp_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    wrong: int = 0
    wrong_samples: list[str] = field(default_factory=list)
    closed: int = 0
    stalled: int = 0
    connect_errors: int = 0
    slowest: float = 0.0  # seconds, the slowest answer (a figure, never asserted)

    def add(self, probe: Probe, reply: str, seconds: float = 0.0) -> None:
        self.answers += 1
        self.slowest = max(self.slowest, seconds)
        if reply == probe.expect:
            self.right[probe.kind] += 1
        elif reply.startswith("TEMP "):
            self.temp[probe.kind] += 1
            self.temp_reasons[re.sub(r"\d+(\.\d+)?s", "Ns", reply[5:])] += 1
        else:
            self.wrong += 1
            if len(self.wrong_samples) < 10:
                self.wrong_samples.append(f"{probe.table} {probe.key!r}: {reply[:200]!r}, expected {probe.expect!r}")

    def copy(self) -> Tally:
        return Tally(
            self.answers,
            self.right.copy(),
            self.temp.copy(),
            self.temp_reasons.copy(),
            self.wrong,
            list(self.wrong_samples),
            self.closed,
            self.stalled,
            self.connect_errors,
            self.slowest,
        )

    @property
    def temps(self) -> int:
        return sum(self.temp.values())

    def failures(self, *, temp_allowed: bool) -> list[str]:
        """The problems in these answers: wrong ones, connections lost, stalls, TEMP if not allowed."""
        out = []
        if self.wrong:
            out.append(f"{self.wrong} wrong answers (neither the right one nor TEMP), e.g. {self.wrong_samples}")
        if self.closed:
            out.append(f"mailmapd closed {self.closed} client connections instead of answering")
        if self.stalled:
            out.append(f"{self.stalled} requests got no reply within {REPLY_TIMEOUT:g}s")
        if self.connect_errors:
            out.append(f"{self.connect_errors} connects to mailmapd failed")
        if not temp_allowed and self.temps:
            out.append(f"{self.temps} TEMP answers ({dict(self.temp)}; {dict(self.temp_reasons)})")
        return out


async def _client(
    address: Address, pick: Picker, tally: Tally, stop: asyncio.Event, seed: int, *, tcp: bool = False
) -> None:
    """One Postfix-like client: one request at a time on one connection, reconnecting if closed."""
    rng = random.Random(seed)
    conn: Conn | None = None
    try:
        while not stop.is_set():
            if conn is None:
                try:
                    conn = await Conn.open(address)
                except OSError:
                    tally.connect_errors += 1
                    await asyncio.sleep(0.1)
                    continue
            probe = pick(rng)
            asked = time.monotonic()
            try:
                async with asyncio.timeout(REPLY_TIMEOUT):
                    reply = await conn.lookup(probe, tcp=tcp)
            except (ClosedError, OSError, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):
                    tally.stalled += 1
                else:
                    tally.closed += 1
                await conn.close()
                conn = None
                continue
            tally.add(probe, reply, time.monotonic() - asked)
    finally:
        if conn is not None:
            await conn.close()


@contextlib.asynccontextmanager
async def load(
    address: Address, pick: Picker, connections: int, *, tcp_table: Address | None = None, seed: int = 1
) -> AsyncIterator[Tally]:
    """``connections`` socketmap clients asking in a loop until the block ends, and as many tcp_table
    clients asking MAILBOXES probes if ``tcp_table`` (a mailboxes listener) is given; yields
    their live tally."""
    stop = asyncio.Event()
    tally = Tally()
    tasks = [asyncio.create_task(_client(address, pick, tally, stop, seed * 100_003 + i)) for i in range(connections)]
    if tcp_table is not None:
        tasks += [
            asyncio.create_task(_client(tcp_table, MAILBOXES, tally, stop, seed * 200_003 + i, tcp=True))
            for i in range(connections)
        ]
    try:
        yield tally
    except BaseException:
        for t in tasks:
            t.cancel()
        raise
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in tasks:
        if not t.cancelled() and (exc := t.exception()) is not None:
            raise exc


@dataclass
class Peaks:
    """Maxima of the daemon's gauges and memory, sampled while a case runs."""

    in_flight: float = 0.0
    connections_open: float = 0.0
    rss_kib: int = 0
    samples: int = 0


@contextlib.asynccontextmanager
async def watching(mm: Mailmapd, interval: float = 0.2) -> AsyncIterator[Peaks]:
    """Sample mailmapd_requests_in_flight, mailmapd_connections_open and VmRSS until the block ends."""
    peaks = Peaks()
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            text = await mm.metrics()
            peaks.in_flight = max(peaks.in_flight, metric(text, "mailmapd_requests_in_flight"))
            peaks.connections_open = max(peaks.connections_open, metric(text, "mailmapd_connections_open"))
            peaks.rss_kib = max(peaks.rss_kib, mm.rss_kib())
            peaks.samples += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    task = asyncio.create_task(sample())
    try:
        yield peaks
    finally:
        stop.set()
        await task


async def gauge_settles(mm: Mailmapd, name: str, target: float, bound: float = SETTLE_BOUND) -> float:
    """Poll a gauge until it equals ``target``; return its last value."""
    deadline = time.monotonic() + bound
    value = metric(await mm.metrics(), name)
    while value != target and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        value = metric(await mm.metrics(), name)
    return value


def _finish(report: CaseReport, mm: Mailmapd, tally: Tally, started: float) -> None:
    report.seconds = time.monotonic() - started
    report.requests += tally.answers
    report.problems.extend(mm.log_problems())
    if mm.daemon.proc.poll() is not None:
        report.problems.append(f"mailmapd exited with status {mm.daemon.proc.returncode}")


# --------------------------------------------------------------------------- 1. database killed


async def case_db_killed(db: MariaDB, work: Path, *, seconds: float, connections: int, cycles: int = 1) -> CaseReport:
    """kill -9 MariaDB under load, start it again; ``cycles`` times."""
    account = mysql_account(db)
    report = CaseReport(
        "database killed",
        f"MariaDB, {connections} socketmap and {connections} tcp_table clients, {cycles} kill -9/start cycles, "
        "lookup.timeout 2 s, TTLs 1 s, max_stale 60 s",
    )
    toml = config_toml(
        mysql_url(account),
        listen=("socketmap", "tcp_table"),
        database={"connect_timeout": 1.0},
        lookup={"timeout": 2.0},
        cache={"positive_ttl": 1.0, "negative_ttl": 1.0, "max_stale": 60.0},
    )
    phase = seconds / (2 * cycles + 1)
    recoveries: list[float] = []
    async with running_mailmapd(work, toml) as mm:
        report.problems += await ask_all(mm.socketmap, KNOWN)
        started = time.monotonic()
        async with load(mm.socketmap, MIXED, connections, tcp_table=mm.listeners["tcp_table"]) as tally:
            for _ in range(cycles):
                await asyncio.sleep(phase)
                before = tally.copy()
                await asyncio.to_thread(db.kill)
                await asyncio.sleep(phase / 2)
                await asyncio.to_thread(db.start)
                took, wrong = await until_correct(mm.socketmap)
                report.check(took is not None, f"answers not right again within {RECOVERY_BOUND:g}s of the restart")
                report.check(not wrong, f"wrong answers while recovering: {wrong[:5]}")
                recoveries.append(took or -1.0)
                report.check(
                    tally.temps > before.temps, "no TEMP answer while MariaDB was down: the fault was not seen"
                )
            await asyncio.sleep(phase)
        text = await mm.metrics()
        _finish(report, mm, tally, started)
    report.problems += tally.failures(temp_allowed=True)
    report.facts.update(
        {
            "right answers": sum(tally.right.values()),
            "TEMP answers": tally.temps,
            "TEMP reasons": dict(tally.temp_reasons),
            "stale answers served (mailmapd_cache_stale_served_total)": metric(
                text, "mailmapd_cache_stale_served_total"
            ),
            "seconds from MariaDB answering to all answers right": [round(r, 2) for r in recoveries],
        }
    )
    return report


# --------------------------------------------------------------------------- 2. database slow


async def case_db_slow(
    db: MariaDB,
    work: Path,
    *,
    mode: str,
    seconds: float,
    connections: int,
    stall: float | None = None,
    other_tables_must_answer: bool = False,
) -> CaseReport:
    """Queries stalled by ``LOCK TABLES users WRITE`` (mode "lock") or SIGSTOP (mode "pause").

    With ``other_tables_must_answer``, a TEMP for a key of a table that is not locked (domains,
    transport) during the lock is a problem too."""
    account = mysql_account(db)
    stall = stall if stall is not None else seconds / 2
    report = CaseReport(
        f"database slow ({mode})",
        f"MariaDB {'with users locked' if mode == 'lock' else 'paused (SIGSTOP)'} for {stall:g} s, "
        f"{connections} socketmap clients, lookup.timeout 1 s, TTLs 3600 s, pool_size 10",
    )
    toml = config_toml(
        mysql_url(account),
        database={"connect_timeout": 1.0, "pool_size": 10},
        lookup={"timeout": 1.0},
        cache={"positive_ttl": 3600.0, "negative_ttl": 3600.0},
    )
    pick = picker((3, known), (3, alias_ext), (1, mailbox_ext), (2, unknown_domain), (1, subdomain_transport))
    db_threads = 0
    async with running_mailmapd(work, toml) as mm:
        report.problems += await ask_all(mm.socketmap, KNOWN)  # now cached for an hour
        rss_before = mm.rss_kib()
        started = time.monotonic()
        async with watching(mm) as peaks, load(mm.socketmap, pick, connections) as tally:
            await asyncio.sleep((seconds - stall) / 2)
            before = tally.copy()
            stall_started = time.monotonic()
            if mode == "lock":
                with users_locked(account):
                    while time.monotonic() - stall_started < stall:
                        await asyncio.sleep(min(1.0, stall))
                        db_threads = max(db_threads, await asyncio.to_thread(threads_connected, db))
            else:
                await asyncio.to_thread(db.pause)
                try:
                    await asyncio.sleep(stall)
                finally:
                    await asyncio.to_thread(db.resume)
            during = tally.copy()
            took, wrong = await until_correct(mm.socketmap)
            await asyncio.sleep((seconds - stall) / 2)
        in_flight_after = await gauge_settles(mm, "mailmapd_requests_in_flight", 0.0)
        _finish(report, mm, tally, started)
    report.problems += tally.failures(temp_allowed=True)
    stalled_temps = during.temp["users"] - before.temp["users"]
    other_temps = {k: during.temp[k] - before.temp[k] for k in ("domains", "transport")}
    report.check(stalled_temps > 0, "no TEMP for uncached keys of the stalled table: the stall was not seen")
    report.check(
        any(r.startswith("database did not answer within") for r in tally.temp_reasons),
        f"no TEMP at the deadline ('database did not answer within'): {dict(tally.temp_reasons)}",
    )
    report.check(tally.temp["known"] == 0, f"{tally.temp['known']} TEMP answers for cached keys")
    if other_tables_must_answer:
        report.check(
            not any(other_temps.values()),
            f"TEMP for uncached keys of tables that were not locked: {other_temps} ({dict(tally.temp_reasons)})",
        )
    # Each load client has one request out at a time, and until_correct's prober one more: a
    # search per waiting request, no more (a search is shared, never repeated, while it runs).
    askers = connections + 1
    report.check(
        peaks.in_flight <= askers,
        f"mailmapd_requests_in_flight reached {peaks.in_flight:g}, more than the {askers} requests that can wait "
        f"({connections} load clients and the recovery prober)",
    )
    report.check(in_flight_after == 0, f"mailmapd_requests_in_flight still {in_flight_after:g} after the stall")
    report.check(took is not None, f"answers not right again within {RECOVERY_BOUND:g}s of the end of the stall")
    report.check(not wrong, f"wrong answers after the stall: {wrong[:5]}")
    report.facts.update(
        {
            "answers during the stall": during.answers - before.answers,
            "cached answers during the stall (right / TEMP)": (
                during.right["known"] - before.right["known"],
                during.temp["known"] - before.temp["known"],
            ),
            "TEMP for uncached keys of the stalled table": stalled_temps,
            "TEMP for uncached keys of other tables (domains, transport)": other_temps,
            "TEMP reasons": dict(tally.temp_reasons),
            "peak mailmapd_requests_in_flight": peaks.in_flight,
            "daemon RSS before / peak (MiB)": (round(rss_before / 1024, 1), round(peaks.rss_kib / 1024, 1)),
            "seconds from the end of the stall to all answers right": round(took, 2) if took is not None else None,
        }
    )
    if mode == "lock":
        report.facts["peak MariaDB Threads_connected during the lock"] = db_threads
    return report


# --------------------------------------------------------------------------- 3. one host of several down


async def case_failover(
    db: MariaDB, work: Path, *, mode: str, seconds: float, connections: int, retry_interval: float = 1.0
) -> CaseReport:
    """The first host of the URL refuses connections (mode "refused") or accepts and never answers
    (mode "hung"); lookups must fail over with no TEMP at all."""
    account = mysql_account(db)
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never greets: a host that accepts and hangs

    hung = await asyncio.start_server(silent, LOOPBACK, 0)
    if mode == "hung":
        dead_port = int(hung.sockets[0].getsockname()[1])
    else:
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind((LOOPBACK, 0))
            dead_port = int(probe.getsockname()[1])
    url = (
        f"mysql://{account.user}:{account.password}@{LOOPBACK}:{dead_port},"
        f"{account.host}:{account.port}/{account.database}"
    )
    report = CaseReport(
        f"one host of two down ({mode})",
        f"MariaDB behind a first host that {'refuses' if mode == 'refused' else 'accepts and never answers'}, "
        f"{connections} socketmap clients, connect_timeout 0.3 s, lookup.timeout 2 s, "
        f"retry_interval {retry_interval:g} s, TTLs 1 s",
    )
    toml = config_toml(
        url,
        database={"connect_timeout": 0.3, "retry_interval": retry_interval},
        lookup={"timeout": 2.0},
        cache={"positive_ttl": 1.0, "negative_ttl": 1.0, "max_stale": 0.0},
    )
    try:
        async with running_mailmapd(work, toml) as mm:
            started = time.monotonic()
            async with load(mm.socketmap, MIXED, connections) as tally:
                await asyncio.sleep(seconds)
            _finish(report, mm, tally, started)
            skipped = len(mm.lines_with(f"{LOOPBACK}:{dead_port}: unreachable"))
    finally:
        for w in held:
            w.close()
        hung.close()
        await hung.wait_closed()
    report.problems += tally.failures(temp_allowed=False)
    report.check(skipped > 0, "the dead host was never tried: the fault was not seen")
    report.facts.update(
        {"times the dead host was tried and skipped": skipped, "connections the hung host accepted": len(held)}
    )
    return report


# --------------------------------------------------------------------------- 4. connection flood


@dataclass
class FloodResult:
    admitted: int = 0
    refused: int = 0
    connect_failed: int = 0
    bad: list[str] = field(default_factory=list)


async def _flood(address: Address, count: int, release: asyncio.Event) -> tuple[FloodResult, list[asyncio.Task[None]]]:
    """Open ``count`` connections at once, each asking one lookup; the admitted ones stay open
    until ``release``. Returns once every connection has its answer or was closed."""
    result = FloodResult()
    answered = asyncio.Event()
    done = 0

    async def one() -> None:
        nonlocal done
        conn: Conn | None = None
        admitted = False
        try:
            conn = await Conn.open(address)
            reply = await asyncio.wait_for(conn.socketmap("mailboxes", "sales@example.test"), REPLY_TIMEOUT)
        except ClosedError as exc:
            result.refused += 1
            if exc.partial:
                result.bad.append(f"a refused connection got {exc.partial!r} before being closed")
        except (OSError, TimeoutError) as exc:
            result.connect_failed += 1
            if len(result.bad) < 5:
                result.bad.append(f"connect or first reply failed: {exc!r}")
        else:
            admitted = True
            result.admitted += 1
            if reply != "OK example.test/sales/":
                result.bad.append(f"an admitted connection got {reply!r}")
        finally:
            done += 1
            if done == count:
                answered.set()
        try:
            if admitted:
                await release.wait()
        finally:
            if conn is not None:
                await conn.close()

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await answered.wait()
    return result, tasks


async def case_flood(
    work: Path, *, seconds: float, flood: int = 2000, max_connections: int = 500, connections: int = 10
) -> CaseReport:
    """``flood`` concurrent connections against max_connections, repeated for ``seconds``, while
    ``connections`` clients keep asking."""
    raise_nofile(flood + max_connections + 1000)
    report = CaseReport(
        "connection flood",
        f"SQLite, {flood} concurrent connections per round against server.max_connections = {max_connections}, "
        f"{connections} socketmap clients asking throughout, idle_timeout 2 s",
    )
    toml = config_toml(
        sqlite_url(work),
        server={"max_connections": max_connections, "idle_timeout": 2.0},
        cache={"positive_ttl": 1.0, "negative_ttl": 1.0},
    )
    rounds: list[FloodResult] = []
    rss_after_round: list[int] = []
    async with running_mailmapd(work, toml) as mm:
        report.problems += await ask_all(mm.socketmap, KNOWN)
        rss_before = mm.rss_kib()
        refused_before = metric(await mm.metrics(), "mailmapd_connections_refused_total")
        started = time.monotonic()
        async with watching(mm) as peaks, load(mm.socketmap, MIXED, connections) as tally:
            await asyncio.sleep(0.2)
            while not rounds or time.monotonic() - started < seconds:
                release = asyncio.Event()
                result, tasks = await _flood(mm.socketmap, flood, release)
                rss_after_round.append(mm.rss_kib())
                release.set()
                await asyncio.gather(*tasks)
                rounds.append(result)
                report.requests += result.admitted
                # Every flood connection is closed again: only the load's remain.
                open_now = await gauge_settles(mm, "mailmapd_connections_open", float(connections))
                report.check(open_now == connections, f"{open_now:g} connections still open after a flood round")
            # Idle connections are closed by the daemon after idle_timeout.
            idle = await Conn.open(mm.socketmap)
            idle_closed = await asyncio.wait_for(idle.until_closed(), 2.0 + SETTLE_BOUND) == b""
            await idle.close()
        text = await mm.metrics()
        refused_metric = metric(text, "mailmapd_connections_refused_total") - refused_before
        _finish(report, mm, tally, started)
        limit_warnings = len(mm.lines_with("connection limit server.max_connections"))
    report.problems += tally.failures(temp_allowed=False)
    admitted = sum(r.admitted for r in rounds)
    refused = sum(r.refused for r in rounds)
    for r in rounds:
        report.problems += r.bad[:5]
        report.check(r.connect_failed == 0, f"{r.connect_failed} flood connections failed to connect or to get a reply")
        report.check(
            r.admitted >= max_connections - connections,
            f"only {r.admitted} flood connections admitted, {max_connections - connections} free slots",
        )
    report.check(refused > 0, "no connection was refused: the limit was not reached")
    report.check(
        refused_metric == refused, f"mailmapd_connections_refused_total grew by {refused_metric:g}, {refused} seen"
    )
    report.check(
        peaks.connections_open <= max_connections,
        f"mailmapd_connections_open reached {peaks.connections_open:g}, over {max_connections}",
    )
    growth = max(peaks.rss_kib, *rss_after_round) - rss_before
    report.check(growth < RSS_BOUND_KIB, f"the daemon's RSS grew by {growth / 1024:.1f} MiB")
    report.check(idle_closed, "an idle connection was not closed after server.idle_timeout")
    report.facts.update(
        {
            "flood rounds": len(rounds),
            "flood connections admitted / refused": (admitted, refused),
            "mailmapd_connections_refused_total": refused_metric,
            "limit WARNING lines": limit_warnings,
            "lookups by the steady clients (right / TEMP)": (sum(tally.right.values()), tally.temps),
            "daemon RSS before, then after rounds 1, 2, ... (at most 12 of them) (MiB)": (
                round(rss_before / 1024, 1),
                [
                    round(rss_after_round[k] / 1024, 1)
                    for k in sorted(
                        {*range(0, len(rss_after_round), max(1, len(rss_after_round) // 10)), len(rss_after_round) - 1}
                    )
                ],
            ),
        }
    )
    return report


# --------------------------------------------------------------------------- 5. slow and broken clients


def _send_until_blocked(socks: Sequence[socket.socket], request: bytes, cap: int) -> list[int]:
    """Send ``request`` over and over on each non-blocking socket, never reading, until the daemon
    stops reading them all (no send made progress for 0.5 s) or a socket sent ``cap`` bytes.
    Returns the whole requests each socket sent."""
    data = request * 4096
    sent = [0] * len(socks)
    last_progress = time.monotonic()
    while time.monotonic() - last_progress < 0.5 and max(sent) < cap:
        progressed = False
        for i, sock in enumerate(socks):
            with contextlib.suppress(BlockingIOError):
                sent[i] += sock.send(data[sent[i] % len(data) :])  # continue where the last send stopped
                progressed = True
        if progressed:
            last_progress = time.monotonic()
        else:
            time.sleep(0.01)
    return [n // len(request) for n in sent]  # a request cut short at the end is never answered


def _read_replies(sock: socket.socket, expected: bytes, count: int) -> tuple[int, str | None]:
    """Read up to ``count`` replies, each must be ``expected``; (replies read, problem or None)."""
    sock.setblocking(True)
    sock.settimeout(REPLY_TIMEOUT)
    pending = b""
    replies = 0
    while replies < count:
        try:
            chunk = sock.recv(1 << 20)
        except (TimeoutError, ConnectionError):
            break
        if not chunk:
            break
        pending += chunk
        whole = len(pending) // len(expected)
        if pending[: whole * len(expected)] != expected * whole:
            return replies, "a reply differs from the expected one (order or content)"
        replies += whole
        pending = pending[whole * len(expected) :]
    return replies, None


CLIENT_PARTS = ("half-sent", "never-reads", "over-limit", "reset")


async def case_clients(
    work: Path, *, part: str, seconds: float, connections: int = 4, non_readers: int = 1
) -> CaseReport:
    """One kind of broken client (``part``), repeated for ``seconds`` while ``connections`` steady
    clients keep asking: it must cost only its own connection."""
    server: dict[str, object] = {"idle_timeout": 1.0} if part == "half-sent" else {}
    report = CaseReport(
        f"broken clients: {part}",
        f"SQLite, socketmap + tcp_table + policy, {connections} steady socketmap clients, lookup.timeout 1 s"
        + (", idle_timeout 1 s" if part == "half-sent" else "")
        + (f", {non_readers} clients that never read" if part == "never-reads" else ""),
    )
    toml = config_toml(
        sqlite_url(work),
        listen=("socketmap", "tcp_table", "policy"),
        mailbox_base=work,
        server=server,
        lookup={"timeout": 1.0},
        cache={"positive_ttl": 3600.0, "negative_ttl": 1.0},
    )
    figures: collections.Counter[str] = collections.Counter()
    async with running_mailmapd(work, toml) as mm:
        report.problems += await ask_all(mm.socketmap, KNOWN)
        sm = mm.socketmap
        rss_before = mm.rss_kib()
        malformed_before = metric(await mm.metrics(), "mailmapd_malformed_requests_total")
        started = time.monotonic()
        async with watching(mm) as peaks, load(sm, MIXED, connections) as tally:
            while not figures["rounds"] or time.monotonic() - started < seconds:
                figures["rounds"] += 1
                if part == "half-sent":
                    await _half_sent(sm, report, figures)
                elif part == "never-reads":
                    await _never_reads(mm, non_readers, report, figures)
                elif part == "over-limit":
                    await _over_limit(mm, report, figures)
                else:
                    await asyncio.to_thread(_resets, sm, figures["rounds"], figures)
        report.problems += tally.failures(temp_allowed=False)
        open_now = await gauge_settles(mm, "mailmapd_connections_open", 0.0)
        report.check(open_now == 0, f"{open_now:g} connections still open after every client left")
        malformed = metric(await mm.metrics(), "mailmapd_malformed_requests_total") - malformed_before
        warnings = len(mm.lines_with("malformed request from"))
        report.check(
            malformed == figures["over-limit requests"],
            f"mailmapd_malformed_requests_total grew by {malformed:g}, {figures['over-limit requests']} were sent",
        )
        report.check(
            warnings == figures["over-limit requests"],
            f"{warnings} malformed-request WARNINGs, {figures['over-limit requests']} expected",
        )
        report.requests += figures["non-reader replies read back"]
        _finish(report, mm, tally, started)
    growth = peaks.rss_kib - rss_before
    report.check(growth < RSS_BOUND_KIB, f"the daemon's RSS grew by {growth / 1024:.1f} MiB")
    report.facts.update(dict(figures))
    report.facts["steady clients: right / TEMP / closed"] = (sum(tally.right.values()), tally.temps, tally.closed)
    report.facts["steady clients: slowest answer (s)"] = round(tally.slowest, 3)
    report.facts["daemon RSS before / peak (MiB)"] = (round(rss_before / 1024, 1), round(peaks.rss_kib / 1024, 1))
    return report


async def _half_sent(address: Address, report: CaseReport, figures: collections.Counter[str]) -> None:
    """Half a netstring, then silence: closed by the idle timeout, with no reply."""
    conns = [await Conn.open(address) for _ in range(10)]
    for conn in conns:
        conn.writer.write(b"40:mailboxes sal")
    for conn in conns:
        got = await asyncio.wait_for(conn.until_closed(), 1.0 + SETTLE_BOUND)
        report.check(got == b"", f"a half-sent request got {got!r}")
        await conn.close()
        figures["half-sent requests closed by the idle timeout"] += 1


async def _never_reads(mm: Mailmapd, count: int, report: CaseReport, figures: collections.Counter[str]) -> None:
    """Clients that send cached lookups and never read: the daemon must stop reading them, keep its
    memory bounded, and keep answering the others. Then a prefix of the replies is read back."""
    request = netstring.encode(b"mailboxes sales@example.test")
    reply = netstring.encode(b"OK example.test/sales/")
    cap = 64 << 20
    socks = [socket.create_connection(mm.socketmap) for _ in range(count)]
    try:
        for s in socks:
            s.setblocking(False)
        sent = await asyncio.to_thread(_send_until_blocked, socks, request, cap)
        report.check(max(sent) * len(request) < cap, "a client that never reads sent 64 MiB: reading never paused")
        most = "non-reader: requests sent before the daemon stopped reading (max)"
        figures[most] = max(figures[most], *sent)
        figures["RSS with the non-readers stuck (KiB, max)"] = max(
            figures["RSS with the non-readers stuck (KiB, max)"], mm.rss_kib()
        )
        for s, n in zip(socks, sent, strict=True):
            count_read, problem = await asyncio.to_thread(_read_replies, s, reply, min(n, 20_000))
            report.check(problem is None, f"non-reader: {problem}")
            figures["non-reader requests sent"] += n
            figures["non-reader replies read back"] += count_read
    finally:
        for s in socks:
            s.close()


async def _over_limit(mm: Mailmapd, report: CaseReport, figures: collections.Counter[str]) -> None:
    """A request at the size limit is answered; one byte over, the connection is closed and logged."""
    sm, tcp, pol = mm.socketmap, mm.listeners["tcp_table"], mm.listeners["policy"]
    prefix = b"mailboxes "
    line = b"x=" + b"a" * (policy.MAX_LINE - len(b"x=\n")) + b"\n"  # one attribute line at the limit
    cases = (
        (
            "socketmap",
            sm,
            netstring.encode(prefix + b"a" * (socketmap.MAX_REQUEST_DEFAULT - len(prefix))),
            netstring.encode(prefix + b"a" * (socketmap.MAX_REQUEST_DEFAULT + 1 - len(prefix))),
            b"9:NOTFOUND ,",
        ),
        (
            "tcp_table",
            tcp,
            b"get " + b"a" * (tcptable.MAX_LINE - len(b"get \n")) + b"\n",
            b"get " + b"a" * (tcptable.MAX_LINE + 1 - len(b"get \n")) + b"\n",
            b"500 not found\n",
        ),
        ("policy", pol, line + b"\n", b"x=a" + line + b"\n", b"action=DUNNO\n\n"),
    )
    for protocol, address, at_limit, over, answer in cases:
        conn = await Conn.open(address)
        try:
            conn.writer.write(at_limit)
            got = await asyncio.wait_for(conn.reader.readexactly(len(answer)), REPLY_TIMEOUT)
            report.check(got == answer, f"{protocol} request at the limit got {got!r}")
            conn.writer.write(over)
            got = await asyncio.wait_for(conn.until_closed(), REPLY_TIMEOUT)
            report.check(got == b"", f"{protocol} request one byte over the limit got {got!r}")
        finally:
            await conn.close()
        figures["over-limit requests"] += 1


def _resets(address: Address, round_no: int, figures: collections.Counter[str]) -> None:
    """RST (SO_LINGER 0) in the middle of a request, and right after a request that needs the database."""
    for payload in (b"40:mailboxes sal", netstring.encode(f"aliases sales+rst{round_no}@example.test".encode())):
        for _ in range(10):
            s = socket.create_connection(address)
            s.sendall(payload)
            reset(s)
            figures["connections reset mid-request"] += 1


# --------------------------------------------------------------------------- 6. hostile keys

# Well-formed keys (valid UTF-8, no NUL): each must be answered OK or NOTFOUND, never TEMP.
HOSTILE: tuple[str, ...] = (
    "x' OR '1'='1",
    "sales@example.test' OR '1'='1",
    "'; DROP TABLE users; --@example.test",
    '" OR ""="',
    "`; SELECT 1; --",
    "%",
    "%@example.test",
    "_ales@example.test",
    "*",
    "'",
    "\\",
    "\\'",
    "back\\slash@example.test",
    "sales@example.test\\",
    "\x1a@example.test",
    "line\nbreak@example.test",
    "tab\tcr\r@example.test",
    "%s %n %d %x {0} {} %(key)s %%",
    "%u@%d",
    "%s@example.test",
    "{0}@example.test",
    "😀@example.test",
    "user@😀.test",
    "\U0010ffff@example.test",
    "中文@例子.test",
    "ß@example.test",
    "\u202e@example.test",
    " sales@example.test",
    "sales@example.test ",
    "a" * (10_000 - len("@example.test")) + "@example.test",
    "é" * 4993 + "@example.test",
    "😀" * 2500,
    "'" * 10_000,
    "\\" * 10_000,
    "%s" * 5000,
    "a." * 5000,
    "x@" + "a." * 4999,
)
# A 10,000-byte key made of dots: transports tries every parent domain, one query each.
AMPLIFYING: tuple[str, ...] = ("a." * 5000, "x@" + "a." * 4999)
# A domain name has at most 127 labels (253 octets): a search order never needs more queries.
QUERY_BOUND = 130
# Keys that cannot name anything: answered NOTFOUND with no query.
UNUSABLE: tuple[bytes, ...] = (
    b"a\x00b@example.test",
    b"\x00",
    b"\xff\xfe@example.test",
    b"\xc3(",
    b"\xed\xa0\x80@x.test",
)
# Exact answers a few hostile keys must get.
EXACT: dict[tuple[str, str], str] = {
    ("mailboxes", "x' OR '1'='1"): "NOTFOUND ",
    ("mailboxes", "sales@example.test' OR '1'='1"): "NOTFOUND ",
    ("mailboxes", "%@example.test"): "NOTFOUND ",
    ("mailboxes", "_ales@example.test"): "NOTFOUND ",
    ("mailboxes", "back\\slash@example.test"): "OK example.test/back\\slash/",
    ("mailboxes", "😀@example.test"): "NOTFOUND ",
    ("aliases", "😀@example.test"): "OK sales@example.test",  # the @example.test catch-all
    ("domains", "%"): "NOTFOUND ",
    ("transports", "*"): "NOTFOUND ",
}
MAPS = ("domains", "mailboxes", "aliases", "transports", "quota", "forwardings", "email2email")


async def case_hostile(
    url: str, work: Path, *, backend: str, rounds: int = 1, seconds: float = 0.0, connections: int = 4
) -> CaseReport:
    """Every hostile key on every map over socketmap, on mailboxes over tcp_table, and as the
    recipient of a quota policy request: ``rounds`` times, and more until ``seconds`` have passed."""
    report = CaseReport(
        f"hostile keys ({backend})",
        f"{backend}, {len(HOSTILE)} well-formed and {len(UNUSABLE)} unusable keys x {len(MAPS)} maps over socketmap, "
        f"mailboxes over tcp_table, recipients of the quota policy, {connections} connections, no cache, "
        "lookup.timeout 5 s",
    )
    toml = config_toml(
        url,
        listen=("socketmap", "tcp_table", "policy"),
        mailbox_base=work,
        cache={"positive_ttl": 0.0, "negative_ttl": 0.0},
        lookup={"timeout": 5.0},
    )
    # transports x AMPLIFYING is case_long_dotted_keys: one such lookup costs 5,000 queries.
    jobs = [(t, k.encode()) for k in HOSTILE for t in MAPS if not (t == "transports" and k in AMPLIFYING)]
    jobs += [(t, k) for k in UNUSABLE for t in MAPS]
    tcp_keys = [k.encode() for k in HOSTILE] + list(UNUSABLE)
    tcp_keys = [k for k in tcp_keys if len(tcptable.hex_quote(k)) + 5 <= tcptable.MAX_LINE]
    tcp_keys.append(b"%27" * 800)  # literally %27...: the % must reach the database as itself
    bad: list[str] = []
    slowest = 0.0

    async def socketmap_worker(part: list[tuple[str, bytes]]) -> None:
        nonlocal slowest
        conn = await Conn.open(mm.socketmap)
        try:
            for table, key in part:
                t0 = time.monotonic()
                reply = await conn.socketmap(table, key)
                slowest = max(slowest, time.monotonic() - t0)
                report.requests += 1
                text = key.decode("utf-8", "replace")
                want = EXACT.get((table, text), "NOTFOUND " if key in UNUSABLE else None)
                if (want is not None and reply != want) or not (reply == "NOTFOUND " or reply.startswith("OK ")):
                    bad.append(f"{table} {text[:60]!r} ({len(key)} bytes): {reply[:120]!r}")
        finally:
            await conn.close()

    async def tcp_worker(keys: list[bytes]) -> None:
        conn = await Conn.open(mm.listeners["tcp_table"])
        try:
            for key in keys:
                reply = await conn.tcp_get(key)
                report.requests += 1
                if not reply.startswith(("200 ", "500 ")):
                    bad.append(f"tcp_table mailboxes {key[:60]!r} ({len(key)} bytes): {reply[:120]!r}")
        finally:
            await conn.close()

    # The quota policy over the policy protocol, with each key that fits an attribute line as
    # the recipient: it looks the recipient up in aliases and mailboxes; never a deferral.
    policy_requests = [
        b"request=smtpd_access_policy\nprotocol_state=RCPT\nsize=1000\nrecipient=" + k.encode() + b"\n\n"
        for k in HOSTILE
        if "\n" not in k and len(k.encode()) + len(b"recipient=\n") <= policy.MAX_LINE
    ]

    async def policy_worker() -> None:
        conn = await Conn.open(mm.listeners["policy"])
        try:
            for request in policy_requests:
                conn.writer.write(request)
                reply = (await conn.reader.readuntil(b"\n\n")).decode("utf-8", "replace")
                report.requests += 1
                if reply.startswith("action=DEFER"):
                    bad.append(f"policy recipient {request.rpartition(b'recipient=')[2][:60]!r}: {reply[:120]!r}")
        finally:
            await conn.close()

    async with running_mailmapd(work, toml) as mm:
        started = time.monotonic()
        round_no = 0
        while round_no < rounds or time.monotonic() - started < seconds:
            round_no += 1
            shuffled = random.Random(round_no).sample(jobs, len(jobs))
            await asyncio.gather(
                *(socketmap_worker(shuffled[i::connections]) for i in range(connections)),
                tcp_worker(tcp_keys),
                policy_worker(),
            )
        text = await mm.metrics()
        report.seconds = time.monotonic() - started
        report.problems.extend(mm.log_problems())
        query_warnings = mm.lines_with("the query failed")
    errors = metric(text, "mailmapd_backend_errors_total")
    report.check(not bad, f"{len(bad)} answers that were not OK or NOTFOUND as expected, e.g. {bad[:6]}")
    report.check(errors == 0, f"mailmapd_backend_errors_total = {errors:g}")
    report.check(not query_warnings, f"the daemon logged query failures: {query_warnings[:3]}")
    report.facts.update(
        {
            "database queries (mailmapd_backend_queries_total)": metric(text, "mailmapd_backend_queries_total"),
            "mailmapd_backend_errors_total": errors,
            "slowest socketmap answer (s)": round(slowest, 2),
        }
    )
    return report


async def case_long_dotted_keys(url: str, work: Path, *, backend: str, concurrent: int, rounds: int = 1) -> CaseReport:
    """``concurrent`` transports lookups of distinct 10,000-byte dotted keys at once, ``rounds`` times:
    each must be answered (NOTFOUND), not TEMP, with a bounded number of queries."""
    report = CaseReport(
        f"long dotted keys ({backend})",
        f"{backend}, {concurrent} concurrent transports lookups of distinct 10,000-byte keys 'hN.a.a.a...', "
        "no cache, lookup.timeout 5 s (the default)",
    )
    toml = config_toml(url, cache={"positive_ttl": 0.0, "negative_ttl": 0.0})
    replies: collections.Counter[str] = collections.Counter()
    async with running_mailmapd(work, toml) as mm:
        started = time.monotonic()

        async def one(n: int) -> None:
            conn = await Conn.open(mm.socketmap)
            try:
                key = f"h{n}." + "a." * 4998
                reply = await asyncio.wait_for(conn.socketmap("transports", key), REPLY_TIMEOUT)
                replies[re.sub(r"\d+(\.\d+)?s", "Ns", reply)] += 1
            finally:
                await conn.close()

        for r in range(rounds):
            await asyncio.gather(*(one(r * concurrent + i) for i in range(concurrent)))
        report.seconds = time.monotonic() - started
        report.requests = concurrent * rounds
        queries = metric(await mm.metrics(), "mailmapd_backend_queries_total")
        report.problems.extend(mm.log_problems())
    per_lookup = queries / report.requests
    report.check(set(replies) == {"NOTFOUND "}, f"answers: {dict(replies)}")
    report.check(per_lookup <= QUERY_BOUND, f"{per_lookup:g} database queries per lookup (bound {QUERY_BOUND})")
    report.facts.update({"answers": dict(replies), "database queries per lookup": per_lookup})
    return report


# --------------------------------------------------------------------------- 7. key-space flood


async def case_keyspace(
    url: str,
    work: Path,
    *,
    backend: str,
    keys: int,
    max_entries: int,
    seconds: float | None = None,
    connections: int = 8,
    window: int = 32,
) -> CaseReport:
    """Up to ``keys`` distinct unknown keys (fewer if ``seconds`` run out first) against
    cache.max_entries: the cache stays at its bound and memory does not follow the key count."""
    report = CaseReport(
        "key-space flood",
        f"{backend}, up to {keys} distinct unknown domains keys"
        + (f" or {seconds:g} s" if seconds is not None else "")
        + f", cache.max_entries = {max_entries}, negative_ttl 3600 s, {connections} connections pipelining {window}",
    )
    toml = config_toml(url, cache={"max_entries": max_entries, "negative_ttl": 3600.0, "positive_ttl": 3600.0})
    bad: list[str] = []
    rss_marks: list[float] = []
    sent = 0
    async with running_mailmapd(work, toml) as mm:
        rss_before = mm.rss_kib()
        started = time.monotonic()
        deadline = started + seconds if seconds is not None else float("inf")
        numbers = iter(range(keys))

        async def client() -> None:
            nonlocal sent
            conn = await Conn.open(mm.socketmap)
            try:
                while time.monotonic() < deadline and (
                    chunk := [n for _, n in zip(range(window), numbers, strict=False)]
                ):
                    conn.writer.write(b"".join(netstring.encode(f"domains k{n}.flood.test".encode()) for n in chunk))
                    for _ in chunk:
                        reply = await read_netstring(conn.reader)
                        if reply != b"NOTFOUND " and len(bad) < 10:
                            bad.append(reply.decode("utf-8", "replace"))
                    sent += len(chunk)
            finally:
                await conn.close()

        finished = asyncio.Event()

        async def clients() -> None:
            try:
                await asyncio.gather(*(client() for _ in range(connections)))
            finally:
                finished.set()

        async def sample_rss() -> None:
            while not finished.is_set():
                rss_marks.append(mm.rss_kib() / 1024)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), max(1.0, (seconds or 60.0) / 10))

        await asyncio.gather(clients(), sample_rss())
        report.seconds = time.monotonic() - started
        report.requests = sent
        text = await mm.metrics()
        rss_after = mm.rss_kib()
        report.problems.extend(mm.log_problems())
    entries = metric(text, "mailmapd_cache_entries")
    evictions = metric(text, "mailmapd_cache_evictions_total")
    report.check(not bad, f"answers other than NOTFOUND: {bad}")
    report.check(sent > max_entries, f"only {sent} keys sent: the cache never filled ({max_entries})")
    # The cache evicts a whole old generation (max_entries // 2 entries) at a time.
    report.check(
        max_entries // 2 <= entries <= max_entries, f"mailmapd_cache_entries = {entries:g}, bound {max_entries}"
    )
    report.check(evictions == sent - entries, f"mailmapd_cache_evictions_total = {evictions:g}")
    growth = rss_after - rss_before
    report.check(growth < RSS_BOUND_KIB, f"the daemon's RSS grew by {growth / 1024:.1f} MiB")
    report.facts.update(
        {
            "distinct keys sent": sent,
            "mailmapd_cache_entries": entries,
            "mailmapd_cache_evictions_total": evictions,
            "lookups per second": round(sent / report.seconds),
            "daemon RSS before / after (MiB)": (round(rss_before / 1024, 1), round(rss_after / 1024, 1)),
            "RSS samples during the run (MiB)": [round(r, 1) for r in rss_marks],
        }
    )
    return report


# --------------------------------------------------------------------------- 8. reload under load


async def case_reload(
    url: str, work: Path, *, backend: str, seconds: float, connections: int, interval: float = 0.5
) -> CaseReport:
    """SIGHUP every ``interval`` seconds while clients ask: not one failed lookup."""
    report = CaseReport(
        f"reload under load ({backend})",
        f"{backend}, {connections} socketmap and {connections} tcp_table clients, SIGHUP every {interval:g} s "
        "(each flushes the cache), TTLs 1 s, lookup.timeout 5 s",
    )
    toml = config_toml(
        url,
        listen=("socketmap", "tcp_table"),
        cache={"positive_ttl": 1.0, "negative_ttl": 1.0},
        lookup={"timeout": 5.0},
    )
    reloads = 0
    async with running_mailmapd(work, toml) as mm:
        report.problems += await ask_all(mm.socketmap, KNOWN)
        started = time.monotonic()
        async with load(mm.socketmap, MIXED, connections, tcp_table=mm.listeners["tcp_table"]) as tally:
            while not reloads or time.monotonic() - started < seconds:
                await asyncio.sleep(interval)
                await mm.reload()
                reloads += 1
            await asyncio.sleep(interval)
        text = await mm.metrics()
        _finish(report, mm, tally, started)
    report.problems += tally.failures(temp_allowed=False)
    ok = metric(text, "mailmapd_reloads_total", result="ok")
    report.check(ok == reloads, f"mailmapd_reloads_total{{result=ok}} = {ok:g}, {reloads} SIGHUPs sent")
    report.check(sum(tally.right.values()) > 0, "no lookup was answered")
    report.facts.update({"reloads": reloads, "right answers": sum(tally.right.values()), "TEMP answers": tally.temps})
    return report

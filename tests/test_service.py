"""mailmapd as a real process: `python -m mailmapd -c CONFIG serve` on the embedded SQLite backend.

Every test starts the daemon as a child, reads its stderr in a background thread (so the pipe
never fills) and asks it over real sockets: the socketmap protocol through a small blocking
client, the control socket through the `mailmapd flush` command, /metrics over HTTP. Rows are
inserted with the stdlib sqlite3 module after the daemon has started once, since the daemon
creates the tables and the change-tracking triggers. Every wait polls a condition against a
deadline and fails with the daemon's log; nothing asserts on elapsed time.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Self, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailmapd import __version__

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0  # seconds for the daemon to log "mailmapd ready"
WAIT_TIMEOUT = 10.0  # seconds for anything else the daemon is expected to do
IO_TIMEOUT = 10.0  # seconds one socket read may block
LONG_TTL = 3600.0  # cache TTLs no test outlives: only a flush makes a change visible

_T = TypeVar("_T")


# --------------------------------------------------------------------------- waiting


def wait_until(condition: Callable[[], _T | None], what: str, timeout: float = WAIT_TIMEOUT, context: str = "") -> _T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}{context}", pytrace=False)
        time.sleep(0.02)


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """A running mailmapd child; its stderr lines accumulate in ``lines``."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def mark(self) -> int:
        """A position in the log: wait_for_line(since=mark) sees only lines logged after it."""
        return len(self.lines)

    def wait_until(self, condition: Callable[[], _T | None], what: str, timeout: float = WAIT_TIMEOUT) -> _T:
        return wait_until(condition, what, timeout, context=f"\n--- mailmapd log ---\n{self.log}")

    def wait_for_line(self, text: str, since: int = 0, timeout: float = WAIT_TIMEOUT) -> str:
        """The first log line at or after ``since`` containing ``text``; fails if the daemon exits first."""

        def found() -> str | None:
            for line in self.lines[since:]:
                if text in line:
                    return line
            if self.proc.poll() is not None:
                self._reader.join(IO_TIMEOUT)
                if not any(text in line for line in self.lines[since:]):
                    pytest.fail(
                        f"mailmapd exited with status {self.proc.returncode} before logging {text!r}:\n{self.log}",
                        pytrace=False,
                    )
            return None

        return self.wait_until(found, f"the log line {text!r}", timeout)

    def wait_ready(self) -> None:
        self.wait_for_line("mailmapd ready", timeout=START_TIMEOUT)

    def reload(self) -> None:
        """SIGHUP, then wait until the daemon says the new configuration is in use."""
        since = self.mark()
        self.proc.send_signal(signal.SIGHUP)
        self.wait_for_line("configuration reloaded from", since)

    def wait_exit(self, timeout: float = WAIT_TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"mailmapd still running {timeout:g}s later:\n{self.log}", pytrace=False)
        self._reader.join(IO_TIMEOUT)
        return code

    def stop(self) -> int:
        """SIGTERM and the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(15.0)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(IO_TIMEOUT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def serve_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "mailmapd", "-c", str(config), "serve"]


@contextlib.contextmanager
def running(argv: Sequence[str], *, ready: bool = True) -> Iterator[Daemon]:
    daemon = Daemon(argv)
    try:
        if ready:
            daemon.wait_ready()
        yield daemon
    finally:
        daemon.close()


def mailmapd_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailmapd", "-c", str(config), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )


# --------------------------------------------------------------------------- configuration and data


def config_text(
    db: Path,
    listen: Sequence[str],
    *,
    control_socket: str = "",
    metrics: str = "",
    poll_interval: float = 0.0,
    recipient_delimiter: str = "+",
    top: str = "",
) -> str:
    """A config: long TTLs, no change polling unless asked, socketmap on each ``listen`` address."""
    text = (
        f'recipient_delimiter = "{recipient_delimiter}"\nlog_level = "info"\n{top}'
        f'[database]\nurl = "sqlite://{db}"\nconnect_timeout = 5.0\n'
        f"[cache]\npositive_ttl = {LONG_TTL}\nnegative_ttl = {LONG_TTL}\npoll_interval = {poll_interval}\n"
        f'[metrics]\naddress = "{metrics}"\n'
        f'[server]\ncontrol_socket = "{control_socket}"\nshutdown_timeout = 2.0\n'
    )
    for address in listen:
        text += f'[[listen]]\nprotocol = "socketmap"\naddress = "{address}"\n'
    return text


def db_execute(db: Path, sql: str, params: Sequence[object] = ()) -> None:
    """One committed statement through the stdlib sqlite3 module, as an admin tool would."""
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn, conn:
        conn.execute(sql, tuple(params))


def add_user(db: Path, email: str) -> None:
    db_execute(db, "INSERT INTO users (email, password, quota) VALUES (?, 'x', 1024)", (email,))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "mail.db"


# --------------------------------------------------------------------------- clients


class SocketmapClient:
    """A blocking socketmap client: one netstring ``map key`` out, one netstring back."""

    def __init__(self, address: str) -> None:
        if address.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: str | tuple[str, int] = address[5:]
        else:
            host, _, port = address[5:].rpartition(":")
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = (host, int(port))
        self.sock.settimeout(IO_TIMEOUT)
        try:
            self.sock.connect(target)
        except BaseException:
            self.sock.close()
            raise
        self._file = self.sock.makefile("rb")

    def query(self, table: str, key: str) -> str:
        payload = f"{table} {key}".encode()
        self.sock.sendall(str(len(payload)).encode() + b":" + payload + b",")
        digits = b""
        while (byte := self._file.read(1)) != b":":
            assert byte.isdigit(), f"bad netstring length from mailmapd: {digits + byte!r}"
            digits += byte
        data = self._file.read(int(digits) + 1)
        assert data.endswith(b","), f"netstring not terminated by ',': {data!r}"
        return data[:-1].decode()

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def lookup(address: str, table: str, key: str) -> str:
    """One lookup on a fresh connection."""
    with SocketmapClient(address) as client:
        return client.query(table, key)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=IO_TIMEOUT) as response:
        assert response.status == 200
        return str(response.read().decode())


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the series ``name`` whose labels include ``labels``, or None."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def metrics_port(daemon: Daemon) -> int:
    line = daemon.wait_for_line("metrics on http://")
    match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
    assert match is not None, line
    return int(match.group(1))


# --------------------------------------------------------------------------- 1. SIGHUP reload


def test_sighup_swaps_listeners_keeps_connections_and_flushes_cache(sockdir: Path, db: Path, tmp_path: Path) -> None:
    a, b, c = (f"unix:{sockdir / name}" for name in ("a.sock", "b.sock", "c.sock"))
    config = tmp_path / "mailmapd.toml"
    config.write_text(config_text(db, [a, b]))
    with running(serve_argv(config)) as daemon:
        on_a, on_b = SocketmapClient(a), SocketmapClient(b)
        try:
            assert on_a.query("mailboxes", "new@example.test") == "NOTFOUND "
            assert on_b.query("mailboxes", "new@example.test") == "NOTFOUND "
            add_user(db, "new@example.test")
            # Cached for an hour, no change tracking: the row stays invisible.
            assert on_a.query("mailboxes", "new@example.test") == "NOTFOUND "
            with pytest.raises(FileNotFoundError):
                lookup(c, "mailboxes", "new@example.test")

            config.write_text(config_text(db, [a, c]))  # b removed, c added, a kept
            # on_b stays open across the removal of its listener: the reload must not wait for
            # it (asyncio.Server.wait_closed() does since Python 3.12.1).
            daemon.reload()

            # Connections opened before the reload still answer, with the cache flushed.
            assert on_a.query("mailboxes", "new@example.test") == "OK example.test/new/"
            assert on_b.query("mailboxes", "new@example.test") == "OK example.test/new/"
        finally:
            on_a.close()
            on_b.close()
        assert lookup(c, "mailboxes", "new@example.test") == "OK example.test/new/"
        assert lookup(a, "mailboxes", "new@example.test") == "OK example.test/new/"
        # The removed listener stops answering: its socket file is gone.
        assert not (sockdir / "b.sock").exists()
        with pytest.raises(OSError):  # noqa: PT011 - FileNotFoundError or ConnectionRefusedError
            lookup(b, "mailboxes", "new@example.test")
        assert daemon.stop() == 0
    assert not (sockdir / "a.sock").exists()
    assert not (sockdir / "c.sock").exists()


def test_sighup_applies_a_new_recipient_delimiter(sockdir: Path, db: Path, tmp_path: Path) -> None:
    a = f"unix:{sockdir / 'a.sock'}"
    config = tmp_path / "mailmapd.toml"
    config.write_text(config_text(db, [a], recipient_delimiter="+"))
    with running(serve_argv(config)) as daemon:
        add_user(db, "sales@example.test")
        assert lookup(a, "mailboxes", "sales+tag@example.test") == "OK example.test/sales/"
        assert lookup(a, "mailboxes", "sales-tag@example.test") == "NOTFOUND "

        config.write_text(config_text(db, [a], recipient_delimiter="-"))
        daemon.reload()

        # Both answers above were cached for an hour; the reload dropped them.
        assert lookup(a, "mailboxes", "sales-tag@example.test") == "OK example.test/sales/"
        assert lookup(a, "mailboxes", "sales+tag@example.test") == "NOTFOUND "


def test_sighup_with_a_bad_config_keeps_serving_the_old_one(sockdir: Path, db: Path, tmp_path: Path) -> None:
    a, c = f"unix:{sockdir / 'a.sock'}", f"unix:{sockdir / 'c.sock'}"
    config = tmp_path / "mailmapd.toml"
    config.write_text(config_text(db, [a]))
    with running(serve_argv(config)) as daemon, SocketmapClient(a) as on_a:
        assert on_a.query("mailboxes", "late@example.test") == "NOTFOUND "
        add_user(db, "late@example.test")

        config.write_text(config_text(db, [c], top="bogus_option = 1\n"))
        since = daemon.mark()
        daemon.proc.send_signal(signal.SIGHUP)
        line = daemon.wait_for_line("reload refused", since)
        assert "ERROR" in line
        assert "bogus_option: unknown key" in line
        assert str(config) in line

        # Still the old configuration: listener a, not c, and the cache as it was.
        assert daemon.proc.poll() is None
        assert on_a.query("mailboxes", "late@example.test") == "NOTFOUND "
        assert lookup(a, "mailboxes", "late@example.test") == "NOTFOUND "
        assert not (sockdir / "c.sock").exists()
        assert not any("configuration reloaded" in x for x in daemon.lines[since:])

        # Once the file is fixed, the next SIGHUP takes it (removing a while on_a is open).
        config.write_text(config_text(db, [c]))
        daemon.reload()
        assert lookup(c, "mailboxes", "late@example.test") == "OK example.test/late/"
        assert on_a.query("mailboxes", "late@example.test") == "OK example.test/late/"


# --------------------------------------------------------------------------- 2. mailmapd flush


def test_flush_command_drops_cached_answers(sockdir: Path, db: Path, tmp_path: Path) -> None:
    a = f"unix:{sockdir / 'a.sock'}"
    control = sockdir / "control.sock"
    config = tmp_path / "mailmapd.toml"
    config.write_text(config_text(db, [a], control_socket=str(control), poll_interval=0))
    with running(serve_argv(config)) as daemon, SocketmapClient(a) as client:
        assert stat.S_ISSOCK(control.stat().st_mode)
        assert stat.S_IMODE(control.stat().st_mode) == 0o600

        # One key of one map.
        assert client.query("mailboxes", "one@example.test") == "NOTFOUND "
        add_user(db, "one@example.test")
        assert client.query("mailboxes", "one@example.test") == "NOTFOUND "  # cached, not tracked
        result = mailmapd_cli(config, "flush", "mailboxes", "one@example.test")
        assert (result.returncode, result.stdout) == (0, "dropped 1 cached answers\n"), result.stderr
        assert client.query("mailboxes", "one@example.test") == "OK example.test/one/"

        # One map: its two entries (one found, one not found), and nothing of another map.
        assert client.query("domains", "example.test") == "NOTFOUND "
        assert client.query("mailboxes", "two@example.test") == "NOTFOUND "
        add_user(db, "two@example.test")
        db_execute(db, "INSERT INTO domains (domain) VALUES ('example.test')")
        assert client.query("mailboxes", "two@example.test") == "NOTFOUND "
        result = mailmapd_cli(config, "flush", "mailboxes")
        assert (result.returncode, result.stdout) == (0, "dropped 2 cached answers\n"), result.stderr
        assert client.query("mailboxes", "two@example.test") == "OK example.test/two/"
        assert client.query("domains", "example.test") == "NOTFOUND "  # still cached

        # Everything: mailboxes two, domains example.test, mailboxes three.
        assert client.query("mailboxes", "three@example.test") == "NOTFOUND "
        add_user(db, "three@example.test")
        result = mailmapd_cli(config, "flush")
        assert (result.returncode, result.stdout) == (0, "dropped 3 cached answers\n"), result.stderr
        assert client.query("mailboxes", "three@example.test") == "OK example.test/three/"
        assert client.query("domains", "example.test") == "OK example.test"
        assert daemon.stop() == 0
    assert not control.exists()


def test_flush_without_a_running_daemon_is_unavailable(sockdir: Path, db: Path, tmp_path: Path) -> None:
    control = sockdir / "control.sock"
    config = tmp_path / "mailmapd.toml"
    config.write_text(config_text(db, [], control_socket=str(control)))
    result = mailmapd_cli(config, "flush", "mailboxes", "x@example.test")
    assert result.returncode == os.EX_UNAVAILABLE == 69
    assert str(control) in result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------- 3. change tracking


def wait_for_change_tracking(daemon: Daemon, db: Path) -> None:
    """Until the watcher has noticed one change: from then on it has its baseline counters.

    Each round changes the domains table again; the first change after the watcher's first
    poll is logged ("database changed").
    """
    since = daemon.mark()
    rounds = iter(range(1_000_000))

    def noticed() -> bool:
        if any("database changed" in line for line in daemon.lines[since:]):
            return True
        db_execute(db, "INSERT INTO domains (domain) VALUES (?)", (f"probe{next(rounds)}.test",))
        time.sleep(0.05)
        return False

    daemon.wait_until(noticed, "the change watcher to notice a change to the domains table")


def test_change_tracking_flushes_the_changed_maps_only(sockdir: Path, db: Path, tmp_path: Path) -> None:
    a = f"unix:{sockdir / 'a.sock'}"
    config = tmp_path / "mailmapd.toml"
    config.write_text(config_text(db, [a], poll_interval=0.2, metrics="inet:127.0.0.1:0"))
    with running(serve_argv(config)) as daemon, SocketmapClient(a) as client:
        port = metrics_port(daemon)
        db_execute(db, "INSERT INTO transport (domain, transport) VALUES ('example.test', 'smtp:[old.test]')")
        wait_for_change_tracking(daemon, db)

        # A cached not-found becomes found once the users table changes.
        assert client.query("mailboxes", "fresh@example.test") == "NOTFOUND "
        add_user(db, "fresh@example.test")
        daemon.wait_until(
            lambda: client.query("mailboxes", "fresh@example.test") == "OK example.test/fresh/",
            "the new mailbox to be found",
        )

        # A change to the transport table flushes transports, and not mailboxes.
        assert client.query("transports", "x@example.test") == "OK smtp:[old.test]"
        assert client.query("mailboxes", "fresh@example.test") == "OK example.test/fresh/"  # cached now
        before = scrape(port)
        hits = sample(before, "mailmapd_cache_hits_total", map="mailboxes")
        misses = sample(before, "mailmapd_cache_misses_total", map="mailboxes")
        assert hits is not None
        assert misses is not None
        db_execute(db, "UPDATE transport SET transport = 'smtp:[new.test]' WHERE domain = 'example.test'")
        daemon.wait_until(
            lambda: client.query("transports", "x@example.test") == "OK smtp:[new.test]",
            "the changed transport to be answered",
        )
        assert client.query("mailboxes", "fresh@example.test") == "OK example.test/fresh/"
        after = scrape(port)
        assert sample(after, "mailmapd_cache_hits_total", map="mailboxes") == hits + 1
        assert sample(after, "mailmapd_cache_misses_total", map="mailboxes") == misses


def test_change_right_after_start_or_reload_is_not_missed(sockdir: Path, db: Path, tmp_path: Path) -> None:
    """A not-found cached and a row inserted before the watcher's first interval has passed.

    The watcher must read its baseline counters before the first lookups, not one
    poll_interval later: a change made in between would be absorbed into the baseline and the
    cached not-found kept for its whole TTL. (Failed before 64f394d, which polls at once.) A
    poll_interval of 2 s makes that window wide enough to hit every time.
    """
    a = f"unix:{sockdir / 'a.sock'}"
    config = tmp_path / "mailmapd.toml"
    config.write_text(config_text(db, [a], poll_interval=2.0))
    with running(serve_argv(config)) as daemon, SocketmapClient(a) as client:
        assert client.query("mailboxes", "early@example.test") == "NOTFOUND "
        add_user(db, "early@example.test")
        daemon.wait_until(
            lambda: client.query("mailboxes", "early@example.test") == "OK example.test/early/",
            "the mailbox inserted right after the start to be found (poll_interval = 2 s)",
            timeout=15.0,
        )

        daemon.reload()  # a new watcher, with a new baseline
        assert client.query("mailboxes", "later@example.test") == "NOTFOUND "
        add_user(db, "later@example.test")
        daemon.wait_until(
            lambda: client.query("mailboxes", "later@example.test") == "OK example.test/later/",
            "the mailbox inserted right after a reload to be found (poll_interval = 2 s)",
            timeout=15.0,
        )


# --------------------------------------------------------------------------- 4. metrics


def test_metrics_endpoint_counts_lookups_without_keys(sockdir: Path, db: Path, tmp_path: Path) -> None:
    a = f"unix:{sockdir / 'a.sock'}"
    config = tmp_path / "mailmapd.toml"
    config.write_text(config_text(db, [a], metrics="inet:127.0.0.1:0"))
    with running(serve_argv(config)) as daemon:
        port = metrics_port(daemon)
        add_user(db, "zq7metrics@example.test")
        keys = ["zq7metrics@example.test", "zq7metrics+probe@example.test", "ZQ7Metrics@Example.Test"]
        with SocketmapClient(a) as client:
            for key in keys:
                assert client.query("mailboxes", key) == "OK example.test/zq7metrics/"
            assert client.query("mailboxes", "zq7metrics@example.test") == "OK example.test/zq7metrics/"  # cache hit
            assert client.query("mailboxes", "zq7nobody@example.test") == "NOTFOUND "
            # The answer to this one comes after every count above was made (one event loop).
            assert client.query("domains", "zq7domain.test") == "NOTFOUND "
        text = scrape(port)

    labels = {"protocol": "socketmap", "map": "mailboxes"}
    assert sample(text, "mailmapd_lookups_total", result="found", **labels) == len(keys) + 1
    assert sample(text, "mailmapd_lookups_total", result="notfound", **labels) == 1
    assert sample(text, "mailmapd_build_info", version=__version__) == 1
    # mailboxes: three found keys and one not found; domains: one not found.
    assert sample(text, "mailmapd_cache_entries") == 5
    for needle in ("zq7", "example.test"):  # no key, local part or domain, in any case
        assert needle not in text.lower()


# --------------------------------------------------------------------------- 5. socket activation

# argv: config template, config to write, unix socket path, then the command to exec. Does what systemd does for a .socket unit: binds
# and listens, moves the sockets to descriptors 3, 4, sets LISTEN_* for its own pid, and execs
# (which keeps the pid). The inet socket's port (127.0.0.1:0) goes into the config as @PORT@.
LAUNCHER = r"""
import fcntl, os, socket, sys
template, config, unix_path = sys.argv[1:4]
command = sys.argv[4:]
unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
unix.bind(unix_path)
unix.listen(16)
inet = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
inet.bind(("127.0.0.1", 0))
inet.listen(16)
port = inet.getsockname()[1]
with open(template) as src, open(config, "w") as dst:
    dst.write(src.read().replace("@PORT@", str(port)))
passed = [unix, inet]
high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 200) for s in passed]
for s in passed:
    s.close()
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(high))
os.environ["LISTEN_FDNAMES"] = ":".join(["mailmapd"] * len(high))
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, *command])
"""


def launcher_argv(template: Path, config: Path, unix_path: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        LAUNCHER,
        str(template),
        str(config),
        str(unix_path),
        "-m",
        "mailmapd",
        "-c",
        str(config),
        "serve",
    ]


def test_socket_activation_serves_the_passed_sockets(sockdir: Path, db: Path, tmp_path: Path) -> None:
    unix_path = sockdir / "activated.sock"
    template, config = tmp_path / "template.toml", tmp_path / "mailmapd.toml"
    template.write_text(config_text(db, [f"unix:{unix_path}", "inet:127.0.0.1:@PORT@"]))
    with running(launcher_argv(template, config, unix_path)) as daemon:
        match = re.search(r'address = "inet:127\.0\.0\.1:(\d+)"', config.read_text())
        assert match is not None
        inet = f"inet:127.0.0.1:{match.group(1)}"
        add_user(db, "sd@example.test")
        assert lookup(f"unix:{unix_path}", "mailboxes", "sd@example.test") == "OK example.test/sd/"
        assert lookup(inet, "mailboxes", "sd@example.test") == "OK example.test/sd/"
        assert any(f"on unix:{unix_path} (from systemd)" in line for line in daemon.lines), daemon.log
        assert any(f"on {inet} (from systemd)" in line for line in daemon.lines), daemon.log
        assert daemon.stop() == 0
    # The socket file is the socket unit's: the daemon leaves it in place.
    assert stat.S_ISSOCK(unix_path.lstat().st_mode)


def test_socket_activation_refuses_a_socket_no_listen_uses(sockdir: Path, db: Path, tmp_path: Path) -> None:
    unix_path = sockdir / "activated.sock"
    template, config = tmp_path / "template.toml", tmp_path / "mailmapd.toml"
    # Only the unix socket is configured; the launcher passes the inet one as well.
    template.write_text(config_text(db, [f"unix:{unix_path}"]) + "# inet port @PORT@\n")
    with running(launcher_argv(template, config, unix_path), ready=False) as daemon:
        assert daemon.wait_exit(START_TIMEOUT) == os.EX_CONFIG == 78
        match = re.search(r"# inet port (\d+)", config.read_text())
        assert match is not None
        assert f"inet:127.0.0.1:{match.group(1)}" in daemon.log
        assert "no [[listen]]" in daemon.log
        assert not any("mailmapd ready" in line for line in daemon.lines)

"""A private MariaDB server for the tests, or an external one named by MAILMAPD_TEST_MYSQL.

The private server lives in a short directory under /tmp (its unix socket path must stay
under 108 bytes), listens on 127.0.0.1 only, on a port picked by ``free_port()``, and is
started and signalled directly by the tests: ``stop()``/``start()`` for an outage,
``kill()`` for a crash, ``pause()``/``resume()`` for a server that hangs.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from tests.support.ports import LOOPBACK, free_port, wait_until

ENV_ADDRESS = "MAILMAPD_TEST_MYSQL"
ENV_ROOT_PASSWORD = "MAILMAPD_TEST_MYSQL_ROOT_PASSWORD"

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CLIENT_TIMEOUT = 30.0

# Small buffers and no durability we do not need: the server starts in well under a second.
_SERVER_OPTIONS = (
    "--bind-address=127.0.0.1",
    "--skip-networking=0",
    "--skip-log-bin",
    "--skip-name-resolve",
    "--performance-schema=OFF",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--innodb-log-buffer-size=4M",
    "--innodb-flush-log-at-trx-commit=2",
    "--innodb-doublewrite=0",
    # No io_uring/libaio: container seccomp profiles and memlock limits break them.
    "--innodb-use-native-aio=0",
    "--key-buffer-size=1M",
    "--max-connections=300",
    # What Debian's /etc/mysql/mariadb.conf.d sets, which --no-defaults skips.
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
)

_IDENTIFIER = re.compile(r"[A-Za-z0-9_]{1,64}")


class MariaDBError(RuntimeError):
    """The server or the client failed; the message carries the server's error log tail."""


class MissingBinaryError(MariaDBError):
    """A MariaDB program is not installed; the message names the Debian package."""


class NeedsPrivateServerError(MariaDBError):
    """An outage was asked of an external server (MAILMAPD_TEST_MYSQL) we do not own."""


@dataclass(frozen=True)
class DatabaseAccount:
    """A database and a user with ALL on it, as ``create_database`` made them."""

    host: str
    port: int
    database: str
    user: str
    password: str

    def connect(self) -> Any:
        """A pymysql connection as this account, autocommit, utf8mb4."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.database,
            charset="utf8mb4",
            autocommit=True,
        )


def _which(*names: str, package: str) -> str:
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if found is not None:
            return found
    raise MissingBinaryError(
        f"none of {', '.join(names)} is installed: apt-get install {package} (scripts/test does this)"
    )


def _quote_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _identifier(value: str) -> str:
    if _IDENTIFIER.fullmatch(value) is None:
        raise ValueError(f"{value!r} is not a plain identifier ([A-Za-z0-9_], at most 64)")
    return value


class MariaDB:
    """One MariaDB server: private (ours to start, stop and signal) or external (only queried)."""

    def __init__(
        self,
        *,
        base_dir: Path | None = None,
        external: tuple[str, int] | None = None,
        root_password: str | None = None,
    ) -> None:
        self._external = external
        self._root_password = root_password
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._owns_base_dir = base_dir is None and external is None
        if external is not None:
            self._base_dir: Path | None = None
            self._port = external[1]
            return
        self._base_dir = base_dir if base_dir is not None else Path(tempfile.mkdtemp(prefix="mdb", dir="/tmp"))
        self._port = free_port()

    @classmethod
    def from_env(cls) -> MariaDB:
        """The server MAILMAPD_TEST_MYSQL=host:port names, else a new private one."""
        address = os.environ.get(ENV_ADDRESS, "").strip()
        if not address:
            return cls.private()
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise MariaDBError(f"{ENV_ADDRESS}={address!r}: expected host:port")
        return cls(external=(host, int(port)), root_password=os.environ.get(ENV_ROOT_PASSWORD, ""))

    @classmethod
    def private(cls, base_dir: Path | None = None) -> MariaDB:
        """A private server in ``base_dir`` (default: a new short directory under /tmp)."""
        return cls(base_dir=base_dir)

    # -- properties -------------------------------------------------------------------------

    @property
    def is_external(self) -> bool:
        return self._external is not None

    @property
    def host(self) -> str:
        return self._external[0] if self._external is not None else LOOPBACK

    @property
    def port(self) -> int:
        return self._port

    @property
    def socket(self) -> Path | None:
        """The private server's unix socket; None for an external server."""
        return None if self._base_dir is None else self._base_dir / "sock"

    @property
    def root_user(self) -> str:
        """The administrative account: ``root``, or the OS user when the tests do not run as root."""
        if self._external is not None or os.geteuid() == 0:
            return "root"
        return getpass.getuser()

    @property
    def root_password(self) -> str | None:
        """None for the private server: its root logs in through the socket (unix_socket auth)."""
        return self._root_password

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> None:
        """Make the server usable: start a private one, or check that the external one answers."""
        if self._external is None:
            self.start()
        else:
            self.execute("SELECT 1")

    def close(self) -> None:
        """Stop a private server and remove its directory. Nothing for an external one."""
        if self._external is not None:
            return
        if self._process is not None:
            if self._paused:
                self.resume()
            if self.running:
                self.stop()
            else:
                self._reap()
        if self._owns_base_dir and self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)

    def start(self) -> None:
        """Start mariadbd on the same datadir and port, and wait until it answers a query."""
        base_dir = self._require_private("start")
        if self.running:
            raise MariaDBError(f"mariadbd (pid {self.pid}) is already running")
        self._reap()
        server = _which("mariadbd", "mysqld", package="mariadb-server")
        datadir = base_dir / "data"
        if not (datadir / "mysql").is_dir():
            self._install_db(datadir)
        (base_dir / "tmp").mkdir(exist_ok=True)
        argv = [
            server,
            "--no-defaults",
            f"--datadir={datadir}",
            f"--socket={self.socket}",
            f"--port={self._port}",
            f"--pid-file={base_dir / 'mariadbd.pid'}",
            f"--log-error={self.error_log_path}",
            f"--tmpdir={base_dir / 'tmp'}",
            *_SERVER_OPTIONS,
        ]
        if os.geteuid() == 0:
            argv.insert(2, "--user=root")
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a ^C in the terminal reaches pytest, which then stops us
        )
        self._paused = False
        wait_until(
            self._ready, timeout=START_TIMEOUT, what="mariadbd to accept connections", diagnostics=self.error_log_tail
        )

    def stop(self) -> None:
        """SIGTERM (a clean shutdown) and wait for the server to exit."""
        self._signal_and_wait(signal.SIGTERM, "stop")

    def kill(self) -> None:
        """SIGKILL: the server dies with its connections open; ``start()`` runs crash recovery."""
        self._signal_and_wait(signal.SIGKILL, "kill")

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, like a hung server."""
        process = self._require_process("pause")
        process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        process = self._require_process("resume")
        process.send_signal(signal.SIGCONT)
        self._paused = False

    # -- SQL --------------------------------------------------------------------------------

    def execute(self, sql: str, database: str | None = None, *, timeout: float = CLIENT_TIMEOUT) -> str:
        """Run ``sql`` with the ``mariadb`` client as root (batch mode, no column names); return stdout."""
        client = _which("mariadb", "mysql", package="mariadb-client")
        argv = [client, "--no-defaults", "--batch", "--skip-column-names", f"--user={self.root_user}"]
        env = dict(os.environ)
        if self._external is not None:
            argv += ["--protocol=TCP", f"--host={self.host}", f"--port={self.port}"]
            env["MYSQL_PWD"] = self._root_password or ""
        else:
            argv += ["--protocol=SOCKET", f"--socket={self.socket}"]
        if database is not None:
            argv.append(f"--database={database}")
        try:
            result = subprocess.run(
                argv, input=sql, capture_output=True, text=True, env=env, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise MariaDBError(f"mariadb client gave no answer within {timeout:g}s to: {sql}") from exc
        if result.returncode != 0:
            raise MariaDBError(f"mariadb client exited {result.returncode} on: {sql}\n{result.stderr.strip()}")
        return result.stdout

    def create_database(self, name: str, user: str, password: str) -> DatabaseAccount:
        """Create database ``name`` and ``user`` (from 127.0.0.1 and localhost) with ALL on it."""
        database = _identifier(name)
        hosts = ["127.0.0.1", "localhost"] + (["%"] if self._external is not None else [])
        statements = [f"CREATE DATABASE IF NOT EXISTS `{database}`;"]
        for host in hosts:
            account = f"{_quote_string(_identifier(user))}@{_quote_string(host)}"
            statements += [
                f"CREATE USER IF NOT EXISTS {account};",
                f"ALTER USER {account} IDENTIFIED BY {_quote_string(password)};",
                f"GRANT ALL ON `{database}`.* TO {account};",
            ]
        self.execute("\n".join(statements))
        return DatabaseAccount(host=self.host, port=self.port, database=database, user=user, password=password)

    def drop_database(self, name: str, user: str | None = None) -> None:
        """Drop ``name`` and, if given, the user ``create_database`` made with it."""
        statements = [f"DROP DATABASE IF EXISTS `{_identifier(name)}`;"]
        if user is not None:
            name = _quote_string(_identifier(user))
            statements += [
                f"DROP USER IF EXISTS {name}@{_quote_string(host)};" for host in ("127.0.0.1", "localhost", "%")
            ]
        self.execute("\n".join(statements))

    # -- diagnostics ------------------------------------------------------------------------

    @property
    def error_log_path(self) -> Path:
        return self._require_private("read the error log of") / "error.log"

    def error_log_tail(self, lines: int = 40) -> str:
        try:
            text = self.error_log_path.read_text(errors="replace")
        except (OSError, NeedsPrivateServerError):
            return "(no mariadbd error log)"
        return "mariadbd error log, last lines:\n" + "\n".join(text.splitlines()[-lines:])

    # -- internals --------------------------------------------------------------------------

    def _install_db(self, datadir: Path) -> None:
        install = _which("mariadb-install-db", "mysql_install_db", package="mariadb-server")
        argv = [
            install,
            "--no-defaults",
            f"--datadir={datadir}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=8M",
        ]
        if os.geteuid() == 0:
            argv.append("--user=root")
        else:
            argv.append(f"--auth-root-socket-user={getpass.getuser()}")
        result = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
        if result.returncode != 0:
            raise MariaDBError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )

    def _ready(self) -> bool | None:
        process = self._require_process("wait for")
        if process.poll() is not None:
            raise MariaDBError(
                f"mariadbd exited with status {process.returncode} while starting\n{self.error_log_tail()}"
            )
        try:
            self.execute("SELECT 1", timeout=5.0)
        except MariaDBError:
            return None
        return True

    def _signal_and_wait(self, signum: signal.Signals, action: str) -> None:
        process = self._require_process(action)
        if process.poll() is None:
            process.send_signal(signum)
            if self._paused and signum != signal.SIGKILL:
                process.send_signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once resumed
        self._paused = False
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            process.kill()
            process.wait()
            raise MariaDBError(
                f"mariadbd did not exit within {STOP_TIMEOUT:g}s of {signum.name}\n{self.error_log_tail()}"
            ) from exc
        finally:
            self._process = None

    def _reap(self) -> None:
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=STOP_TIMEOUT)
            self._process = None

    def _require_private(self, action: str) -> Path:
        if self._base_dir is None:
            raise NeedsPrivateServerError(
                f"cannot {action} the external server {ENV_ADDRESS}={self.host}:{self.port}: "
                "this test needs a private server (use the private_mariadb fixture)"
            )
        return self._base_dir

    def _require_process(self, action: str) -> subprocess.Popen[bytes]:
        self._require_private(action)
        if self._process is None:
            raise MariaDBError(f"cannot {action} mariadbd: it is not running")
        return self._process

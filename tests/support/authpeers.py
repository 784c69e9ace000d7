"""The tutorial's password checkers, real and private: saslauthd + pam_mysql and Courier authdaemond.

Seed sections 6 and 7 authenticate SMTP AUTH through saslauthd (``-a pam``) with a PAM
service of two pam_mysql lines (``crypt=1``), and IMAP/POP3 through Courier's authdaemond
with ``authmodulelist="authmysql"``. These helpers start private instances of both that
read the users table of a test database over TCP, and run the packages' own checkers
against them: ``testsaslauthd`` and ``authtest``.

saslauthd
    ``saslauthd -a pam -m RUNDIR -d -n 1``: in the foreground, one process, its socket in a
    short directory under /tmp. PAM only reads services from /etc/pam.d, so the service is
    /etc/pam.d/mailmapd-test-<random>, removed at ``close()``. No ``-c``: with the seed's
    credential cache an old password keeps working after a change until the cache entry
    times out, which is saslauthd's behaviour, not the database's.

Courier authdaemond
    courier-authlib has its paths compiled in: /etc/courier/authdaemonrc,
    /etc/courier/authmysqlrc, and the socket /run/courier/authdaemon/socket, which
    ``authtest`` connects to; ``authdaemond`` has no option to move them. So authdaemond runs
    in a private mount namespace (``unshare --mount``) where a private directory is bound over
    /etc/courier and another over /run, and ``authtest`` joins that namespace
    (``nsenter --mount``): the system's files and any running system authdaemond are never
    touched. Where mount namespaces are not allowed (a container without CAP_SYS_ADMIN),
    the fallback writes the two system files, after backing them up, and restores them at
    ``close()``; it refuses to start while a system authdaemond answers on the socket.

    courier-authlib 0.71 (Debian 12) rejects an authmysqlrc without its closing
    ``##NAME: MARKER:0`` line ("marker line not found ... sysconftool") and one without
    ``MYSQL_OPT`` ("cannot parse the MYSQL_OPT setting"): the seed's file, typed into an
    emptied authmysqlrc, has neither, so :func:`authmysqlrc` adds both to the seed's lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.support.mariadb import DatabaseAccount
from tests.support.ports import wait_until

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 20.0

PAM_DIR = Path("/etc/pam.d")
PAM_SERVICE_PREFIX = "mailmapd-test-"

COURIER_ETC = Path("/etc/courier")
COURIER_RUN = Path("/run")
COURIER_SOCKET = Path("/run/courier/authdaemon/socket")  # compiled into libcourierauth
AUTHDAEMOND = Path(
    "/usr/lib/courier/courier-authlib/authdaemond"
)  # the daemon; /usr/sbin/authdaemond is its init script
AUTHMYSQL_MODULE = "libauthmysql.so"
COURIER_MODULE_DIR = Path("/usr/lib/courier-authlib")

# What the seed's files hold that is not about the database.
VMAIL_ID = 5000
VMAIL_HOME = "/home/vmail"
MAILDIR_FIELD = "CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/')"

_PAM_ARGUMENT = re.compile(r"[^\s\[\]]+")  # pam.d splits arguments on whitespace; [] quote


class AuthPeerError(RuntimeError):
    """A peer did not start, stop or answer; the message carries its log."""


class MissingPackageError(AuthPeerError):
    """A program or module is not installed; the message names the Debian package."""


@dataclass(frozen=True)
class Outcome:
    """What a checker (testsaslauthd, authtest) exited with and printed (stdout and stderr)."""

    returncode: int
    output: str


def find_program(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise MissingPackageError(f"{name} is not installed: apt-get install {package} (scripts/test does this)")
    return found


def find_pam_module(name: str, package: str) -> Path:
    """A PAM module in one of the places Linux-PAM loads modules from."""
    for root in (Path("/usr/lib"), Path("/lib"), Path("/usr/lib64"), Path("/lib64")):
        for candidate in (root / "security" / name, *root.glob(f"*/security/{name}")):
            if candidate.is_file():
                return candidate
    raise MissingPackageError(
        f"the PAM module {name} is not installed: apt-get install {package} (scripts/test does this)"
    )


def _pam_argument(name: str, value: str) -> str:
    if _PAM_ARGUMENT.fullmatch(value) is None:
        raise ValueError(f"pam_mysql option {name}={value!r}: a pam.d argument cannot hold whitespace or brackets")
    return f"{name}={value}"


def pam_mysql_service(account: DatabaseAccount) -> str:
    """The seed's /etc/pam.d/smtp, pointed at ``account`` over TCP (``host=HOST:PORT``)."""
    options = " ".join(
        _pam_argument(name, value)
        for name, value in (
            ("user", account.user),
            ("passwd", account.password),
            ("host", f"{account.host}:{account.port}"),
            ("db", account.database),
            ("table", "users"),
            ("usercolumn", "email"),
            ("passwdcolumn", "password"),
            ("crypt", "1"),
        )
    )
    return f"auth    required   pam_mysql.so {options}\naccount sufficient pam_mysql.so {options}\n"


def authmysqlrc(account: DatabaseAccount) -> str:
    """The seed's authmysqlrc over TCP, plus the two lines courier-authlib 0.71 insists on."""
    for value in (account.host, account.user, account.password, account.database):
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"authmysqlrc values cannot be empty or hold whitespace: {value!r}")
    return "\n".join(
        [
            "# Written by tests/support/authpeers.py: the seed's authmysqlrc (section 7), over TCP.",
            f"MYSQL_SERVER {account.host}",
            f"MYSQL_USERNAME {account.user}",
            f"MYSQL_PASSWORD {account.password}",
            f"MYSQL_PORT {account.port}",
            "MYSQL_OPT 0",  # not in the seed; courier-authlib 0.71 fails every login without it
            f"MYSQL_DATABASE {account.database}",
            "MYSQL_USER_TABLE users",
            "MYSQL_CRYPT_PWFIELD password",
            "#MYSQL_CLEAR_PWFIELD password",
            f"MYSQL_UID_FIELD {VMAIL_ID}",
            f"MYSQL_GID_FIELD {VMAIL_ID}",
            "MYSQL_LOGIN_FIELD email",
            f'MYSQL_HOME_FIELD "{VMAIL_HOME}"',
            f"MYSQL_MAILDIR_FIELD {MAILDIR_FIELD}",
            "#MYSQL_NAME_FIELD",
            "MYSQL_QUOTA_FIELD quota",
            "",
            # Not in the seed either: without it courier-authlib 0.71 logs "marker line not
            # found in /etc/courier/authmysqlrc" and rejects every login.
            "##NAME: MARKER:0",
            "#",
            "# Do not remove this section from this configuration file. This section",
            "# must be present at the end of this file.",
            "",
        ]
    )


AUTHDAEMONRC = """\
# Written by tests/support/authpeers.py: the seed's authmodulelist (section 7).
authmodulelist="authmysql"
authmodulelistorig="authmysql"
daemons=1
authdaemonvar=/run/courier/authdaemon
DEBUG_LOGIN=1
DEFAULTOPTIONS=""
LOGGEROPTS=""
"""


def _run(argv: list[str], what: str, timeout: float = COMMAND_TIMEOUT) -> Outcome:
    try:
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise AuthPeerError(f"{what} gave no answer within {timeout:g}s: {' '.join(argv)}") from exc
    return Outcome(result.returncode, result.stdout + result.stderr)


def _log_tail(path: Path, what: str, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {what} log)"
    return f"{what} log, last lines:\n" + "\n".join(text.splitlines()[-lines:])


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def _stop(process: subprocess.Popen[bytes], what: str, log: str) -> None:
    """SIGTERM and a bounded wait; SIGKILL to the process group if it does not exit.

    The process was started with ``start_new_session=True``, so its group holds it and
    the children it forked, and nothing else.
    """
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT)
        raise AuthPeerError(f"{what} did not exit within {STOP_TIMEOUT:g}s of SIGTERM\n{log}") from exc
    # Children that outlived their parent (authdaemond's workers exit on their own).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)


# --------------------------------------------------------------------------- saslauthd


class Saslauthd:
    """A private ``saslauthd -a pam`` with its own PAM service of pam_mysql lines."""

    def __init__(self, account: DatabaseAccount) -> None:
        self._account = account
        self._saslauthd = find_program("saslauthd", "sasl2-bin")
        self._testsaslauthd = find_program("testsaslauthd", "sasl2-bin")
        find_pam_module("pam_mysql.so", "libpam-mysql")
        self.service = PAM_SERVICE_PREFIX + secrets.token_hex(6)
        self.pam_file = PAM_DIR / self.service
        self._run_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def run_dir(self) -> Path:
        if self._run_dir is None:
            raise AuthPeerError("saslauthd is not started")
        return self._run_dir

    @property
    def mux(self) -> Path:
        """The socket testsaslauthd (and Postfix's SASL client) talks to."""
        return self.run_dir / "mux"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "saslauthd.log"

    def log_tail(self) -> str:
        return _log_tail(self.log_path, "saslauthd") if self._run_dir is not None else "(saslauthd not started)"

    def start(self) -> None:
        # Short: the socket path must stay under 108 bytes.
        self._run_dir = Path(tempfile.mkdtemp(prefix="sasl", dir="/tmp"))
        # O_EXCL: never overwrite a service file we did not write.
        fd = os.open(self.pam_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as pam:
            pam.write(pam_mysql_service(self._account))
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [self._saslauthd, "-a", "pam", "-m", str(self.run_dir), "-d", "-n", "1"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._ready, timeout=START_TIMEOUT, what="saslauthd to listen", diagnostics=self.log_tail)

    def _ready(self) -> bool | None:
        assert self._process is not None
        if self._process.poll() is not None:
            raise AuthPeerError(f"saslauthd exited with status {self._process.returncode}\n{self.log_tail()}")
        return True if _socket_answers(self.mux) else None

    def check(self, user: str, password: str) -> Outcome:
        """``testsaslauthd -u USER -p PASSWORD -s SERVICE -f MUX``: 0 and ``0: OK "Success."`` when accepted."""
        return _run(
            [self._testsaslauthd, "-u", user, "-p", password, "-s", self.service, "-f", str(self.mux)],
            "testsaslauthd",
        )

    def close(self) -> None:
        try:
            if self._process is not None:
                process, self._process = self._process, None
                _stop(process, "saslauthd", self.log_tail())
        finally:
            self.pam_file.unlink(missing_ok=True)
            if self._run_dir is not None:
                shutil.rmtree(self._run_dir, ignore_errors=True)
                self._run_dir = None


# --------------------------------------------------------------------------- Courier authdaemond

Isolation = Literal["auto", "namespace", "system"]


def mount_namespaces_work() -> bool:
    """Whether this process may make a private mount namespace and bind-mount in it."""
    unshare, nsenter, mount = (
        shutil.which(n, path="/usr/bin:/bin:/usr/sbin:/sbin") for n in ("unshare", "nsenter", "mount")
    )
    if unshare is None or nsenter is None or mount is None:
        return False
    probe = tempfile.mkdtemp(prefix="nsp", dir="/tmp")
    try:
        result = subprocess.run(
            [unshare, "--mount", "--propagation", "private", "--", mount, "--bind", probe, probe],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    finally:
        Path(probe).rmdir()
    return result.returncode == 0


# Bind the private directories over the compiled-in paths, then become authdaemond.
_NAMESPACE_SCRIPT = 'mount --bind "$1" /etc/courier && mount --bind "$2" /run && exec "$3"'


class CourierAuthdaemon:
    """A private Courier authdaemond with authmodulelist="authmysql", checked with ``authtest``."""

    def __init__(self, account: DatabaseAccount, isolation: Isolation = "auto") -> None:
        self._account = account
        self._authtest = find_program("authtest", "courier-authdaemon")
        if not AUTHDAEMOND.is_file():
            raise MissingPackageError(f"{AUTHDAEMOND} is not installed: apt-get install courier-authdaemon")
        if not any(COURIER_MODULE_DIR.glob(AUTHMYSQL_MODULE + "*")):
            raise MissingPackageError(
                f"Courier's MySQL module ({COURIER_MODULE_DIR}/{AUTHMYSQL_MODULE}) is not installed:"
                " apt-get install courier-authlib-mysql (scripts/test does this)"
            )
        if not COURIER_ETC.is_dir():
            raise MissingPackageError(f"{COURIER_ETC} does not exist: apt-get install courier-authdaemon")
        if isolation == "auto":
            isolation = "namespace" if mount_namespaces_work() else "system"
        self.isolation: Literal["namespace", "system"] = isolation
        self._base: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._backups: list[tuple[Path, Path, os.stat_result]] = []
        self._made_dirs: list[Path] = []

    @property
    def base(self) -> Path:
        if self._base is None:
            raise AuthPeerError("authdaemond is not started")
        return self._base

    @property
    def etc_dir(self) -> Path:
        """Where authdaemonrc and authmysqlrc are: ours in a namespace, else /etc/courier."""
        return self.base / "etc" if self.isolation == "namespace" else COURIER_ETC

    @property
    def socket_path(self) -> Path:
        """The authdaemon socket, as seen from this process."""
        if self.isolation == "namespace":
            return self.base / "run" / COURIER_SOCKET.relative_to(COURIER_RUN)
        return COURIER_SOCKET

    @property
    def log_path(self) -> Path:
        return self.base / "authdaemond.log"

    def log_tail(self) -> str:
        return _log_tail(self.log_path, "authdaemond") if self._base is not None else "(authdaemond not started)"

    def start(self) -> None:
        self._base = Path(tempfile.mkdtemp(prefix="cour", dir="/tmp"))
        env = {**os.environ, "DEBUG_LOGIN": "1"}  # authdaemond's init script exports authdaemonrc
        argv: list[str]
        if self.isolation == "namespace":
            etc = self.base / "etc"
            etc.mkdir()
            (etc / "authdaemonrc").write_text(AUTHDAEMONRC)
            (etc / "authmysqlrc").write_text(authmysqlrc(self._account))
            for path in (etc / "authdaemonrc", etc / "authmysqlrc"):
                path.chmod(0o600)
            self.socket_path.parent.mkdir(parents=True)
            unshare = find_program("unshare", "util-linux")
            argv = [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", _NAMESPACE_SCRIPT]
            argv += ["authdaemond", str(etc), str(self.base / "run"), str(AUTHDAEMOND)]
        else:
            self._take_over_system_files()
            argv = [str(AUTHDAEMOND)]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        wait_until(self._ready, timeout=START_TIMEOUT, what="authdaemond to listen", diagnostics=self.log_tail)

    def _take_over_system_files(self) -> None:
        if _socket_answers(COURIER_SOCKET):
            raise AuthPeerError(
                f"a system authdaemond answers on {COURIER_SOCKET}, and this machine allows no private mount"
                " namespace: stop courier-authdaemon to run these tests"
            )
        backup_dir = self.base / "backup"
        backup_dir.mkdir()
        for name, text in (("authdaemonrc", AUTHDAEMONRC), ("authmysqlrc", authmysqlrc(self._account))):
            target = COURIER_ETC / name
            backup = backup_dir / name
            if not target.exists():
                raise MissingPackageError(f"{target} does not exist: apt-get install courier-authdaemon")
            info = target.stat()
            shutil.copy2(target, backup)
            self._backups.append((target, backup, info))
            target.write_text(text)
            target.chmod(info.st_mode & 0o7777)
            os.chown(target, info.st_uid, info.st_gid)
        for directory in (COURIER_SOCKET.parent.parent, COURIER_SOCKET.parent):
            if not directory.exists():
                directory.mkdir(mode=0o750)
                self._made_dirs.append(directory)

    def _restore_system_files(self) -> None:
        errors: list[str] = []
        for target, backup, info in reversed(self._backups):
            try:
                shutil.copy2(backup, target)
                os.chown(target, info.st_uid, info.st_gid)
            except OSError as exc:
                errors.append(f"{target}: {exc} (the original is in {backup})")
        self._backups.clear()
        if self.isolation == "system":
            COURIER_SOCKET.unlink(missing_ok=True)
        for directory in reversed(self._made_dirs):
            with contextlib.suppress(OSError):
                directory.rmdir()
        self._made_dirs.clear()
        if errors:
            raise AuthPeerError("could not restore Courier's files: " + "; ".join(errors))

    def _ready(self) -> bool | None:
        assert self._process is not None
        if self._process.poll() is not None:
            raise AuthPeerError(f"authdaemond exited with status {self._process.returncode}\n{self.log_tail()}")
        return True if _socket_answers(self.socket_path) else None

    def authtest(self, *args: str) -> Outcome:
        """``authtest ARGS...`` against this authdaemond (inside its mount namespace, if it has one)."""
        argv = [self._authtest, *args]
        if self.isolation == "namespace":
            if self._process is None or self._process.poll() is not None:
                raise AuthPeerError(f"authdaemond is not running\n{self.log_tail()}")
            nsenter = find_program("nsenter", "util-linux")
            argv = [nsenter, f"--target={self._process.pid}", "--mount", "--", *argv]
        return _run(argv, "authtest")

    def check(self, user: str, password: str, service: str = "imap") -> Outcome:
        """``authtest -s SERVICE USER PASSWORD``: 0 and "Authentication succeeded." when accepted."""
        return self.authtest("-s", service, user, password)

    def close(self) -> None:
        try:
            if self._process is not None:
                process, self._process = self._process, None
                _stop(process, "authdaemond", self.log_tail())
        finally:
            # A failed restore raises before the backups (in base) are removed.
            self._restore_system_files()
            if self._base is not None:
                shutil.rmtree(self._base, ignore_errors=True)
                self._base = None

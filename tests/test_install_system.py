"""`mailmapd install` on the real system, end to end (issue 4, "Proof").

This test CHANGES THE MACHINE IT RUNS ON: /etc/postfix, /etc/courier, /etc/pam.d,
/etc/default/saslauthd, /etc/aliases, the user vmail and /home/vmail, and it starts the
system's postfix, saslauthd and Courier services. It runs only with MAILMAPD_SYSTEM_TEST=1,
as root, on a Debian 12 with scripts/test's packages, where none of those services runs.

The database is a private MariaDB on 127.0.0.1. mailmapd is installed into a virtualenv under
/opt (the daemon runs as vmail, which cannot enter /root). After the install, Postfix is made
to deliver nowhere but here (default_transport and relay_transport = error:, and the smtp,
relay and lmtp services of master.cf = discard). At the end the installed main.cf and
master.cf are put back as install wrote them, every service is stopped, `mailmapd install
--uninstall` runs, what install left outside its files (the vmail user, postfix in group
sasl, /etc/aliases.db, the init script's run and log files) is removed, and the test checks
that no process is left and that every recorded path is as it was before.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import imaplib
import json
import os
import poplib
import pwd
import secrets
import shutil
import signal
import smtplib
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.mariadb import MariaDB, MissingBinaryError
from tests.support.ports import port_accepts, wait_until
from tests.support.system import Snapshot, all_pids, describe, is_gam_server, our_processes, run

# It changes the real system (and puts it back): CI (CI=true, a disposable machine) runs it;
# on a developer machine it runs on demand with MAILMAPD_SYSTEM_TEST=1.
pytestmark = pytest.mark.skipif(
    os.environ.get("MAILMAPD_SYSTEM_TEST") != "1" and os.environ.get("CI") != "true",
    reason="changes the real system: CI runs it; elsewhere set MAILMAPD_SYSTEM_TEST=1",
)

REPO = Path(__file__).resolve().parents[1]
VENV = Path("/opt/mailmapd-test-venv")
MAILMAPD = VENV / "bin" / "mailmapd"
STATE_FILE = Path("/var/lib/mailmapd-install/state.json")
ADMIN_TOML = "/etc/mailmapd/admin.toml"
MAIN_CF = Path("/etc/postfix/main.cf")
MASTER_CF = Path("/etc/postfix/master.cf")
VMAIL_HOME = Path("/home/vmail")

FQDN = "mail.test.localhost"
DOMAIN = "test.localhost"
USER = f"alice@{DOMAIN}"
ADMIN = f"admin@{DOMAIN}"
NOWHERE = "error:test system delivers nowhere"
MAIL_LOG = Path("/var/log/mailmapd-system-test-mail.log")

# The ports the system services listen on; all must be free before the test starts.
PORTS = {"smtp": 25, "pop3": 110, "imap": 143, "imaps": 993, "pop3s": 995, "socketmap": 7979, "policy": 7981}
# Stopped in this order at the end (the reverse of the installer's start order).
SERVICES = (
    "postfix",
    "courier-pop-ssl",
    "courier-pop",
    "courier-imap-ssl",
    "courier-imap",
    "courier-authdaemon",
    "saslauthd",
    "mailmapd",
)
# What the test records before and compares after.
TREES = (
    "/etc/postfix",
    "/etc/courier",
    "/etc/pam.d",
    "/etc/mailmapd",
    "/etc/init.d",
    *(f"/etc/rc{level}.d" for level in "0123456S"),
    "/var/lib/mailmapd-install",
    "/var/spool/postfix/var",
    str(VMAIL_HOME),
)
PATHS = (
    "/etc/default/saslauthd",
    "/etc/aliases",
    "/etc/aliases.db",
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/gshadow",
    "/run/mailmapd",
    "/var/lib/mailmapd",
    "/var/log/mailmapd.log",
    str(MAIL_LOG),
)
# useradd/groupadd/gpasswd keep the previous version here; put back byte for byte.
ACCOUNT_BACKUPS = ("/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-")
# Left by the init script the installer writes (what systemd would make and keep).
INIT_LEFTOVERS = ("/run/mailmapd", "/var/lib/mailmapd", "/var/log/mailmapd.log")
# Made by the courier-imap init script (makeimapaccess) when it starts.
SERVICE_LEFTOVERS = ("/etc/courier/imapaccess.dat",)
VMAIL_ID = 5000

WAIT = 30.0
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@dataclass
class System:
    """What the fixture set up, for the tests to use."""

    db: MariaDB
    user_password: str
    admin_password: str
    install_output: str
    install_args: list[str]
    installed: dict[str, bytes] = field(default_factory=dict)  # main.cf and master.cf as install wrote them

    def maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return VMAIL_HOME / domain / local


def _check(argv: list[str], what: str, *, stdin: str | None = None, timeout: float = 120.0) -> str:
    result = run(argv, stdin=stdin, timeout=timeout, env=ENV)
    assert result.returncode == 0, (
        f"{what}: `{' '.join(argv)}` exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )
    return result.stdout + result.stderr


def _install_args(db: MariaDB, readonly_password: str, admin_password: str) -> list[str]:
    assert db.socket is not None
    return [
        str(MAILMAPD),
        "install",
        "--hostname",
        FQDN,
        "--admin-address",
        ADMIN,
        "--database-url",
        f"mysql://127.0.0.1:{db.port}/mail",
        "--db-superuser-url",
        f"mysql://root@localhost/mysql?unix_socket={db.socket}",
        "--readonly-password",
        readonly_password,
        "--admin-password",
        admin_password,
    ]


def _preconditions() -> None:
    if os.geteuid() != 0:
        pytest.fail("the system test must run as root", pytrace=False)
    busy = [f"{name} ({port})" for name, port in PORTS.items() if port_accepts(port)]
    if busy:
        pytest.fail(f"ports in use, a mail service already runs here: {', '.join(busy)}", pytrace=False)
    for path in (STATE_FILE, Path("/etc/mailmapd"), MAIN_CF):
        if path.exists():
            pytest.fail(f"{path} exists: this system is already set up; the test wants a fresh one", pytrace=False)
    try:
        pwd.getpwnam("vmail")
    except KeyError:
        pass
    else:
        pytest.fail("user vmail exists: the test wants a fresh system", pytrace=False)
    left = our_processes(set(), VMAIL_ID)
    if left:
        pytest.fail("services already running:\n" + "\n".join(describe(p) for p in left), pytrace=False)


def _safety() -> None:
    """Postfix delivers nowhere but this machine; main.cf logs to a file (no syslog here)."""
    _check(
        [
            "postconf",
            "-e",
            f"default_transport = {NOWHERE}",
            f"relay_transport = {NOWHERE}",
            f"maillog_file = {MAIL_LOG}",
        ],
        "postconf -e",
    )
    for service in ("smtp", "relay", "lmtp"):
        _check(["postconf", "-M", f"{service}/unix={service} unix - - y - - discard"], "postconf -M")
    _check(["postfix", "reload"], "postfix reload")


def _stop_everything(errors: list[str]) -> None:
    for service in SERVICES:
        script = Path("/etc/init.d") / service
        if not script.exists():
            continue
        try:
            result = run([str(script), "stop"], env=ENV, timeout=60)
        except Exception as exc:  # noqa: BLE001 - stop the others, then report
            errors.append(f"{script} stop: {exc}")
            continue
        if result.returncode != 0:
            errors.append(f"{script} stop exited {result.returncode}: {result.stdout}{result.stderr}")


def _wait_for_exit(before_pids: set[int], errors: list[str]) -> None:
    """No process of the services left, within a bound; a leftover is ours: killed and reported.

    Courier's imapd leaves gamin's gam_server running as vmail after courier-imap stops
    (a packaging matter, not the installer's): it is killed without being reported.
    """

    def left() -> list[int]:
        return our_processes(before_pids, VMAIL_ID)

    for pid in left():
        if is_gam_server(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: True if not left() else None, timeout=WAIT, what="the services to exit")
    except TimeoutError:
        remaining = left()
        errors.append("processes left after stopping the services:\n" + "\n".join(describe(p) for p in remaining))
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _remove_accounts(errors: list[str]) -> None:
    with contextlib.suppress(KeyError):
        if "postfix" in grp.getgrnam("sasl").gr_mem:
            _undo(["gpasswd", "-d", "postfix", "sasl"], errors)
    with contextlib.suppress(KeyError):
        pwd.getpwnam("vmail")
        _undo(["userdel", "vmail"], errors)
    with contextlib.suppress(KeyError):
        grp.getgrnam("vmail")
        _undo(["groupdel", "vmail"], errors)


def _undo(argv: list[str], errors: list[str]) -> None:
    result = run(argv, env=ENV, timeout=60)
    if result.returncode != 0:
        errors.append(f"`{' '.join(argv)}` exited {result.returncode}: {result.stdout}{result.stderr}")


def _cleanup(before_pids: set[int], snapshot: Snapshot, saved: dict[str, bytes | None]) -> None:
    """Undo everything, in order; report every problem at the end."""
    errors: list[str] = []
    # Every service stopped while its configuration (where its pid file is) is the installed one.
    _stop_everything(errors)
    _wait_for_exit(before_pids, errors)
    with contextlib.suppress(Exception):
        run(["postsuper", "-d", "ALL"], env=ENV, timeout=60)  # no test mail is left queued
    # The installer's own undo.
    if MAILMAPD.exists() and STATE_FILE.exists():
        result = run([str(MAILMAPD), "install", "--uninstall"], env=ENV, timeout=120)
        if result.returncode != 0:
            errors.append(f"mailmapd install --uninstall exited {result.returncode}:\n{result.stdout}{result.stderr}")
    # What install did by command, or the services made, which --uninstall does not undo.
    if snapshot.entries.get("/etc/aliases.db") is None:
        Path("/etc/aliases.db").unlink(missing_ok=True)
    else:
        _undo(["newaliases"], errors)
    for path in (*INIT_LEFTOVERS, *SERVICE_LEFTOVERS, str(MAIL_LOG)):
        target = Path(path)
        if path in saved:
            data = saved[path]
            if data is not None and target.read_bytes() != data:
                target.write_bytes(data)
        elif snapshot.entries.get(path) is None:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
    _remove_accounts(errors)
    shutil.rmtree(VMAIL_HOME, ignore_errors=True)
    for path in ACCOUNT_BACKUPS:
        data = saved[path]
        if data is None:
            Path(path).unlink(missing_ok=True)
        elif Path(path).read_bytes() != data:
            Path(path).write_bytes(data)
    shutil.rmtree(VENV, ignore_errors=True)
    differences = snapshot.differences()
    if differences:
        errors.append("not restored:\n" + "\n".join(differences))
    if errors:
        pytest.fail("restoring the system:\n" + "\n\n".join(errors), pytrace=False)


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    _preconditions()
    db = MariaDB.private()
    try:
        db.open()
    except MissingBinaryError as exc:
        db.close()
        pytest.fail(str(exc), pytrace=False)
    before_pids = all_pids()
    snapshot = Snapshot(TREES, PATHS)
    # Files whose bytes are put back as they were (the log files only if they existed).
    saved = {p: (Path(p).read_bytes() if Path(p).exists() else None) for p in ACCOUNT_BACKUPS}
    saved |= {p: Path(p).read_bytes() for p in INIT_LEFTOVERS if Path(p).is_file()}
    installed: dict[str, bytes] = {}
    try:
        shutil.rmtree(VENV, ignore_errors=True)
        _check(["/usr/bin/python3", "-m", "venv", str(VENV)], "venv")
        _check([str(VENV / "bin" / "pip"), "install", "-q", str(REPO)], "pip install", timeout=600)
        readonly_password, admin_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        install_args = _install_args(db, readonly_password, admin_password)
        output = _check(install_args, "mailmapd install", timeout=300)
        for path in (MAIN_CF, MASTER_CF):
            installed[str(path)] = path.read_bytes()
        _safety()
        user_password = secrets.token_urlsafe(12)
        admin_user_password = secrets.token_urlsafe(12)
        admin = [str(MAILMAPD), "--config", ADMIN_TOML]
        _check([*admin, "domain", "add", DOMAIN], "domain add")
        _check([*admin, "user", "add", USER, "--password-stdin"], "user add", stdin=user_password + "\n")
        _check([*admin, "user", "add", ADMIN, "--password-stdin"], "user add", stdin=admin_user_password + "\n")
        yield System(db, user_password, admin_user_password, output, install_args, installed)
    finally:
        try:
            for name, data in installed.items():
                Path(name).write_bytes(data)
            _cleanup(before_pids, snapshot, saved)
        finally:
            db.close()


# --------------------------------------------------------------------------- helpers


def _mail_log() -> str:
    try:
        return "mail log:\n" + "\n".join(MAIL_LOG.read_text(errors="replace").splitlines()[-40:])
    except OSError:
        return "(no mail log)"


def _wait_for_mail(maildir: Path, marker: str) -> Path:
    def found() -> Path | None:
        for sub in ("new", "cur"):
            directory = maildir / sub
            if directory.is_dir():
                for path in directory.iterdir():
                    if marker in path.read_text(errors="replace"):
                        return path
        return None

    return wait_until(found, timeout=WAIT, what=f"a message with {marker} in {maildir}", diagnostics=_mail_log)


def _unverified_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the installer's certificate is self-signed
    return context


def _send(recipient: str, marker: str) -> None:
    with smtplib.SMTP("127.0.0.1", 25, local_hostname="client.test.localhost", timeout=WAIT) as smtp:
        smtp.sendmail(
            "sender@example.net",
            [recipient],
            f"From: sender@example.net\r\nTo: {recipient}\r\nSubject: {marker}\r\n\r\n{marker}\r\n",
        )


def _smtp_auth_plain(user: str, password: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", 25, local_hostname="client.test.localhost", timeout=WAIT) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls"), "smtpd offers no STARTTLS (smtpd_tls_security_level = may)"
        smtp.starttls(context=_unverified_tls())
        smtp.ehlo()
        assert "PLAIN" in smtp.esmtp_features.get("auth", "").upper().split(), smtp.esmtp_features
        smtp.user, smtp.password = user, password
        try:
            return smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as exc:
            error = exc.smtp_error
            return exc.smtp_code, error if isinstance(error, bytes) else error.encode()


# --------------------------------------------------------------------------- the proof


def test_install_reports_and_services_listen(system: System) -> None:
    assert "FAILED" not in system.install_output, system.install_output
    assert "mailmapd install: done" in system.install_output, system.install_output
    for name in ("smtp", "pop3", "imap", "socketmap", "policy"):
        wait_until(
            lambda port=PORTS[name]: True if port_accepts(port) else None,  # type: ignore[misc]
            timeout=WAIT,
            what=f"{name} on 127.0.0.1:{PORTS[name]}",
        )


def test_postfix_check_is_clean(system: System) -> None:
    result = run(["postfix", "check"], env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_mail_over_smtp_lands_in_the_maildir(system: System) -> None:
    marker = f"marker-{secrets.token_hex(8)}"
    _send(USER, marker)
    path = _wait_for_mail(system.maildir(USER), marker)
    assert path.parent == system.maildir(USER) / "new"
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (VMAIL_ID, VMAIL_ID)


def test_smtp_auth_plain(system: System) -> None:
    code, _ = _smtp_auth_plain(USER, system.user_password)
    assert code == 235  # Authentication successful
    code, message = _smtp_auth_plain(USER, system.user_password + "-wrong")
    assert code == 535, message  # authentication failed


def test_authtest_against_courier(system: System) -> None:
    result = run(["authtest", "-s", "imap", USER, system.user_password], env=ENV, timeout=WAIT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Authentication succeeded." in output, output
    assert f"Maildir: {DOMAIN}/alice/" in output, output
    bad = run(["authtest", "-s", "imap", USER, system.user_password + "-wrong"], env=ENV, timeout=WAIT)
    assert bad.returncode != 0, bad.stdout + bad.stderr


def test_pop3_and_imap_retrieve_the_message(system: System) -> None:
    marker = f"popimap-{secrets.token_hex(8)}"
    _send(USER, marker)
    _wait_for_mail(system.maildir(USER), marker)

    imap = imaplib.IMAP4("127.0.0.1", 143, timeout=WAIT)
    try:
        imap.login(USER, system.user_password)
        status, _ = imap.select("INBOX", readonly=True)
        assert status == "OK"
        status, data = imap.search(None, "SUBJECT", marker)
        assert status == "OK"
        assert data[0], data
        number = data[0].split()[-1]
        status, fetched = imap.fetch(number, "(RFC822)")
        assert status == "OK"
        assert marker.encode() in b"".join(part[1] for part in fetched if isinstance(part, tuple))
    finally:
        with contextlib.suppress(Exception):
            imap.logout()

    pop = poplib.POP3("127.0.0.1", 110, timeout=WAIT)
    try:
        assert pop.getwelcome() == b"+OK Hello there."
        pop.user(USER)
        pop.pass_(system.user_password)
        count, _ = pop.stat()
        bodies = [b"\n".join(pop.retr(i)[1]) for i in range(1, count + 1)]
        assert any(marker.encode() in body for body in bodies), bodies
    finally:
        with contextlib.suppress(Exception):
            pop.quit()
    bad = poplib.POP3("127.0.0.1", 110, timeout=WAIT)
    try:
        bad.user(USER)
        with pytest.raises(poplib.error_proto):
            bad.pass_(system.user_password + "-wrong")
    finally:
        with contextlib.suppress(Exception):
            bad.quit()


def test_mail_to_postmaster_reaches_the_admin(system: System) -> None:
    for recipient in (f"postmaster@{FQDN}", "postmaster@localhost"):
        marker = f"postmaster-{secrets.token_hex(8)}"
        _send(recipient, marker)
        _wait_for_mail(system.maildir(ADMIN), marker)


def _managed() -> dict[str, tuple[str, int, int, int]]:
    state = json.loads(STATE_FILE.read_text())
    out: dict[str, tuple[str, int, int, int]] = {}
    for path in state["files"]:
        st = Path(path).stat()
        out[path] = (hashlib.sha256(Path(path).read_bytes()).hexdigest(), st.st_mode, st.st_uid, st.st_gid)
    return out


def test_second_install_changes_nothing(system: System) -> None:
    # Put back main.cf and master.cf as install wrote them (the test's safety edits aside).
    for path, data in system.installed.items():
        Path(path).write_bytes(data)
    state = json.loads(STATE_FILE.read_text())
    before = _managed()
    for path, (digest, *_rest) in before.items():
        assert digest == state["files"][path]["sha256"], f"{path} differs from the state file"
    state_bytes = STATE_FILE.read_bytes()
    time.sleep(1.1)  # a rewrite would show in the mtime as well
    mtimes = {path: Path(path).stat().st_mtime_ns for path in before}
    result = run(system.install_args, env=ENV, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "mailmapd install: nothing to do" in output, output
    assert _managed() == before
    assert {path: Path(path).stat().st_mtime_ns for path in before} == mtimes
    assert STATE_FILE.read_bytes() == state_bytes

"""Passwords set by `mailmapd user add|passwd` log in through the tutorial's real checkers.

Seed section 6: SMTP AUTH goes through saslauthd -> PAM -> pam_mysql (crypt=1); section 7:
IMAP/POP3 logins go through Courier's authdaemond with authmysql. Both hand the stored hash
to the system's crypt(3) as the salt and compare. mailmapd stores SHA512-crypt (``$6$``); the
tutorial's ENCRYPT() stored DES or MD5-crypt. Here a private saslauthd and a private
authdaemond (tests/support/authpeers.py) read a private MariaDB, and the packages' own
checkers, ``testsaslauthd`` and ``authtest``, say yes or no.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailmapd.admin import HASH_LENGTH
from mailmapd.cli import main
from mailmapd.schema import MYSQL_TABLES
from tests.support.authpeers import (
    VMAIL_HOME,
    VMAIL_ID,
    CourierAuthdaemon,
    MissingPackageError,
    Outcome,
    Saslauthd,
)
from tests.support.mariadb import DatabaseAccount, MariaDB

DOMAIN = "auth.example"
SASL_OK = '0: OK "Success."'
DEFAULT_QUOTA = 10485760  # `mailmapd user add` without --quota: 10M


def system_crypt(password: str, setting: str) -> str:
    """The system's crypt(3), which pam_mysql (crypt=1), authmysql and MySQL's ENCRYPT() call."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    result: bytes | None = lib.crypt(password.encode(), setting.encode())
    assert result is not None, f"crypt(3) refused the setting {setting!r}"
    return result.decode()


# --------------------------------------------------------------------------- fixtures


def sql(account: DatabaseAccount, statement: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    conn = account.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return [tuple(row) for row in cur.fetchall()]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def account(mariadb: MariaDB) -> DatabaseAccount:
    """The tutorial's tables (users.password varchar(128)), empty, in a database of their own."""
    account = mariadb.create_database("auth_peers", "auth_peers_admin", "auth_peers_pw")
    conn = account.connect()
    try:
        with conn.cursor() as cur:
            for table in ("domains", "forwardings", "users", "transport"):
                cur.execute(f"DROP TABLE IF EXISTS {table}")
            for ddl in MYSQL_TABLES:
                cur.execute(ddl)
    finally:
        conn.close()
    return account


@pytest.fixture(scope="module")
def config(account: DatabaseAccount, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mailmapd's configuration for the admin commands, with DOMAIN added through them."""
    path = tmp_path_factory.mktemp("authcfg") / "mailmapd.toml"
    url = f"mysql://{account.user}:{account.password}@{account.host}:{account.port}/{account.database}"
    path.write_text(f'[database]\nurl = "{url}"\n[metrics]\naddress = ""\n[server]\ncontrol_socket = ""\n')
    assert main(["-c", str(path), "domain", "add", DOMAIN]) == 0
    return path


@dataclass
class Cli:
    """``mailmapd -c CONFIG ARGV...`` in this process, as tests/test_admin.py drives it."""

    config: Path
    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch

    def __call__(self, *argv: str, stdin: str | None = None) -> tuple[int, str]:
        if stdin is not None:
            self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        self.capsys.readouterr()
        code = main(["-c", str(self.config), *argv])
        captured = self.capsys.readouterr()
        return code, captured.out + captured.err

    def add_user(self, email: str, password: str) -> None:
        code, output = self("user", "add", email, "--password-stdin", stdin=password + "\n")
        assert code == 0, output

    def passwd(self, email: str, password: str) -> None:
        code, output = self("user", "passwd", email, "--password-stdin", stdin=password + "\n")
        assert code == 0, output


@pytest.fixture
def cli(config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(config, capsys, monkeypatch)


@pytest.fixture(scope="module")
def saslauthd(account: DatabaseAccount) -> Iterator[Saslauthd]:
    """saslauthd -a pam, with /etc/pam.d/mailmapd-test-* holding the seed's pam_mysql lines."""
    try:
        peer = Saslauthd(account)
    except MissingPackageError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        peer.start()
        yield peer
    finally:
        peer.close()
    assert not peer.pam_file.exists()


@pytest.fixture(scope="module")
def authdaemon(account: DatabaseAccount) -> Iterator[CourierAuthdaemon]:
    """Courier authdaemond with the seed's authmodulelist and authmysqlrc."""
    try:
        peer = CourierAuthdaemon(account)
    except MissingPackageError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        peer.start()
        yield peer
    finally:
        peer.close()


# --------------------------------------------------------------------------- checks


def assert_sasl_accepts(saslauthd: Saslauthd, user: str, password: str) -> None:
    outcome = saslauthd.check(user, password)
    assert (outcome.returncode, outcome.output.strip()) == (0, SASL_OK), (
        f"testsaslauthd refused {user}: {outcome}\n{saslauthd.log_tail()}"
    )


def assert_sasl_refuses(saslauthd: Saslauthd, user: str, password: str) -> None:
    outcome = saslauthd.check(user, password)
    assert outcome.returncode != 0, f"testsaslauthd accepted {user} with {password!r}: {outcome}"
    assert outcome.output.strip() == '0: NO "authentication failed"', outcome


def authtest_fields(outcome: Outcome) -> dict[str, str]:
    """authtest's ``Name: value`` lines."""
    fields: dict[str, str] = {}
    for line in outcome.output.splitlines():
        name, colon, value = line.partition(":")
        if colon:
            fields[name.strip()] = value.strip()
    return fields


def assert_courier_accepts(authdaemon: CourierAuthdaemon, user: str, password: str) -> dict[str, str]:
    outcome = authdaemon.check(user, password)
    assert outcome.returncode == 0, f"authtest refused {user}: {outcome}\n{authdaemon.log_tail()}"
    assert outcome.output.startswith("Authentication succeeded."), outcome
    fields = authtest_fields(outcome)
    assert fields["Authenticated"] == f"{user}  (uid {VMAIL_ID}, gid {VMAIL_ID})"
    assert fields["Cleartext Password"] == password
    return fields


def assert_courier_refuses(authdaemon: CourierAuthdaemon, user: str, password: str) -> None:
    outcome = authdaemon.check(user, password)
    assert outcome.returncode != 0, f"authtest accepted {user} with {password!r}: {outcome}"
    assert "Authentication FAILED" in outcome.output, outcome


def stored_hash(account: DatabaseAccount, email: str) -> str:
    rows = sql(account, "SELECT password FROM users WHERE email = %s", (email,))
    assert len(rows) == 1, rows
    value: str = rows[0][0]
    return value


# --------------------------------------------------------------------------- tests


def test_user_add_password_authenticates_through_saslauthd_pam_mysql(
    cli: Cli, account: DatabaseAccount, saslauthd: Saslauthd
) -> None:
    user, password = f"smtp@{DOMAIN}", "correct horse ü battery"
    cli.add_user(user, password)
    stored = stored_hash(account, user)
    assert stored.startswith("$6$")
    assert len(stored) == HASH_LENGTH  # 5000 rounds: no "rounds=" in the hash

    assert_sasl_accepts(saslauthd, user, password)
    assert_sasl_refuses(saslauthd, user, "correct horse u battery")
    assert_sasl_refuses(saslauthd, user, "")
    assert_sasl_refuses(saslauthd, f"nobody@{DOMAIN}", password)


def test_user_add_password_authenticates_through_courier_authmysql(
    cli: Cli, account: DatabaseAccount, authdaemon: CourierAuthdaemon
) -> None:
    user, password = f"imap@{DOMAIN}", "correct horse ü battery"
    cli.add_user(user, password)

    fields = assert_courier_accepts(authdaemon, user, password)
    # The seed's MYSQL_HOME_FIELD and MYSQL_MAILDIR_FIELD, as the query computed them.
    assert fields["Home Directory"] == VMAIL_HOME
    assert fields["Maildir"] == f"{DOMAIN}/imap/"
    assert fields["Quota"] == str(DEFAULT_QUOTA)
    assert fields["Encrypted Password"] == stored_hash(account, user)

    assert_courier_refuses(authdaemon, user, "correct horse u battery")
    assert_courier_refuses(authdaemon, f"nobody@{DOMAIN}", password)
    # POP3 goes through the same module.
    assert authdaemon.check(user, password, service="pop3").returncode == 0


def test_user_passwd_replaces_the_password_for_both(
    cli: Cli, account: DatabaseAccount, saslauthd: Saslauthd, authdaemon: CourierAuthdaemon
) -> None:
    user, old, new = f"changer@{DOMAIN}", "old-Secret-1", "new-Secret-2"
    cli.add_user(user, old)
    assert_sasl_accepts(saslauthd, user, old)
    assert_courier_accepts(authdaemon, user, old)
    old_hash = stored_hash(account, user)

    cli.passwd(user, new)
    new_hash = stored_hash(account, user)
    assert new_hash.startswith("$6$")
    assert new_hash != old_hash

    assert_sasl_refuses(saslauthd, user, old)
    assert_courier_refuses(authdaemon, user, old)
    assert_sasl_accepts(saslauthd, user, new)
    assert_courier_accepts(authdaemon, user, new)


@pytest.mark.parametrize(
    "legacy",
    [
        # (scheme, crypt(3) setting, hash length): ENCRYPT('pw', 'ab'), the form ENCRYPT('pw') wrote
        pytest.param(("des", "ab", 13), id="des-crypt"),
        pytest.param(("md5", "$1$saltsalt", 34), id="md5-crypt"),  # ENCRYPT('pw', '$1$saltsalt')
    ],
)
def test_legacy_encrypt_hash_authenticates_through_both(
    cli: Cli,
    account: DatabaseAccount,
    saslauthd: Saslauthd,
    authdaemon: CourierAuthdaemon,
    legacy: tuple[str, str, int],
) -> None:
    """A row as the tutorial's INSERT ... ENCRYPT('secret') left it, before mailmapd existed."""
    scheme, setting, length = legacy
    user, password = f"legacy-{scheme}@{DOMAIN}", "legacy1"
    legacy_hash = system_crypt(password, setting)
    assert len(legacy_hash) == length, legacy_hash
    sql(
        account,
        "INSERT INTO users (email, password, quota) VALUES (%s, %s, %s)",
        (user, legacy_hash, DEFAULT_QUOTA),
    )

    assert_sasl_accepts(saslauthd, user, password)
    assert_courier_accepts(authdaemon, user, password)
    assert_sasl_refuses(saslauthd, user, "legacy2")
    assert_courier_refuses(authdaemon, user, "legacy2")

    # `user passwd` moves the row to SHA512-crypt, and both still agree.
    cli.passwd(user, "modern-2")
    assert stored_hash(account, user).startswith("$6$")
    assert_sasl_refuses(saslauthd, user, password)
    assert_courier_refuses(authdaemon, user, password)
    assert_sasl_accepts(saslauthd, user, "modern-2")
    assert_courier_accepts(authdaemon, user, "modern-2")

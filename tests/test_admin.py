"""The admin commands (`mailmapd domain|user|alias|transport`) on SQLite and on MariaDB.

Every test drives ``mailmapd.cli.main`` with a real configuration file and checks the exit
status, what it printed, and what the database then holds (read back with plain SQL), and
for changes that Postfix sees, what the resolver (``mailmapd query``) answers.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import getpass
import io
import json
import os
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from mailmapd import admin
from mailmapd.admin import HASH_LENGTH, format_size, hash_password, parse_quota, password_scheme, verify_password
from mailmapd.cli import main
from mailmapd.config import load_config
from mailmapd.control import ControlServer
from mailmapd.daemon import App
from mailmapd.proto import Found, NotFound
from mailmapd.schema import MYSQL_TABLES, SQLITE_TABLES, mysql_change_tracking, sqlite_change_tracking
from tests.support.mariadb import DatabaseAccount, MariaDB
from tests.support.ports import free_port

OK, NOT_FOUND, USAGE, DATAERR, CANTCREAT, TEMPFAIL, CONFIG = 0, 1, 64, 65, 73, 75, 78
ANY_TEXT: Any = mock.ANY

# What MySQL's ENCRYPT() stored: the system crypt(3) with a 2-character (DES) or "$1$" (MD5) salt.
DES_TEST = "abgOeLfPimXQo"  # crypt("test", "ab")
MD5_TEST = "$1$saltsalt$tTWg0JeO/sYmHvtKmZE8c."  # crypt("test", "$1$saltsalt")


def system_crypt(password: str, setting: str) -> str:
    """The system's crypt(3), as pam_mysql (crypt=1) and Courier's authmysql call it."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    result: bytes | None = lib.crypt(password.encode(), setting.encode())
    assert result is not None
    return result.decode()


# --------------------------------------------------------------------------- fixtures


@dataclass
class Database:
    """One test's database, with plain SQL access (``?`` placeholders on both)."""

    kind: str
    url: str
    path: Path | None = None
    account: DatabaseAccount | None = None

    def sql(self, statement: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        if self.path is not None:
            with closing(sqlite3.connect(self.path)) as conn:
                rows = conn.execute(statement, tuple(params)).fetchall()
                conn.commit()
                return [tuple(r) for r in rows]
        assert self.account is not None
        conn = self.account.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(statement.replace("?", "%s"), tuple(params))
                return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.close()

    def column(self, statement: str, params: Sequence[object] = ()) -> list[Any]:
        return [row[0] for row in self.sql(statement, params)]


@pytest.fixture(scope="session")
def admin_account(mariadb: MariaDB) -> DatabaseAccount:
    return mariadb.create_database("admin_test", "admin_user", "pw")


@pytest.fixture(params=["sqlite", "mariadb"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """Empty tutorial tables with change tracking, created afresh for each test."""
    if request.param == "sqlite":
        path = tmp_path / "mail.db"
        with closing(sqlite3.connect(path)) as conn:
            for ddl in (*SQLITE_TABLES, *sqlite_change_tracking()):
                conn.execute(ddl)
            conn.commit()
        return Database("sqlite", f"sqlite://{path}", path=path)
    account: DatabaseAccount = request.getfixturevalue("admin_account")
    conn = account.connect()
    try:
        with conn.cursor() as cur:
            for table in ("domains", "forwardings", "users", "transport", "mailmapd_changes"):
                cur.execute(f"DROP TABLE IF EXISTS {table}")
            for ddl in (*MYSQL_TABLES, *mysql_change_tracking()):
                cur.execute(ddl)
    finally:
        conn.close()
    url = f"mysql://{account.user}:{account.password}@{account.host}:{account.port}/{account.database}"
    return Database("mariadb", url, account=account)


def write_config(
    path: Path, url: str, *, control_socket: str = "", extra: str = "", connect_timeout: float = 2.0
) -> Path:
    path.write_text(
        f'log_level = "warning"\n[database]\nurl = "{url}"\nconnect_timeout = {connect_timeout}\n'
        f'[metrics]\naddress = ""\n[server]\ncontrol_socket = "{control_socket}"\n{extra}'
    )
    return path


@dataclass
class Outcome:
    code: int
    out: str
    err: str


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@dataclass
class Cli:
    """``mailmapd -c CONFIG ARGV...`` in this process; stdin is a string when given."""

    config: Path
    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch

    def __call__(self, *argv: str, stdin: str | None = None) -> Outcome:
        if stdin is not None:
            self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        self.capsys.readouterr()
        code = main(["-c", str(self.config), *argv])
        captured = self.capsys.readouterr()
        return Outcome(code, captured.out, captured.err)


CliFactory = Callable[[Path], Cli]


@pytest.fixture
def make_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> CliFactory:
    """A Cli for a configuration file."""
    return lambda config: Cli(config, capsys, monkeypatch)


@pytest.fixture
def cli(db: Database, tmp_path: Path, make_cli: CliFactory) -> Cli:
    return make_cli(write_config(tmp_path / "mailmapd.toml", db.url))


@pytest.fixture
def example(cli: Cli) -> Cli:
    """example.test exists."""
    assert cli("domain", "add", "example.test").code == OK
    return cli


def add_user(cli: Cli, email: str, typed: str = "secret", *extra: str) -> Outcome:
    return cli("user", "add", email, "--password-stdin", *extra, stdin=typed + "\n")


def error_of(outcome: Outcome) -> str:
    """The one line a failing command prints: ``mailmapd: ...``."""
    assert outcome.out == ""
    lines = outcome.err.splitlines()
    assert len(lines) == 1, outcome.err
    assert lines[0].startswith("mailmapd: ")
    return lines[0]


# --------------------------------------------------------------------------- domain


def test_domain_add_list_remove(cli: Cli, db: Database) -> None:
    added = cli("domain", "add", "Example.TEST")
    assert (added.code, added.out, added.err) == (OK, "added domain example.test\n", "")
    assert db.column("SELECT domain FROM domains") == ["example.test"]
    assert cli("domain", "add", "other.test").code == OK
    add_user(cli, "a@example.test")
    assert cli("alias", "add", "b@example.test", "a@example.test").code == OK

    listed = cli("domain", "list")
    assert listed.code == OK
    assert listed.out.splitlines() == [
        "DOMAIN        USERS  ALIASES",
        "example.test  1      1",
        "other.test    0      0",
    ]
    as_json = cli("domain", "list", "--json")
    assert json.loads(as_json.out) == [
        {"domain": "example.test", "users": 1, "aliases": 1},
        {"domain": "other.test", "users": 0, "aliases": 0},
    ]

    removed = cli("domain", "remove", "OTHER.test")
    assert (removed.code, removed.out) == (OK, "removed domain other.test\n")
    assert db.column("SELECT domain FROM domains") == ["example.test"]
    assert cli("query", "domains", "other.test").code == NOT_FOUND


def test_domain_list_empty(cli: Cli) -> None:
    assert cli("domain", "list").out == "no domains\n"
    assert json.loads(cli("domain", "list", "--json").out) == []


def test_internationalised_domain_is_stored_in_ascii(cli: Cli, db: Database) -> None:
    added = cli("domain", "add", "Bücher.example")
    assert (added.code, added.out) == (OK, "added domain xn--bcher-kva.example (bücher.example)\n")
    assert db.column("SELECT domain FROM domains") == ["xn--bcher-kva.example"]
    assert cli("domain", "add", "xn--bcher-kva.example").code == CANTCREAT
    assert add_user(cli, "Info@bücher.example").code == OK
    assert db.column("SELECT email FROM users") == ["info@xn--bcher-kva.example"]
    found = cli("query", "mailboxes", "info@xn--bcher-kva.example")
    assert (found.code, found.out) == (OK, "xn--bcher-kva.example/info/\n")


def test_domain_add_duplicate(example: Cli) -> None:
    duplicate = example("domain", "add", "EXAMPLE.test")
    assert duplicate.code == CANTCREAT
    assert error_of(duplicate) == "mailmapd: domain example.test exists already"


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        pytest.param("", "empty domain", id="empty"),
        pytest.param(
            "ex_ample.test", "label 'ex_ample' may hold only letters, digits and inner hyphens", id="underscore"
        ),
        pytest.param("-a.test", "label '-a' may hold only", id="leading-hyphen"),
        pytest.param("a..test", "is not a valid domain name (label empty or too long)", id="empty-label"),
        pytest.param("x" * 64 + ".test", "label empty or too long", id="long-label"),
        pytest.param("localhost", "is not a fully qualified domain name", id="one-label"),
        pytest.param("192.0.2.1", "looks like an IP address", id="ip"),
        pytest.param("example.test.", "without the trailing dot", id="trailing-dot"),
        pytest.param("exa mple.test", "contains whitespace", id="space"),
        pytest.param("straße.test", "the two IDNA standards encode differently", id="idna-deviation"),
        pytest.param("xn--zz.test", "incomplete punicode string", id="bad-punycode"),
        pytest.param("a" * 46 + ".test", "is 51 characters long; the domains.domain column holds 50", id="too-long"),
    ],
)
def test_domain_add_refuses_invalid_names(cli: Cli, db: Database, domain: str, message: str) -> None:
    outcome = cli("domain", "add", "--", domain)  # "--": "-a.test" is not an option
    assert outcome.code == DATAERR
    assert message in error_of(outcome)
    assert db.column("SELECT domain FROM domains") == []


def test_domain_remove_absent(cli: Cli) -> None:
    outcome = cli("domain", "remove", "nowhere.test")
    assert outcome.code == NOT_FOUND
    assert error_of(outcome) == "mailmapd: no domain nowhere.test"


def test_domain_remove_refuses_while_users_or_aliases_remain(example: Cli, db: Database) -> None:
    add_user(example, "a@example.test")
    outcome = example("domain", "remove", "example.test")
    assert outcome.code == DATAERR
    assert "still has 1 user(s) and 0 alias(es)" in error_of(outcome)
    assert "--cascade" in outcome.err
    example("user", "remove", "a@example.test")
    example("alias", "add", "@example.test", "postmaster@other.test")
    outcome = example("domain", "remove", "example.test")
    assert outcome.code == DATAERR
    assert "still has 0 user(s) and 1 alias(es)" in outcome.err
    assert db.column("SELECT domain FROM domains") == ["example.test"]


def test_domain_remove_cascade(example: Cli, db: Database) -> None:
    example("domain", "add", "other.test")
    example("domain", "add", "sub.example.test")
    add_user(example, "a@example.test")
    add_user(example, "b@example.test")
    add_user(example, "a@other.test")
    add_user(example, "a@sub.example.test")
    example("alias", "add", "@example.test", "a@example.test")
    example("alias", "add", "x@other.test", "a@example.test")  # points into the domain: kept
    for key in ("example.test", ".example.test", "a@example.test", "other.test", "sub.example.test"):
        assert example("transport", "set", key, "smtp:[relay.test]").code == OK

    outcome = example("domain", "remove", "example.test", "--cascade")
    assert outcome.code == OK
    assert outcome.out == "removed domain example.test with 2 user(s), 1 alias(es) and 3 transport entries\n"
    assert "mailboxes on disk are kept" in outcome.err
    assert sorted(db.column("SELECT domain FROM domains")) == ["other.test", "sub.example.test"]
    assert sorted(db.column("SELECT email FROM users")) == ["a@other.test", "a@sub.example.test"]
    assert db.column("SELECT source FROM forwardings") == ["x@other.test"]
    assert sorted(db.column("SELECT domain FROM transport")) == ["other.test", "sub.example.test"]
    assert example("query", "mailboxes", "a@example.test").code == NOT_FOUND


def test_domain_remove_keeps_transport_entries_and_says_so(example: Cli, db: Database) -> None:
    example("transport", "set", "example.test", "smtp:[relay.test]")
    outcome = example("domain", "remove", "example.test")
    assert (outcome.code, outcome.out) == (OK, "removed domain example.test\n")
    assert "kept the transport entries example.test" in outcome.err
    assert db.column("SELECT domain FROM transport") == ["example.test"]


# --------------------------------------------------------------------------- user


def test_user_add_is_found_by_the_resolver_and_its_hash_verifies(example: Cli, db: Database) -> None:
    outcome = add_user(example, "Sales@Example.test", "correct horse")
    assert (outcome.code, outcome.out, outcome.err) == (OK, "added user sales@example.test (quota 10M)\n", "")
    [(email, stored, quota)] = db.sql("SELECT email, password, quota FROM users")
    assert (email, quota) == ("sales@example.test", 10485760)
    assert stored.startswith("$6$")
    assert len(stored) == HASH_LENGTH
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsE", stored)
    # What pam_mysql (crypt=1) and Courier's authmysql do: crypt(3) with the stored hash as salt.
    assert system_crypt("correct horse", stored) == stored
    assert system_crypt("wrong", stored) != stored

    found = example("query", "mailboxes", "Sales+tag@EXAMPLE.test")
    assert (found.code, found.out) == (OK, "example.test/sales/\n")
    assert example("query", "quota", "sales@example.test").out == "10485760\n"
    assert example("query", "aliases", "sales@example.test").out == "sales@example.test\n"


def test_password_from_the_terminal_is_asked_twice(example: Cli, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: Any = None) -> str:
        prompts.append(prompt)
        return "typed secret"

    monkeypatch.setattr(sys, "stdin", FakeTerminal())
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    assert example("user", "add", "a@example.test").code == OK
    assert prompts == ["New password: ", "Retype new password: "]
    assert verify_password("typed secret", db.column("SELECT password FROM users")[0])


def test_passwords_that_differ_change_nothing(example: Cli, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["first", "second"])
    monkeypatch.setattr(sys, "stdin", FakeTerminal())
    monkeypatch.setattr(getpass, "getpass", lambda prompt="", stream=None: next(answers))
    outcome = example("user", "add", "a@example.test")
    assert outcome.code == DATAERR
    assert error_of(outcome) == "mailmapd: the two passwords differ; nothing was changed"
    assert db.column("SELECT email FROM users") == []


def test_password_needs_a_terminal_or_password_stdin(example: Cli, db: Database) -> None:
    outcome = example("user", "add", "a@example.test", stdin="secret\n")  # a pipe, no --password-stdin
    assert outcome.code == USAGE
    assert "add --password-stdin" in error_of(outcome)
    assert db.column("SELECT email FROM users") == []


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        pytest.param("\n", "empty password refused", id="empty"),
        pytest.param("", "no password on stdin", id="eof"),
        pytest.param("a\0b\n", "NUL or newline", id="nul"),
        pytest.param("x" * 1025 + "\n", "longer than 1024 characters", id="too-long"),
    ],
)
def test_password_stdin_refuses_bad_passwords(example: Cli, db: Database, stdin: str, message: str) -> None:
    outcome = example("user", "add", "a@example.test", "--password-stdin", stdin=stdin)
    assert outcome.code == DATAERR
    assert message in error_of(outcome)
    assert db.column("SELECT email FROM users") == []


def test_password_stdin_takes_the_first_line_only(example: Cli, db: Database) -> None:
    assert example("user", "add", "a@example.test", "--password-stdin", stdin="pass word\r\nsecond line\n").code == OK
    assert verify_password("pass word", db.column("SELECT password FROM users")[0])


@pytest.mark.parametrize(
    ("size", "stored", "shown"),
    [
        pytest.param("10M", 10485760, "10M", id="M"),
        pytest.param("1G", 1073741824, "1G", id="G"),
        pytest.param("512K", 524288, "512K", id="K"),
        pytest.param("1000", 1000, "1000", id="bytes"),
        pytest.param("0", 0, "unlimited", id="unlimited"),
        pytest.param("20mb", 20971520, "20M", id="MB"),
        pytest.param("1GiB", 1073741824, "1G", id="GiB"),
    ],
)
def test_user_add_with_quota(example: Cli, db: Database, size: str, stored: int, shown: str) -> None:
    outcome = add_user(example, "a@example.test", "secret", "--quota", size)
    assert (outcome.code, outcome.out) == (OK, f"added user a@example.test (quota {shown})\n")
    assert db.column("SELECT quota FROM users") == [stored]
    assert example("query", "quota", "a@example.test").out == f"{stored}\n"


@pytest.mark.parametrize(
    "size",
    [
        pytest.param("ten", id="word"),
        pytest.param("-1", id="negative"),
        pytest.param("1.5G", id="fraction"),
        pytest.param("10X", id="unit"),
        pytest.param("", id="empty"),
        pytest.param("M", id="no-number"),
    ],
)
def test_quota_that_is_not_a_size(example: Cli, db: Database, size: str) -> None:
    outcome = add_user(example, "a@example.test", "secret", "--quota", size)
    assert outcome.code == DATAERR
    assert f"quota {size!r} is not a size" in error_of(outcome)
    add_user(example, "b@example.test")
    outcome = example("user", "quota", "b@example.test", size)
    assert outcome.code == DATAERR
    assert db.sql("SELECT email, quota FROM users") == [("b@example.test", 10485760)]


def test_quota_larger_than_the_column(example: Cli, db: Database) -> None:
    outcome = add_user(example, "a@example.test", "secret", "--quota", "2G")
    assert outcome.code == DATAERR
    assert "the users.quota column (INT) holds at most 2147483647" in error_of(outcome)
    assert db.column("SELECT email FROM users") == []


def test_user_add_in_a_domain_that_does_not_exist(cli: Cli, db: Database) -> None:
    outcome = add_user(cli, "a@nowhere.test")
    assert outcome.code == DATAERR
    assert error_of(outcome) == (
        "mailmapd: domain nowhere.test does not exist, so it cannot have users:"
        " add it first with `mailmapd domain add nowhere.test`"
    )
    assert db.column("SELECT email FROM users") == []


def test_user_add_duplicate(example: Cli, db: Database) -> None:
    add_user(example, "a@example.test", "first")
    outcome = add_user(example, "A@Example.TEST", "second")
    assert outcome.code == CANTCREAT
    assert "user a@example.test exists already" in error_of(outcome)
    assert verify_password("first", db.column("SELECT password FROM users")[0])


@pytest.mark.parametrize(
    ("email", "message"),
    [
        pytest.param("no-at.example.test", "is not an address (local@domain)", id="no-at"),
        pytest.param("a@b@example.test", "is not an address", id="two-ats"),
        pytest.param("@example.test", "has no local part", id="no-local"),
        pytest.param(".a@example.test", "the local part '.a' may hold only", id="leading-dot"),
        pytest.param("a..b@example.test", "the local part 'a..b' may hold only", id="double-dot"),
        pytest.param("a/b@example.test", "the local part 'a/b' may hold only", id="slash"),
        pytest.param('"a b"@example.test', "may hold only", id="quoted"),
        pytest.param("x" * 65 + "@example.test", "longer than 64 characters", id="long-local"),
        pytest.param("a@exa_mple.test", "label 'exa_mple'", id="bad-domain"),
        pytest.param(
            "l" * 40 + "@" + "d" * 40 + ".test", "is 86 characters long; the users.email column holds 80", id="too-long"
        ),
    ],
)
def test_user_add_refuses_invalid_addresses(example: Cli, db: Database, email: str, message: str) -> None:
    outcome = add_user(example, email)
    assert outcome.code == DATAERR
    assert message in error_of(outcome)
    assert db.column("SELECT email FROM users") == []


def test_user_remove(example: Cli, db: Database) -> None:
    add_user(example, "a@example.test")
    add_user(example, "b@example.test")
    outcome = example("user", "remove", "A@example.test")
    assert (outcome.code, outcome.out) == (OK, "removed user a@example.test\n")
    assert outcome.err == "mailmapd: the mailbox on disk is kept: remove it under virtual_mailbox_base yourself\n"
    assert db.column("SELECT email FROM users") == ["b@example.test"]
    assert example("query", "mailboxes", "a@example.test").code == NOT_FOUND
    example("alias", "add", "b@example.test", "b@example.test,c@other.test")  # keeps a copy
    with_alias = example("user", "remove", "b@example.test")
    assert with_alias.code == OK
    assert "the alias b@example.test still exists: `mailmapd alias remove b@example.test` removes it" in with_alias.err
    again = example("user", "remove", "a@example.test")
    assert again.code == NOT_FOUND
    assert error_of(again) == "mailmapd: no user a@example.test"


@pytest.mark.parametrize("legacy", [pytest.param(DES_TEST, id="des"), pytest.param(MD5_TEST, id="md5")])
def test_user_passwd_replaces_a_legacy_hash(example: Cli, db: Database, legacy: str) -> None:
    db.sql("INSERT INTO users (email, password, quota) VALUES (?, ?, ?)", ("old@example.test", legacy, 1024))
    assert verify_password("test", legacy)
    assert not verify_password("tesT", legacy)
    scheme = "des-crypt" if legacy == DES_TEST else "md5-crypt"
    listed = json.loads(example("user", "list", "--json").out)
    assert listed == [{"email": "old@example.test", "quota": 1024, "scheme": scheme}]

    outcome = example("user", "passwd", "Old@example.test", "--password-stdin", stdin="new secret\n")
    assert outcome.code == OK
    assert outcome.out == f"changed the password of old@example.test (its {scheme} hash is now sha512-crypt)\n"
    [(stored, quota)] = db.sql("SELECT password, quota FROM users")
    assert quota == 1024
    assert stored.startswith("$6$")
    assert verify_password("new secret", stored)
    assert not verify_password("test", stored)
    assert system_crypt("new secret", stored) == stored
    assert password_scheme(stored) == "sha512-crypt"


def test_user_passwd_on_a_current_hash(example: Cli, db: Database) -> None:
    add_user(example, "a@example.test", "one")
    outcome = example("user", "passwd", "a@example.test", "--password-stdin", stdin="two\n")
    assert (outcome.code, outcome.out) == (OK, "changed the password of a@example.test\n")
    assert verify_password("two", db.column("SELECT password FROM users")[0])


def test_user_passwd_absent(example: Cli) -> None:
    outcome = example("user", "passwd", "nobody@example.test", "--password-stdin", stdin="x\n")
    assert outcome.code == NOT_FOUND
    assert error_of(outcome) == "mailmapd: no user nobody@example.test"


def test_user_quota(example: Cli, db: Database) -> None:
    add_user(example, "a@example.test")
    outcome = example("user", "quota", "a@example.test", "1G")
    assert (outcome.code, outcome.out) == (OK, "quota of a@example.test: 1G\n")
    assert db.column("SELECT quota FROM users") == [1073741824]
    assert example("query", "quota", "a@example.test").out == "1073741824\n"
    assert example("user", "quota", "a@example.test", "0").out == "quota of a@example.test: unlimited\n"
    assert db.column("SELECT quota FROM users") == [0]
    absent = example("user", "quota", "b@example.test", "1G")
    assert absent.code == NOT_FOUND
    assert error_of(absent) == "mailmapd: no user b@example.test"


def test_user_list(example: Cli, db: Database) -> None:
    example("domain", "add", "other.test")
    add_user(example, "zed@example.test", "x", "--quota", "1G")
    add_user(example, "amy@example.test", "x", "--quota", "1000")
    add_user(example, "bob@other.test", "x", "--quota", "0")
    db.sql("INSERT INTO users (email, password, quota) VALUES (?, ?, ?)", ("old@other.test", DES_TEST, 10485760))

    listed = example("user", "list")
    assert listed.code == OK
    assert listed.out.splitlines() == [
        "EMAIL             QUOTA      PASSWORD",
        "amy@example.test  1000       sha512-crypt",
        "zed@example.test  1G         sha512-crypt",
        "bob@other.test    unlimited  sha512-crypt",
        "old@other.test    10M        des-crypt",
    ]
    as_json = example("user", "list", "other.test", "--json")
    assert "$6$" not in as_json.out  # hashes never leave the database
    assert json.loads(as_json.out) == [
        {"email": "bob@other.test", "quota": 0, "scheme": "sha512-crypt"},
        {"email": "old@other.test", "quota": 10485760, "scheme": "des-crypt"},
    ]
    example("domain", "add", "empty.test")
    assert example("user", "list", "empty.test").out == "no users\n"
    unknown = example("user", "list", "nowhere.test")
    assert unknown.code == NOT_FOUND
    assert error_of(unknown) == "mailmapd: no domain nowhere.test"


# --------------------------------------------------------------------------- alias


def test_alias_add_with_several_destinations_and_a_catch_all(example: Cli, db: Database) -> None:
    add_user(example, "sales@example.test")
    outcome = example("alias", "add", "Info@example.test", "sales@example.test,Boss@Bücher.example", "ops@other.test")
    assert (outcome.code, outcome.err) == (OK, "")
    assert (
        outcome.out
        == "added alias info@example.test -> sales@example.test, Boss@xn--bcher-kva.example, ops@other.test\n"
    )
    assert db.sql("SELECT source, destination FROM forwardings") == [
        ("info@example.test", "sales@example.test,Boss@xn--bcher-kva.example,ops@other.test")
    ]
    resolved = example("query", "aliases", "info+tag@example.test")
    assert resolved.out == "sales+tag@example.test,Boss+tag@xn--bcher-kva.example,ops+tag@other.test\n"

    assert example("alias", "add", "@Example.test", "sales@example.test").code == OK
    assert db.column("SELECT destination FROM forwardings WHERE source = ?", ("@example.test",)) == [
        "sales@example.test"
    ]
    catch_all = example("query", "aliases", "anyone@example.test")
    assert (catch_all.code, catch_all.out) == (OK, "sales@example.test\n")


def test_alias_add_appends_and_refuses_duplicates(example: Cli, db: Database) -> None:
    example("alias", "add", "info@example.test", "a@other.test")
    outcome = example("alias", "add", "info@example.test", "A@other.test, b@other.test")
    assert (outcome.code, outcome.out) == (
        OK,
        "alias info@example.test -> a@other.test, b@other.test (added b@other.test)\n",
    )
    assert db.column("SELECT destination FROM forwardings") == ["a@other.test,b@other.test"]
    duplicate = example("alias", "add", "info@example.test", "b@other.test", "a@OTHER.test")
    assert duplicate.code == CANTCREAT
    assert error_of(duplicate) == "mailmapd: alias info@example.test forwards to b@other.test, a@other.test already"
    assert db.column("SELECT destination FROM forwardings") == ["a@other.test,b@other.test"]


def test_alias_in_a_domain_that_does_not_exist(cli: Cli, db: Database) -> None:
    for source in ("info@nowhere.test", "@nowhere.test"):
        outcome = cli("alias", "add", source, "a@example.test")
        assert outcome.code == DATAERR
        assert "domain nowhere.test does not exist, so it cannot have aliases" in error_of(outcome)
    assert db.column("SELECT source FROM forwardings") == []


def test_alias_that_points_to_itself(example: Cli, db: Database) -> None:
    outcome = example("alias", "add", "info@example.test", "Info@example.test")
    assert outcome.code == DATAERR
    assert error_of(outcome) == (
        "mailmapd: alias info@example.test points to itself, and info@example.test is not a mailbox: mail to it would bounce"
    )
    outcome = example("alias", "add", "info@example.test", "other@other.test,info@example.test")
    assert outcome.code == DATAERR
    add_user(example, "sales@example.test")
    outcome = example("alias", "add", "sales@example.test", "sales@example.test")
    assert outcome.code == DATAERR
    assert "points only to itself" in error_of(outcome)
    assert db.column("SELECT source FROM forwardings") == []


def test_a_mailbox_may_forward_and_keep_a_copy(example: Cli, db: Database) -> None:
    add_user(example, "sales@example.test")
    outcome = example("alias", "add", "sales@example.test", "sales@example.test", "boss@other.test")
    assert (outcome.code, outcome.err) == (OK, "")
    assert example("query", "aliases", "sales@example.test").out == "sales@example.test,boss@other.test\n"


def test_an_alias_over_a_mailbox_says_where_mail_goes(example: Cli) -> None:
    add_user(example, "sales@example.test")
    outcome = example("alias", "add", "sales@example.test", "boss@other.test")
    assert outcome.code == OK
    assert "sales@example.test is also a mailbox: its mail now goes only to the destinations" in outcome.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["info@example.test", "@other.test"],
            "a destination is a full address, not a catch-all",
            id="catch-all-destination",
        ),
        pytest.param(["info@example.test", "nobody"], "destination 'nobody' is not an address", id="no-domain"),
        pytest.param(["info@example.test", "a@bad_domain.test"], "label 'bad_domain'", id="bad-destination-domain"),
        pytest.param(["info@example.test", ", ,"], "no destination address given", id="only-commas"),
        pytest.param(
            ["info@@example.test", "a@other.test"], "alias 'info@@example.test' is not an address", id="bad-source"
        ),
        pytest.param(["@", "a@other.test"], "empty catch-all domain", id="bare-at"),
        pytest.param(["x" * 70 + "@example.test", "a@other.test"], "longer than 64 characters", id="long-local"),
        pytest.param(
            ["l" * 60 + "@" + "d" * 20 + ".test", "a@other.test"],
            "the forwardings.source column holds 80",
            id="too-long",
        ),
    ],
)
def test_alias_add_refuses_invalid_input(example: Cli, db: Database, args: list[str], message: str) -> None:
    outcome = example("alias", "add", *args)
    assert outcome.code == DATAERR
    assert message in error_of(outcome)
    assert db.column("SELECT source FROM forwardings") == []


def test_alias_remove(example: Cli, db: Database) -> None:
    example("alias", "add", "info@example.test", "a@other.test,b@other.test,c@other.test")
    example("alias", "add", "@example.test", "a@other.test")
    outcome = example("alias", "remove", "info@example.test", "B@other.test")
    assert (outcome.code, outcome.out) == (OK, "alias info@example.test -> a@other.test, c@other.test\n")
    assert db.column("SELECT destination FROM forwardings WHERE source = ?", ("info@example.test",)) == [
        "a@other.test,c@other.test"
    ]
    missing = example("alias", "remove", "info@example.test", "z@other.test")
    assert missing.code == NOT_FOUND
    assert error_of(missing) == "mailmapd: alias info@example.test does not forward to z@other.test"
    last = example("alias", "remove", "info@example.test", "a@other.test", "c@other.test")
    assert (last.code, last.out) == (OK, "removed alias info@example.test (no destination left)\n")
    whole = example("alias", "remove", "@EXAMPLE.test")
    assert (whole.code, whole.out) == (OK, "removed alias @example.test\n")
    assert db.column("SELECT source FROM forwardings") == []
    absent = example("alias", "remove", "info@example.test")
    assert absent.code == NOT_FOUND
    assert error_of(absent) == "mailmapd: no alias info@example.test"
    assert example("query", "aliases", "info@example.test").code == NOT_FOUND


def test_alias_list(example: Cli, db: Database) -> None:
    example("domain", "add", "other.test")
    example("alias", "add", "info@example.test", "a@other.test", "b@other.test")
    example("alias", "add", "@example.test", "a@other.test")
    example("alias", "add", "x@other.test", "a@example.test")
    listed = example("alias", "list")
    assert listed.out.splitlines() == [
        "SOURCE             DESTINATIONS",
        "@example.test      a@other.test",
        "info@example.test  a@other.test, b@other.test",
        "x@other.test       a@example.test",
    ]
    assert json.loads(example("alias", "list", "example.test", "--json").out) == [
        {"source": "@example.test", "destinations": ["a@other.test"]},
        {"source": "info@example.test", "destinations": ["a@other.test", "b@other.test"]},
    ]
    example("domain", "add", "empty.test")
    assert example("alias", "list", "empty.test").out == "no aliases\n"
    assert example("alias", "list", "nowhere.test").code == NOT_FOUND


# --------------------------------------------------------------------------- transport


def test_transport_set_change_remove(cli: Cli, db: Database) -> None:
    outcome = cli("transport", "set", "Example.test", "smtp:[relay.test]:25")
    assert (outcome.code, outcome.out) == (OK, "transport example.test -> smtp:[relay.test]:25\n")
    for key, value in (
        (".example.test", "relay:"),
        ("Boss@example.test", "error:5.1.1 gone"),
        ("*", "smtp:"),
        ("bücher.example", "lmtp:unix:private/lmtp"),
    ):
        assert cli("transport", "set", key, value).code == OK
    assert sorted(db.sql("SELECT domain, transport FROM transport")) == [
        ("*", "smtp:"),
        (".example.test", "relay:"),
        ("boss@example.test", "error:5.1.1 gone"),
        ("example.test", "smtp:[relay.test]:25"),
        ("xn--bcher-kva.example", "lmtp:unix:private/lmtp"),
    ]
    assert cli("query", "transports", "a@example.test").out == "smtp:[relay.test]:25\n"
    assert cli("query", "transports", "a@sub.example.test").out == "relay:\n"
    assert cli("query", "transports", "boss+x@example.test").out == "error:5.1.1 gone\n"
    assert cli("query", "transports", "a@elsewhere.test").out == "smtp:\n"

    changed = cli("transport", "set", "example.test", "virtual:")
    assert (changed.code, changed.out) == (OK, "transport example.test -> virtual: (was smtp:[relay.test]:25)\n")
    same = cli("transport", "set", "example.test", "virtual:")
    assert (same.code, same.out) == (OK, "transport example.test -> virtual: (unchanged)\n")
    assert db.column("SELECT transport FROM transport WHERE domain = ?", ("example.test",)) == ["virtual:"]

    removed = cli("transport", "remove", "EXAMPLE.test")
    assert (removed.code, removed.out) == (OK, "removed transport example.test\n")
    absent = cli("transport", "remove", "example.test")
    assert absent.code == NOT_FOUND
    assert error_of(absent) == "mailmapd: no transport example.test"
    # ".example.test" matches subdomains only, so example.test itself now falls through to "*".
    assert cli("query", "transports", "a@example.test").out == "smtp:\n"


def test_transport_list(cli: Cli) -> None:
    assert cli("transport", "list").out == "no transports\n"
    cli("transport", "set", "example.test", "smtp:[relay.test]")
    cli("transport", "set", ".example.test", "relay:")
    assert cli("transport", "list").out.splitlines() == [
        "KEY            TRANSPORT",
        ".example.test  relay:",
        "example.test   smtp:[relay.test]",
    ]
    assert json.loads(cli("transport", "list", "--json").out) == [
        {"key": ".example.test", "transport": "relay:"},
        {"key": "example.test", "transport": "smtp:[relay.test]"},
    ]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        pytest.param("@example.test", "smtp:", "transport_maps has no @domain keys", id="catch-all-key"),
        pytest.param("bad_key.test", "smtp:", "label 'bad_key'", id="bad-key"),
        pytest.param("..example.test", "smtp:", "not a valid domain name", id="double-dot-key"),
        pytest.param(
            "x" * 60 + "." + "y" * 60 + "." + "z" * 10, "smtp:", "the transport.domain column holds 128", id="long-key"
        ),
        pytest.param("example.test", "", "empty, or leading or trailing whitespace", id="empty"),
        pytest.param("example.test", " smtp:", "empty, or leading or trailing whitespace", id="leading-space"),
        pytest.param("example.test", ":", "give a transport name, a next hop, or both", id="colon-only"),
        pytest.param("example.test", "bad name:x", "'bad name' is not a master.cf service name", id="bad-name"),
        pytest.param("example.test", "smtp:\x01", "control characters", id="control"),
        pytest.param(
            "example.test", "smtp:[" + "a" * 130 + "]", "the transport.transport column holds 128", id="long-value"
        ),
    ],
)
def test_transport_set_refuses_invalid_input(cli: Cli, db: Database, key: str, value: str, message: str) -> None:
    outcome = cli("transport", "set", key, value)
    assert outcome.code == DATAERR
    assert message in error_of(outcome)
    assert db.column("SELECT domain FROM transport") == []


# --------------------------------------------------------------------------- failures


def test_database_unavailable_is_tempfail(
    db: Database,
    tmp_path: Path,
    make_cli: CliFactory,
) -> None:
    if db.kind == "mariadb":
        config = write_config(tmp_path / "down.toml", f"mysql://u:pw@127.0.0.1:{free_port()}/mail", connect_timeout=1.0)
        cli = make_cli(config)
        outcome = cli("domain", "add", "example.test")
    else:
        assert db.path is not None
        cli = make_cli(write_config(tmp_path / "locked.toml", db.url, connect_timeout=0.2))
        with closing(sqlite3.connect(db.path, isolation_level=None)) as holder:
            holder.execute("BEGIN EXCLUSIVE")
            outcome = cli("domain", "add", "example.test")
            holder.execute("ROLLBACK")
    assert outcome.code == TEMPFAIL
    assert outcome.out == ""
    assert outcome.err.splitlines()[-1].startswith("mailmapd: database unavailable: ")  # after the backend's WARNING
    assert db.column("SELECT domain FROM domains") == []


def test_a_statement_the_database_refuses_is_a_config_error(example: Cli, db: Database) -> None:
    if db.kind == "mariadb":
        db.sql(
            "CREATE TRIGGER deny_users BEFORE INSERT ON users FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'denied by test'"
        )
    else:
        db.sql("CREATE TRIGGER deny_users BEFORE INSERT ON users BEGIN SELECT RAISE(ABORT, 'denied by test'); END")
    outcome = add_user(example, "a@example.test")
    assert outcome.code == CONFIG
    assert "the database refused the statement" in error_of(outcome)
    assert "denied by test" in outcome.err


@pytest.mark.parametrize("db", ["mariadb"], indirect=True)  # SQLite does not enforce declared lengths
def test_narrow_password_column_is_refused_with_the_fix(example: Cli, db: Database) -> None:
    db.sql("ALTER TABLE users MODIFY password varchar(20) NOT NULL")  # the tutorial's original width
    db.sql("INSERT INTO users (email, password) VALUES (?, ?)", ("old@example.test", DES_TEST))
    outcome = add_user(example, "a@example.test")
    assert outcome.code == CONFIG
    message = error_of(outcome)
    assert "users.password holds 20 characters, and a SHA512-crypt hash needs 106" in message
    assert "`mailmapd install --only schema`" in message
    assert "`ALTER TABLE users MODIFY password varchar(128) NOT NULL`" in message
    assert example("user", "passwd", "old@example.test", "--password-stdin", stdin="new\n").code == CONFIG
    assert db.sql("SELECT email, password FROM users") == [("old@example.test", DES_TEST)]
    db.sql("ALTER TABLE users MODIFY password varchar(128) NOT NULL")
    assert example("user", "passwd", "old@example.test", "--password-stdin", stdin="new\n").code == OK


@pytest.mark.parametrize("db", ["mariadb"], indirect=True)  # ENCRYPT() is MySQL's (SQLite: the legacy test above)
def test_mysql_encrypt_hashes_are_verified_and_replaced(example: Cli, db: Database) -> None:
    """The tutorial's own INSERT: ENCRYPT() on the real server, DES and MD5 salts."""
    db.sql("INSERT INTO users (email, password) VALUES (?, ENCRYPT(?, ?))", ("des@example.test", "secret", "xy"))
    db.sql(
        "INSERT INTO users (email, password) VALUES (?, ENCRYPT(?, ?))", ("md5@example.test", "secret", "$1$abcdefgh$")
    )
    hashes = dict(db.sql("SELECT email, password FROM users"))
    assert len(hashes["des@example.test"]) == 13
    assert hashes["md5@example.test"].startswith("$1$abcdefgh$")
    for email, stored in hashes.items():
        assert verify_password("secret", stored), email
        assert not verify_password("Secret", stored), email
        assert example("user", "passwd", email, "--password-stdin", stdin="fresh\n").code == OK
    for stored in db.column("SELECT password FROM users"):
        assert password_scheme(stored) == "sha512-crypt"
        assert verify_password("fresh", stored)


def test_missing_config_is_exit_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(tmp_path / "none.toml"), "domain", "list"]) == CONFIG
    assert "cannot read" in capsys.readouterr().err


def test_a_group_without_an_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["domain"])
    assert info.value.code == USAGE
    assert "the following arguments are required: ACTION" in capsys.readouterr().err


# --------------------------------------------------------------------------- the running daemon


async def test_a_running_daemon_sees_user_add_at_once(
    db: Database,
    tmp_path: Path,
    make_cli: CliFactory,
) -> None:
    control = tmp_path / "control.sock"
    # Long TTLs and no change polling: only the flush can make the daemon forget an answer.
    extra = "[cache]\npositive_ttl = 3600.0\nnegative_ttl = 3600.0\npoll_interval = 0.0\n"
    config = write_config(tmp_path / "serve.toml", db.url, control_socket=str(control), extra=extra)
    cli = make_cli(config)
    app = App(load_config(config))
    await app.start()
    try:
        assert app.resolver is not None
        assert (await asyncio.to_thread(cli, "domain", "add", "example.test")).code == OK
        assert isinstance(await app.resolver.resolve("mailboxes", "new@example.test"), NotFound)
        assert isinstance(await app.resolver.resolve("mailboxes", "direct@example.test"), NotFound)
        # A change behind mailmapd's back stays unseen: the NotFound is cached for an hour.
        db.sql("INSERT INTO users (email, password) VALUES (?, ?)", ("direct@example.test", "x"))
        assert isinstance(await app.resolver.resolve("mailboxes", "direct@example.test"), NotFound)

        outcome = await asyncio.to_thread(cli, "user", "add", "new@example.test", "--password-stdin", stdin="pw\n")
        assert (outcome.code, outcome.err) == (OK, "")
        assert await app.resolver.resolve("mailboxes", "new@example.test") == Found("example.test/new/")
        assert await app.resolver.resolve("mailboxes", "direct@example.test") == Found("example.test/direct/")
    finally:
        await app.stop()


@asynccontextmanager
async def recording_daemon(path: Path) -> AsyncIterator[list[tuple[str | None, str | None]]]:
    """The daemon's real control socket, recording what it is asked to flush."""
    calls: list[tuple[str | None, str | None]] = []

    def flush(table: str | None, key: str | None) -> int:
        calls.append((table, key))
        return 0

    server = ControlServer(str(path), flush)
    await server.start()
    try:
        yield calls
    finally:
        await server.stop()


ChangeCommand = Callable[[Cli], Outcome]
USERS_MAPS = ["aliases", "email2email", "mailboxes", "quota"]
ALL_MAPS = ["aliases", "domains", "email2email", "forwardings", "mailboxes", "quota", "transports"]


@pytest.mark.parametrize(
    ("command", "maps"),
    [
        pytest.param(lambda c: c("domain", "add", "other.test"), ["domains"], id="domain-add"),
        pytest.param(lambda c: c("domain", "remove", "example.test", "--cascade"), ALL_MAPS, id="domain-cascade"),
        pytest.param(lambda c: add_user(c, "a@example.test"), USERS_MAPS, id="user-add"),
        pytest.param(lambda c: c("user", "quota", "old@example.test", "1G"), USERS_MAPS, id="user-quota"),
        pytest.param(lambda c: c("user", "remove", "old@example.test"), USERS_MAPS, id="user-remove"),
        # No map answers with a password: nothing to flush.
        pytest.param(
            lambda c: c("user", "passwd", "old@example.test", "--password-stdin", stdin="new\n"), [], id="user-passwd"
        ),
        pytest.param(
            lambda c: c("alias", "add", "a@example.test", "b@other.test"), ["aliases", "forwardings"], id="alias-add"
        ),
        pytest.param(
            lambda c: c("alias", "remove", "info@example.test"), ["aliases", "forwardings"], id="alias-remove"
        ),
        pytest.param(lambda c: c("transport", "set", "example.test", "relay:"), ["transports"], id="transport-set"),
        pytest.param(lambda c: c("transport", "remove", ".example.test"), ["transports"], id="transport-remove"),
        pytest.param(lambda c: c("domain", "add", "example.test"), [], id="refused"),
    ],
)
async def test_each_change_flushes_the_maps_built_on_its_table(
    db: Database,
    tmp_path: Path,
    make_cli: CliFactory,
    command: ChangeCommand,
    maps: list[str],
) -> None:
    control = tmp_path / "control.sock"
    cli = make_cli(write_config(tmp_path / "m.toml", db.url, control_socket=str(control)))
    # Before the daemon runs (no socket yet: nothing to tell, no complaint).
    for argv in (
        ["domain", "add", "example.test"],
        ["alias", "add", "info@example.test", "x@other.test"],
        ["transport", "set", ".example.test", "relay:"],
    ):
        assert (await asyncio.to_thread(cli, *argv)) == Outcome(OK, ANY_TEXT, "")
    assert (await asyncio.to_thread(add_user, cli, "old@example.test")).code == OK
    async with recording_daemon(control) as calls:
        outcome = await asyncio.to_thread(command, cli)
        assert "daemon" not in outcome.err
        assert calls == [(name, None) for name in maps]


async def test_with_a_custom_query_everything_is_flushed(
    db: Database,
    tmp_path: Path,
    make_cli: CliFactory,
) -> None:
    control = tmp_path / "control.sock"
    extra = "[maps.domains]\nquery = \"SELECT domain FROM domains WHERE domain='%s'\"\n"
    cli = make_cli(write_config(tmp_path / "m.toml", db.url, control_socket=str(control), extra=extra))
    async with recording_daemon(control) as calls:
        assert (await asyncio.to_thread(cli, "domain", "add", "example.test")).code == OK
        assert calls == [(None, None)]


def test_a_daemon_that_is_not_running_is_no_problem(
    db: Database,
    tmp_path: Path,
    make_cli: CliFactory,
) -> None:
    control = tmp_path / "control.sock"
    cli = make_cli(write_config(tmp_path / "m.toml", db.url, control_socket=str(control)))
    assert cli("domain", "add", "a.test") == Outcome(OK, "added domain a.test\n", "")  # no socket file
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(control))  # a socket file nobody listens on: the daemon died
    assert cli("domain", "add", "b.test") == Outcome(OK, "added domain b.test\n", "")


async def test_a_daemon_that_cannot_flush_is_reported(
    db: Database,
    tmp_path: Path,
    make_cli: CliFactory,
) -> None:
    control = tmp_path / "control.sock"
    cli = make_cli(write_config(tmp_path / "m.toml", db.url, control_socket=str(control)))

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"ERR permission denied\n")
        writer.close()

    server = await asyncio.start_unix_server(refuse, str(control))
    try:
        outcome = await asyncio.to_thread(cli, "domain", "add", "example.test")
    finally:
        server.close()
        await server.wait_closed()
    assert (outcome.code, outcome.out) == (OK, "added domain example.test\n")
    assert outcome.err == (
        f"mailmapd: the running daemon at {control} answered 'ERR permission denied' to 'flush domains':"
        " the daemon sees the change within cache.poll_interval, or once its cached answers expire\n"
    )
    assert db.column("SELECT domain FROM domains") == ["example.test"]


# --------------------------------------------------------------------------- helpers, directly


def test_hash_length_is_what_the_column_check_expects() -> None:
    for password in ("a", "x" * 200, "pässwörd"):
        hashed = hash_password(password)
        assert len(hashed) == HASH_LENGTH
        assert hashed.startswith("$6$")
        assert "rounds=" not in hashed  # the glibc default, 5000
        assert system_crypt(password, hashed) == hashed


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        pytest.param(DES_TEST, True, id="des"),
        pytest.param(MD5_TEST, True, id="md5"),
        pytest.param(system_crypt("test", "$5$saltsalt"), True, id="sha256"),
        pytest.param(system_crypt("test", "$6$rounds=10000$saltsalt"), True, id="sha512-rounds"),
        pytest.param("test", False, id="plain-text"),
        pytest.param("", False, id="empty"),
        pytest.param("$2y$10$abcdefghijklmnopqrstuv", False, id="unknown-scheme"),
        pytest.param("$1$broken", False, id="malformed"),
    ],
)
def test_verify_password(stored: str, expected: bool) -> None:
    assert verify_password("test", stored) is expected
    assert verify_password("wrong", stored) is False


def test_password_scheme_names() -> None:
    assert [password_scheme(h) for h in (DES_TEST, MD5_TEST, hash_password("x"), "plain", "")] == [
        "des-crypt",
        "md5-crypt",
        "sha512-crypt",
        "unknown",
        "none",
    ]


def test_sizes_round_trip() -> None:
    assert [parse_quota(s) for s in ("0", "1", "512K", "10M", "1g", " 2 k ")] == [
        0,
        1,
        524288,
        10485760,
        1073741824,
        2048,
    ]
    assert [format_size(n) for n in (0, None, 1000, 1024, 1536, 10485760, 2**30)] == [
        "unlimited",
        "unlimited",
        "1000",
        "1K",
        "1536",
        "10M",
        "1G",
    ]


def test_admin_commands_are_registered(capsys: pytest.CaptureFixture[str]) -> None:
    for group, actions in (
        ("domain", "add,remove,list"),
        ("user", "add,remove,passwd,quota,list"),
        ("alias", "add,remove,list"),
        ("transport", "set,remove,list"),
    ):
        with pytest.raises(SystemExit):
            main([group, "-h"])
        out = capsys.readouterr().out
        for action in actions.split(","):
            assert f"    {action} " in out, (group, action)
    assert admin.EXIT_CANTCREAT == os.EX_CANTCREAT

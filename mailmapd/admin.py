"""``mailmapd domain|user|alias|transport``: managing the tutorial's four tables.

The commands replace the tutorial's hand-typed INSERT statements (and MySQL's ENCRYPT(),
which MySQL 8 removed). They run on MySQL/MariaDB and SQLite alike, with bound parameters
only, and check what they are given before they touch the database:

- domains are stored in their ASCII (IDNA) form, lower-cased; mailbox addresses and alias
  sources are lower-cased; every value is checked against its column's width;
- a user or alias needs its domain in ``domains``; duplicates, self-pointing aliases and
  sizes that are not sizes are refused;
- passwords never come from argv: they are read without echo from the terminal (twice) or
  from ``--password-stdin``, and stored as SHA512-crypt, which pam_mysql (crypt=1) and
  Courier's authmysql both verify through the system's crypt(3).

After a change the running daemon is told to drop the cached answers of the affected maps
through its control socket; see :func:`notify_daemon` and docs/admin.md.

Exit statuses: 0 done, 1 not found, 64 usage, 65 invalid input, 73 duplicate,
75 database unavailable, 78 configuration (or a database not set up as mailmapd needs).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import getpass
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mailmapd.backends import Backend, BackendError, Row, open_backend
from mailmapd.changes import TABLE_MAPS
from mailmapd.config import Config
from mailmapd.control import send_command

log = logging.getLogger(__name__)

# Exit statuses (sysexits(3) where one fits); docs/admin.md lists them for scripts.
EXIT_OK = os.EX_OK
EXIT_NOT_FOUND = 1
EXIT_USAGE = os.EX_USAGE  # 64
EXIT_DATAERR = os.EX_DATAERR  # 65: invalid input
EXIT_CANTCREAT = os.EX_CANTCREAT  # 73: it exists already
EXIT_TEMPFAIL = os.EX_TEMPFAIL  # 75: the database did not answer; try again
EXIT_CONFIG = os.EX_CONFIG  # 78
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

# The tutorial's column widths (mailmapd.schema).
DOMAIN_MAX = 50  # domains.domain varchar(50)
ADDRESS_MAX = 80  # users.email, forwardings.source varchar(80)
TRANSPORT_KEY_MAX = 128  # transport.domain varchar(128)
TRANSPORT_MAX = 128  # transport.transport varchar(128)
DESTINATIONS_MAX = 65535  # forwardings.destination TEXT (bytes)
QUOTA_MAX = 2**31 - 1  # users.quota INT(10), signed
# RFC 5321 4.5.3.1: local part 64 octets, a path 256 including its angle brackets,
# a domain name 255 octets on the wire (253 written out).
LOCAL_PART_MAX = 64
FOREIGN_ADDRESS_MAX = 254
HOSTNAME_MAX = 253

# SHA512-crypt with the glibc default of 5000 rounds: "$6$" + 16 salt characters + "$" +
# 86 hash characters. This is what `mkpasswd -m sha-512`, `openssl passwd -6` and
# `doveadm pw -s SHA512-CRYPT` write. Every SMTP AUTH and every IMAP/POP3 login runs crypt(3)
# on it (pam_mysql, Courier authdaemond): libpass's default of 656000 rounds costs about
# 0.3 s of CPU per login, which a busy server, or an attacker guessing passwords, multiplies.
SHA512_ROUNDS = 5000
HASH_LENGTH = 106
PASSWORD_MAX = 1024  # characters; longer is a paste gone wrong
# Hash schemes verify_password recognises: ours, and what MySQL's ENCRYPT() wrote through the
# system crypt(3) (DES with a 2-character salt, MD5-crypt with a "$1$" salt, SHA-crypt).
_SCHEMES = ("sha512_crypt", "sha256_crypt", "md5_crypt", "des_crypt")
_CURRENT_SCHEME = "sha512_crypt"

STATEMENT_TIMEOUT = 30.0  # seconds one statement may take before the command gives up
FLUSH_TIMEOUT = 5.0  # seconds to wait for the running daemon's answer

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
# A mailbox's local part becomes a directory name (virtual_mailbox_base/DOMAIN/LOCAL/): no "/".
_MAILBOX_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_TRANSPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Characters IDNA 2003 (the stdlib codec) and IDNA 2008 (today's registries) map differently.
_IDNA_DEVIATIONS = {"\u00df": "ß", "\u03c2": "ς", "\u200c": "ZERO WIDTH NON-JOINER", "\u200d": "ZERO WIDTH JOINER"}


class AdminError(Exception):
    """A command cannot do what it was asked; ``code`` is the exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _invalid(message: str) -> AdminError:
    return AdminError(EXIT_DATAERR, message)


# --------------------------------------------------------------------------- validation


def normalize_domain(text: str, *, max_len: int = DOMAIN_MAX, what: str = "domain", column: str = "") -> str:
    """The ASCII (IDNA), lower-case form of a domain name; AdminError(65) if it is not one."""
    if not text:
        raise _invalid(f"empty {what}")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise _invalid(f"{what} {text!r} contains whitespace or control characters")
    if text.endswith("."):
        raise _invalid(f"{what} {text!r}: write it without the trailing dot")
    for char, name in _IDNA_DEVIATIONS.items():
        if char in text.lower():
            raise _invalid(
                f"{what} {text!r} contains {name}, which the two IDNA standards encode differently:"
                " give its ASCII form (xn--...) as your registrar shows it"
            )
    try:
        ascii_form = text.encode("idna").decode("ascii").lower()
        ascii_form.encode("ascii").decode("idna")  # an xn-- label must decode
    except UnicodeError as exc:
        # The codec nests its reason: "... (UnicodeError: label empty or too long)".
        reason = str(exc).rsplit("UnicodeError: ", 1)[-1].rstrip(")")
        raise _invalid(f"{what} {text!r} is not a valid domain name ({reason})") from None
    labels = ascii_form.split(".")
    bad = [label for label in labels if not _LABEL.fullmatch(label)]
    if bad:
        raise _invalid(
            f"{what} {text!r} is not a valid domain name: label {bad[0]!r} may hold only letters,"
            " digits and inner hyphens"
        )
    if len(labels) < 2:  # noqa: PLR2004 - a name and a top-level domain
        raise _invalid(f"{what} {text!r} is not a fully qualified domain name (example.com)")
    if labels[-1].isdigit():
        raise _invalid(f"{what} {text!r} looks like an IP address, not a domain name")
    if len(ascii_form) > min(max_len, HOSTNAME_MAX):
        where = f"the {column} column holds" if column else "the limit is"
        raise _invalid(f"{what} {ascii_form!r} is {len(ascii_form)} characters long; {where} {max_len}")
    return ascii_form


def normalize_address(
    text: str,
    *,
    max_len: int = ADDRESS_MAX,
    what: str = "address",
    column: str = "",
    mailbox: bool = False,
    fold_local: bool = True,
) -> str:
    """``local@domain`` checked, its domain in ASCII form; the local part lower-cased unless
    ``fold_local`` is false (addresses elsewhere may be case-sensitive)."""
    if text.count("@") != 1:
        raise _invalid(f"{what} {text!r} is not an address (local@domain)")
    local, _, domain = text.partition("@")
    if not local:
        raise _invalid(f"{what} {text!r} has no local part before the @")
    pattern = _MAILBOX_LOCAL if mailbox else _DOT_ATOM
    if not pattern.fullmatch(local):
        allowed = "letters, digits, dots between characters and !#$%&'*+=?^_`{|}~-"
        if not mailbox:
            allowed += "/"
        raise _invalid(f"{what} {text!r}: the local part {local!r} may hold only {allowed}")
    if len(local) > LOCAL_PART_MAX:
        raise _invalid(f"{what} {text!r}: the local part is longer than {LOCAL_PART_MAX} characters")
    domain = normalize_domain(domain, max_len=HOSTNAME_MAX, what=f"domain of {what} {text!r}")
    address = f"{local.lower() if fold_local else local}@{domain}"
    if len(address) > max_len:
        where = f"the {column} column holds" if column else "the limit is"
        raise _invalid(f"{what} {address!r} is {len(address)} characters long; {where} {max_len}")
    return address


def normalize_source(text: str) -> str:
    """An alias source: ``local@domain``, or ``@domain`` for the domain's catch-all."""
    if text.startswith("@"):
        domain = normalize_domain(text[1:], max_len=ADDRESS_MAX - 1, what="catch-all domain", column="source")
        return "@" + domain
    return normalize_address(text, what="alias", column="forwardings.source")


def parse_destinations(values: Iterable[str]) -> list[str]:
    """Addresses from arguments that may each hold several, separated by commas; in order,
    each once."""
    found: dict[str, str] = {}
    for value in values:
        for piece in value.split(","):
            item = piece.strip()
            if not item:
                continue
            if item.startswith("@"):
                raise _invalid(f"destination {item!r}: a destination is a full address, not a catch-all")
            address = normalize_address(item, max_len=FOREIGN_ADDRESS_MAX, what="destination", fold_local=False)
            found.setdefault(address.lower(), address)
    if not found:
        raise _invalid("no destination address given")
    return list(found.values())


def normalize_transport_key(text: str) -> str:
    """A transport_maps key: ``user@domain``, ``domain``, ``.domain`` (its subdomains) or ``*``."""
    if text == "*":
        return text
    if text.startswith("@"):
        raise _invalid(f"transport key {text!r}: transport_maps has no @domain keys; give the domain alone")
    if "@" in text:
        return normalize_address(text, max_len=TRANSPORT_KEY_MAX, what="transport key", column="transport.domain")
    if text.startswith("."):
        domain = normalize_domain(
            text[1:], max_len=TRANSPORT_KEY_MAX - 1, what="transport key", column="transport.domain"
        )
        return "." + domain
    return normalize_domain(text, max_len=TRANSPORT_KEY_MAX, what="transport key", column="transport.domain")


def validate_transport(text: str) -> str:
    """transport(5)'s ``transport:nexthop`` (either part may be empty, not both)."""
    if not text or text.strip() != text:
        raise _invalid(f"transport {text!r}: empty, or leading or trailing whitespace")
    if any(not c.isprintable() for c in text):
        raise _invalid(f"transport {text!r} contains control characters")
    name, colon, nexthop = text.partition(":")
    if not (name or nexthop):
        raise _invalid(f"transport {text!r}: give a transport name, a next hop, or both (smtp:[mail.example.com])")
    if name and not _TRANSPORT_NAME.fullmatch(name):
        raise _invalid(f"transport {text!r}: {name!r} is not a master.cf service name")
    if not colon and " " in name:
        raise _invalid(f"transport {text!r}: write transport:nexthop")
    if len(text) > TRANSPORT_MAX:
        raise _invalid(
            f"transport {text!r} is {len(text)} characters long; the transport.transport column holds {TRANSPORT_MAX}"
        )
    return text


def parse_quota(text: str) -> int:
    """Bytes from ``10485760``, ``512K``, ``10M``, ``1G`` or ``2T`` (binary multiples; an
    optional ``B`` or ``iB``); 0 means unlimited."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise _invalid(
            f"quota {text!r} is not a size: write bytes (10485760) or a number with K, M, G or T"
            " (512K, 10M, 1G); 0 means unlimited"
        )
    size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if size > QUOTA_MAX:
        raise _invalid(f"quota {text!r} is {size} bytes; the users.quota column (INT) holds at most {QUOTA_MAX}")
    return size


def format_size(size: int | None) -> str:
    """``10M`` for 10485760; exact binary multiples get a unit, others stay in bytes."""
    if size is None or size <= 0:
        return "unlimited"
    for unit in ("T", "G", "M", "K"):
        factor = _UNITS[unit.lower()]
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def show_domain(domain: str) -> str:
    """``xn--mnchen-3ya.de (münchen.de)`` for people; plain ASCII names unchanged."""
    try:
        unicode_form = domain.encode("ascii").decode("idna")
    except UnicodeError:
        return domain
    return domain if unicode_form == domain else f"{domain} ({unicode_form})"


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


# --------------------------------------------------------------------------- passwords


@functools.cache
def _context() -> Any:
    # libpass ships no type information; its CryptContext is used through this one object.
    from passlib.context import CryptContext  # type: ignore[import-untyped]  # noqa: PLC0415 - 40 ms, only for password commands

    return CryptContext(schemes=list(_SCHEMES), default=_CURRENT_SCHEME)


def hash_password(password: str) -> str:
    """SHA512-crypt (``$6$``), verified by the system crypt(3) that pam_mysql and Courier call."""
    from passlib.hash import sha512_crypt  # type: ignore[import-untyped]  # noqa: PLC0415 - see _context

    return str(sha512_crypt.using(rounds=SHA512_ROUNDS).hash(password))


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches a stored crypt(3) hash: SHA512-crypt, SHA256-crypt, and
    the DES (13 characters) and MD5-crypt (``$1$``) hashes of MySQL's ENCRYPT(). Anything
    else (empty, plain text, unknown schemes) does not match."""
    if not password or not stored:
        return False
    try:
        return bool(_context().verify(password, stored))
    except (ValueError, TypeError):  # unrecognised or malformed hash
        return False


def password_scheme(stored: str | None) -> str:
    """``sha512-crypt``, ``md5-crypt``, ``des-crypt``, ... or ``unknown``."""
    if not stored:
        return "none"
    try:
        name = _context().identify(stored)
    except (ValueError, TypeError):
        name = None
    return str(name).replace("_", "-") if name else "unknown"


def read_password(from_stdin: bool) -> str:
    """The new password: one line of stdin, or asked twice on the terminal without echo."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
        if not line:
            raise _invalid("no password on stdin")
    else:
        if not sys.stdin.isatty():
            raise AdminError(EXIT_USAGE, "stdin is not a terminal: to pipe the password in, add --password-stdin")
        try:
            password = getpass.getpass("New password: ")
            again = getpass.getpass("Retype new password: ")
        except EOFError:
            raise _invalid("no password given") from None
        if password != again:
            raise _invalid("the two passwords differ; nothing was changed")
    if not password:
        raise _invalid("empty password refused")
    if "\0" in password or "\n" in password:
        raise _invalid("the password contains a NUL or newline character, which crypt(3) cannot take")
    if len(password) > PASSWORD_MAX:
        raise _invalid(f"the password is longer than {PASSWORD_MAX} characters")
    return password


# --------------------------------------------------------------------------- the database


@runtime_checkable
class WritableBackend(Backend, Protocol):
    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement that changes data; return the number of rows it changed."""
        ...


class Db:
    """The backend with the dialect's placeholder, a deadline per statement, and a record of
    the tables changed (for :func:`notify_daemon`)."""

    def __init__(self, backend: WritableBackend, changed: set[str], timeout: float = STATEMENT_TIMEOUT) -> None:
        self.backend = backend
        self.changed = changed
        self.is_mysql = backend.dialect.name == "mysql"
        self._placeholder = backend.dialect.placeholder
        self._timeout = timeout

    def _sql(self, sql: str) -> str:
        # Statements are constants written with "?"; MySQL's driver spells it "%s".
        return sql.replace("?", self._placeholder)

    async def rows(self, sql: str, *params: str) -> list[Row]:
        try:
            async with asyncio.timeout(self._timeout):
                return await self.backend.fetch(self._sql(sql), params)
        except TimeoutError:
            raise AdminError(EXIT_TEMPFAIL, f"the database did not answer within {self._timeout:g}s") from None

    async def value(self, sql: str, *params: str) -> Any:
        rows = await self.rows(sql, *params)
        return rows[0][0] if rows else None

    async def change(self, table: str, sql: str, *params: object, affects_maps: bool = True) -> int:
        """Run one change; ``affects_maps=False`` for columns no map reads (the password)."""
        if not affects_maps:
            table = ""
        try:
            async with asyncio.timeout(self._timeout):
                count = await self.backend.execute(self._sql(sql), params)
        except TimeoutError:
            if table:
                self.changed.add(table)  # it may have happened
            raise AdminError(
                EXIT_TEMPFAIL,
                f"the database did not answer within {self._timeout:g}s; the change may or may not have been made",
            ) from None
        if count and table:
            self.changed.add(table)
        return count

    async def insert(
        self, table: str, sql: str, params: Sequence[object], exists: Callable[[], Awaitable[bool]], duplicate: str
    ) -> None:
        """INSERT; a key that another client inserted since our check is a duplicate (73)."""
        try:
            await self.change(table, sql, *params)
        except BackendError as exc:
            if exc.reason == "query" and await exists():
                raise AdminError(EXIT_CANTCREAT, duplicate) from exc
            raise

    async def domain_exists(self, domain: str) -> bool:
        return await self.value("SELECT domain FROM domains WHERE domain = ?", domain) is not None

    async def require_domain(self, domain: str, for_what: str) -> None:
        if not await self.domain_exists(domain):
            raise _invalid(
                f"domain {show_domain(domain)} does not exist, so it cannot have {for_what}:"
                f" add it first with `mailmapd domain add {domain}`"
            )

    async def user(self, email: str) -> Row | None:
        rows = await self.rows("SELECT email, password, quota FROM users WHERE email = ?", email)
        return rows[0] if rows else None

    async def destinations(self, source: str) -> list[str] | None:
        value = await self.value("SELECT destination FROM forwardings WHERE source = ?", source)
        if value is None:
            return None
        return [d.strip() for d in str(value).split(",") if d.strip()]

    async def check_password_column(self) -> None:
        """Refuse (78) when users.password is too narrow for a SHA512-crypt hash: the
        tutorial's varchar(20) would cut it short on a permissive server, or fail on a
        strict one. SQLite does not enforce declared lengths."""
        if not self.is_mysql:
            return
        width = await self.value(
            "SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
            "users",
            "password",
        )
        if width is not None and int(width) < HASH_LENGTH:
            raise AdminError(
                EXIT_CONFIG,
                f"users.password holds {int(width)} characters, and a SHA512-crypt hash needs {HASH_LENGTH}:"
                " widen it with `mailmapd install --only schema`, or in the mysql client with"
                " `ALTER TABLE users MODIFY password varchar(128) NOT NULL`; nothing was changed",
            )


def _backend_error(exc: BackendError) -> AdminError:
    text = str(exc)
    # Locks held by another client pass: SQLite's busy file, MySQL's 1205 and 1213.
    if exc.reason == "connect" or any(m in text for m in ("database is locked", "Lock wait timeout", "Deadlock found")):
        return AdminError(EXIT_TEMPFAIL, f"database unavailable: {text}")
    return AdminError(
        EXIT_CONFIG,
        f"the database refused the statement: {text} (is the schema the tutorial's, and may this user change it?)",
    )


# --------------------------------------------------------------------------- telling the daemon


def notify_daemon(cfg: Config, tables: Iterable[str]) -> list[str]:
    """Ask the running daemon to drop the cached answers built on ``tables``.

    Returns notes for the operator (empty when all went well or no daemon runs). A daemon that
    is not running is no problem: nothing is cached. One that runs but cannot be told (another
    user, an error) still sees the change within ``cache.poll_interval`` (change-tracking
    triggers) or, without them, once its cached answers expire.
    """
    path = cfg.server.control_socket
    tables = set(tables)
    if not path or not tables or not Path(path).exists():
        return []
    if any(cfg.map_config(name).query for name in cfg.maps):
        lines = ["flush"]  # a custom query may read any table: drop everything
    else:
        maps = set().union(*(TABLE_MAPS.get(t, frozenset()) for t in tables))
        lines = [f"flush {name}" for name in sorted(maps)]
    later = "the daemon sees the change within cache.poll_interval, or once its cached answers expire"
    for line in lines:
        try:
            reply = send_command(path, line, timeout=FLUSH_TIMEOUT)
        except (ConnectionRefusedError, FileNotFoundError):
            log.debug("no daemon listens on %s: nothing to flush", path)
            return []
        except OSError as exc:
            return [f"could not tell the running daemon at {path} ({exc.strerror or exc}): {later}"]
        if not reply.startswith("OK"):
            return [f"the running daemon at {path} answered {reply!r} to {line!r}: {later}"]
    return []


# --------------------------------------------------------------------------- output and running


@dataclass
class Result:
    """What a command has to say: lines for people, data for --json, notes for stderr."""

    lines: list[str] = field(default_factory=list)
    data: Any = None
    notes: list[str] = field(default_factory=list)
    code: int = EXIT_OK


Command = Callable[[Db, argparse.Namespace], Awaitable[Result]]
Handler = Callable[[Config | None, argparse.Namespace], int]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart, under an upper-case header."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]


def _write(stream: Any, lines: Iterable[str]) -> None:
    for line in lines:
        stream.write(line + "\n")


async def _run(cfg: Config, args: argparse.Namespace, command: Command, changed: set[str]) -> Result:
    backend = open_backend(cfg.database)
    try:
        if not isinstance(backend, WritableBackend):  # pragma: no cover - both backends can write
            raise AdminError(EXIT_CONFIG, f"the {backend.dialect.name} backend cannot change data")
        return await command(Db(backend, changed), args)
    except BackendError as exc:
        raise _backend_error(exc) from exc
    finally:
        await backend.close()


def run_command(cfg: Config, args: argparse.Namespace, command: Command) -> int:
    changed: set[str] = set()
    notes: list[str] = []
    try:
        result = asyncio.run(_run(cfg, args, command, changed))
    except AdminError as exc:
        result = Result(notes=[str(exc)], code=exc.code)
    except KeyboardInterrupt:
        result = Result(notes=["interrupted"], code=EXIT_INTERRUPTED)
    if changed:
        notes = notify_daemon(cfg, changed)
    if getattr(args, "json", False) and result.code == EXIT_OK:
        sys.stdout.write(json.dumps(result.data, indent=2, ensure_ascii=False) + "\n")
    else:
        _write(sys.stdout, result.lines)
    _write(sys.stderr, (f"mailmapd: {note}" for note in [*result.notes, *notes]))
    return result.code


def _handler(command: Command) -> Handler:
    def handler(cfg: Config | None, args: argparse.Namespace) -> int:
        assert cfg is not None  # these commands need the configuration (needs_config stays True)
        return run_command(cfg, args, command)

    return handler


def _like_domain(domain: str) -> str:
    # Validated domains hold only [a-z0-9.-]: nothing LIKE would read as a wildcard.
    return "%@" + domain


async def _rows_of_domain(db: Db, select: str, column: str, domain_arg: str | None) -> list[Any]:
    """``select``'s rows, only those whose address ``column`` is in the domain when one is
    given; an unknown domain is "not found" (exit 1) rather than an empty list."""
    if domain_arg is None:
        return list(await db.rows(select))
    domain = normalize_domain(domain_arg)
    rows = list(await db.rows(f"{select} WHERE {column} LIKE ?", _like_domain(domain)))
    if not rows and not await db.domain_exists(domain):
        raise AdminError(EXIT_NOT_FOUND, f"no domain {show_domain(domain)}")
    return rows


# --------------------------------------------------------------------------- domain


async def domain_add(db: Db, args: argparse.Namespace) -> Result:
    domain = normalize_domain(args.domain, column="domains.domain")
    if await db.domain_exists(domain):
        raise AdminError(EXIT_CANTCREAT, f"domain {show_domain(domain)} exists already")
    await db.insert(
        "domains",
        "INSERT INTO domains (domain) VALUES (?)",
        (domain,),
        lambda: db.domain_exists(domain),
        f"domain {show_domain(domain)} exists already",
    )
    return Result([f"added domain {show_domain(domain)}"])


async def domain_remove(db: Db, args: argparse.Namespace) -> Result:
    domain = normalize_domain(args.domain, column="domains.domain")
    if not await db.domain_exists(domain):
        raise AdminError(EXIT_NOT_FOUND, f"no domain {show_domain(domain)}")
    pattern = _like_domain(domain)
    users = int(await db.value("SELECT COUNT(*) FROM users WHERE email LIKE ?", pattern))
    aliases = int(await db.value("SELECT COUNT(*) FROM forwardings WHERE source LIKE ?", pattern))
    transport_params = (domain, "." + domain, pattern)
    result = Result()
    if not args.cascade:
        if users or aliases:
            raise _invalid(
                f"domain {show_domain(domain)} still has {users} user(s) and {aliases} alias(es):"
                " remove them first, or add --cascade to remove them with the domain"
            )
        await db.change("domains", "DELETE FROM domains WHERE domain = ?", domain)
        kept = await db.rows(
            "SELECT domain FROM transport WHERE domain = ? OR domain = ? OR domain LIKE ?", *transport_params
        )
        if kept:
            names = ", ".join(sorted(str(r[0]) for r in kept))
            result.notes.append(f"kept the transport entries {names}: `mailmapd transport remove KEY` removes them")
        result.lines.append(f"removed domain {show_domain(domain)}")
        return result
    # Mailboxes and aliases first: if the command stops half-way, what is left is still a
    # consistent database (a domain with fewer users), never users of a missing domain.
    aliases = await db.change("forwardings", "DELETE FROM forwardings WHERE source LIKE ?", pattern)
    users = await db.change("users", "DELETE FROM users WHERE email LIKE ?", pattern)
    transports = await db.change(
        "transport", "DELETE FROM transport WHERE domain = ? OR domain = ? OR domain LIKE ?", *transport_params
    )
    await db.change("domains", "DELETE FROM domains WHERE domain = ?", domain)
    result.lines.append(
        f"removed domain {show_domain(domain)} with {users} user(s), {aliases} alias(es)"
        f" and {transports} transport entr{'y' if transports == 1 else 'ies'}"
    )
    result.notes.append(f"mailboxes on disk are kept: remove {domain}/ under virtual_mailbox_base yourself")
    return result


async def domain_list(db: Db, _args: argparse.Namespace) -> Result:
    domains = sorted(str(r[0]).lower() for r in await db.rows("SELECT domain FROM domains"))
    users: dict[str, int] = {}
    aliases: dict[str, int] = {}
    for (email,) in await db.rows("SELECT email FROM users"):
        users[_domain_of(str(email))] = users.get(_domain_of(str(email)), 0) + 1
    for (source,) in await db.rows("SELECT source FROM forwardings"):
        aliases[_domain_of(str(source))] = aliases.get(_domain_of(str(source)), 0) + 1
    data = [{"domain": d, "users": users.get(d, 0), "aliases": aliases.get(d, 0)} for d in domains]
    rows = [[show_domain(d), str(users.get(d, 0)), str(aliases.get(d, 0))] for d in domains]
    lines = format_table(["DOMAIN", "USERS", "ALIASES"], rows) if rows else ["no domains"]
    return Result(lines, data)


# --------------------------------------------------------------------------- user


async def user_add(db: Db, args: argparse.Namespace) -> Result:
    email = normalize_address(args.email, what="user", column="users.email", mailbox=True)
    quota = parse_quota(args.quota) if args.quota is not None else None
    await db.require_domain(_domain_of(email), "users")
    if await db.user(email) is not None:
        raise AdminError(
            EXIT_CANTCREAT, f"user {email} exists already (`mailmapd user passwd {email}` sets a new password)"
        )
    await db.check_password_column()
    hashed = hash_password(read_password(args.password_stdin))

    async def exists() -> bool:
        return await db.user(email) is not None

    duplicate = f"user {email} exists already"
    if quota is None:  # the column's default (the tutorial's 10485760)
        await db.insert(
            "users", "INSERT INTO users (email, password) VALUES (?, ?)", (email, hashed), exists, duplicate
        )
    else:
        await db.insert(
            "users",
            "INSERT INTO users (email, password, quota) VALUES (?, ?, ?)",
            (email, hashed, quota),
            exists,
            duplicate,
        )
    row = await db.user(email)
    stored = None if row is None else row[2]
    return Result([f"added user {email} (quota {format_size(None if stored is None else int(stored))})"])


async def user_remove(db: Db, args: argparse.Namespace) -> Result:
    email = normalize_address(args.email, what="user")
    if not await db.change("users", "DELETE FROM users WHERE email = ?", email):
        raise AdminError(EXIT_NOT_FOUND, f"no user {email}")
    result = Result([f"removed user {email}"])
    result.notes.append("the mailbox on disk is kept: remove it under virtual_mailbox_base yourself")
    if await db.destinations(email) is not None:
        result.notes.append(f"the alias {email} still exists: `mailmapd alias remove {email}` removes it")
    return result


async def user_passwd(db: Db, args: argparse.Namespace) -> Result:
    email = normalize_address(args.email, what="user")
    row = await db.user(email)
    if row is None:
        raise AdminError(EXIT_NOT_FOUND, f"no user {email}")
    await db.check_password_column()
    old_scheme = password_scheme(None if row[1] is None else str(row[1]))
    hashed = hash_password(read_password(args.password_stdin))
    # No map answers with the password (Courier and pam_mysql read it themselves): no flush.
    if not await db.change("users", "UPDATE users SET password = ? WHERE email = ?", hashed, email, affects_maps=False):
        raise AdminError(EXIT_NOT_FOUND, f"no user {email} (removed meanwhile)")
    line = f"changed the password of {email}"
    if old_scheme != password_scheme(hashed):
        line += f" (its {old_scheme} hash is now sha512-crypt)"
    return Result([line])


async def user_quota(db: Db, args: argparse.Namespace) -> Result:
    email = normalize_address(args.email, what="user")
    quota = parse_quota(args.size)
    row = await db.user(email)
    if row is None:
        raise AdminError(EXIT_NOT_FOUND, f"no user {email}")
    await db.change("users", "UPDATE users SET quota = ? WHERE email = ?", quota, email)
    return Result([f"quota of {email}: {format_size(quota)}"])


async def user_list(db: Db, args: argparse.Namespace) -> Result:
    rows = await _rows_of_domain(db, "SELECT email, password, quota FROM users", "email", args.domain)
    entries = sorted(
        (
            (str(email), None if quota is None else int(quota), password_scheme(None if pw is None else str(pw)))
            for email, pw, quota in rows
        ),
        key=lambda e: (_domain_of(e[0]), e[0].lower()),
    )
    data = [{"email": e, "quota": q, "scheme": s} for e, q, s in entries]
    table = [[e, format_size(q), s] for e, q, s in entries]
    lines = format_table(["EMAIL", "QUOTA", "PASSWORD"], table) if table else ["no users"]
    return Result(lines, data)


# --------------------------------------------------------------------------- alias


async def alias_add(db: Db, args: argparse.Namespace) -> Result:
    source = normalize_source(args.source)
    new = parse_destinations(args.destinations)
    await db.require_domain(_domain_of(source), "aliases")
    current = await db.destinations(source)
    known = {d.lower() for d in current or []}
    added = [d for d in new if d.lower() not in known]
    if not added:
        raise AdminError(EXIT_CANTCREAT, f"alias {source} forwards to {', '.join(new)} already")
    merged = [*(current or []), *added]
    is_mailbox = not source.startswith("@") and await db.user(source) is not None
    result = Result()
    if source in {d.lower() for d in added}:
        # "Keep a copy": a mailbox that forwards to itself and others. Anything else that points
        # to itself loops (a bounce) or does nothing.
        if not is_mailbox:
            raise _invalid(f"alias {source} points to itself, and {source} is not a mailbox: mail to it would bounce")
        if len(merged) == 1:
            raise _invalid(f"alias {source} points only to itself: that changes nothing")
    text = ",".join(merged)
    if len(text.encode()) > DESTINATIONS_MAX:
        raise _invalid(
            f"alias {source}: the destinations take {len(text.encode())} bytes; forwardings.destination (TEXT) holds {DESTINATIONS_MAX}"
        )
    if current is None:

        async def exists() -> bool:
            return await db.destinations(source) is not None

        await db.insert(
            "forwardings",
            "INSERT INTO forwardings (source, destination) VALUES (?, ?)",
            (source, text),
            exists,
            f"alias {source} exists already",
        )
        result.lines.append(f"added alias {source} -> {', '.join(merged)}")
    else:
        await db.change("forwardings", "UPDATE forwardings SET destination = ? WHERE source = ?", text, source)
        result.lines.append(f"alias {source} -> {', '.join(merged)} (added {', '.join(added)})")
    if is_mailbox and source not in {d.lower() for d in merged}:
        result.notes.append(
            f"{source} is also a mailbox: its mail now goes only to the destinations;"
            f" add {source} itself as a destination to keep a copy there"
        )
    return result


async def alias_remove(db: Db, args: argparse.Namespace) -> Result:
    source = normalize_source(args.source)
    current = await db.destinations(source)
    if current is None:
        raise AdminError(EXIT_NOT_FOUND, f"no alias {source}")
    if not args.destinations:
        await db.change("forwardings", "DELETE FROM forwardings WHERE source = ?", source)
        return Result([f"removed alias {source}"])
    doomed = {d.lower() for d in parse_destinations(args.destinations)}
    missing = doomed - {d.lower() for d in current}
    if missing:
        raise AdminError(EXIT_NOT_FOUND, f"alias {source} does not forward to {', '.join(sorted(missing))}")
    kept = [d for d in current if d.lower() not in doomed]
    if not kept:
        await db.change("forwardings", "DELETE FROM forwardings WHERE source = ?", source)
        return Result([f"removed alias {source} (no destination left)"])
    await db.change("forwardings", "UPDATE forwardings SET destination = ? WHERE source = ?", ",".join(kept), source)
    return Result([f"alias {source} -> {', '.join(kept)}"])


async def alias_list(db: Db, args: argparse.Namespace) -> Result:
    rows = await _rows_of_domain(db, "SELECT source, destination FROM forwardings", "source", args.domain)
    entries = sorted(
        ((str(s), [d.strip() for d in str(dest or "").split(",") if d.strip()]) for s, dest in rows),
        key=lambda e: (_domain_of(e[0]), e[0].lower()),
    )
    data = [{"source": s, "destinations": d} for s, d in entries]
    lines = (
        format_table(["SOURCE", "DESTINATIONS"], [[s, ", ".join(d)] for s, d in entries]) if entries else ["no aliases"]
    )
    return Result(lines, data)


# --------------------------------------------------------------------------- transport


async def transport_set(db: Db, args: argparse.Namespace) -> Result:
    key = normalize_transport_key(args.key)
    value = validate_transport(args.transport)
    rows = await db.rows("SELECT transport FROM transport WHERE domain = ?", key)
    if rows:
        if str(rows[0][0]) == value:
            return Result([f"transport {key} -> {value} (unchanged)"])
        await db.change("transport", "UPDATE transport SET transport = ? WHERE domain = ?", value, key)
        return Result([f"transport {key} -> {value} (was {rows[0][0]})"])

    async def exists() -> bool:
        return bool(await db.rows("SELECT transport FROM transport WHERE domain = ?", key))

    await db.insert(
        "transport",
        "INSERT INTO transport (domain, transport) VALUES (?, ?)",
        (key, value),
        exists,
        f"transport {key} exists already",
    )
    return Result([f"transport {key} -> {value}"])


async def transport_remove(db: Db, args: argparse.Namespace) -> Result:
    key = normalize_transport_key(args.key)
    if not await db.change("transport", "DELETE FROM transport WHERE domain = ?", key):
        raise AdminError(EXIT_NOT_FOUND, f"no transport {key}")
    return Result([f"removed transport {key}"])


async def transport_list(db: Db, _args: argparse.Namespace) -> Result:
    rows = sorted((str(k), str(v)) for k, v in await db.rows("SELECT domain, transport FROM transport"))
    data = [{"key": k, "transport": v} for k, v in rows]
    lines = format_table(["KEY", "TRANSPORT"], [list(r) for r in rows]) if rows else ["no transports"]
    return Result(lines, data)


# --------------------------------------------------------------------------- the parser

_EPILOG = (
    "exit status: 0 done, 1 not found, 64 usage, 65 invalid input, 73 exists already,"
    " 75 database unavailable (try again), 78 configuration or database schema. See docs/admin.md."
)


def _group(sub: argparse._SubParsersAction[Any], name: str, help_text: str) -> argparse._SubParsersAction[Any]:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text, epilog=_EPILOG)
    group: argparse._SubParsersAction[Any] = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    return group


def _command(
    group: argparse._SubParsersAction[Any], name: str, help_text: str, command: Command
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text, epilog=_EPILOG)
    parser.set_defaults(handler=_handler(command))
    return parser


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin (default: ask twice on the terminal)",
    )


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``domain``, ``user``, ``alias`` and ``transport``."""
    domain = _group(sub, "domain", "manage virtual mailbox domains (table domains)")
    p = _command(domain, "add", "add a domain (an internationalised name is stored in its ASCII form)", domain_add)
    p.add_argument("domain", metavar="DOMAIN")
    p = _command(
        domain, "remove", "remove a domain; refused while it has users or aliases, unless --cascade", domain_remove
    )
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--cascade", action="store_true", help="also remove its users, aliases and transport entries")
    p = _command(domain, "list", "list the domains with their numbers of users and aliases", domain_list)
    _json_option(p)

    user = _group(sub, "user", "manage mailboxes (table users)")
    p = _command(user, "add", "add a mailbox; asks for its password", user_add)
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("--quota", metavar="SIZE", help="10M, 1G, 512K or bytes; 0 = unlimited (default: the column's, 10M)")
    _password_option(p)
    p = _command(user, "remove", "remove a mailbox (its files on disk stay)", user_remove)
    p.add_argument("email", metavar="EMAIL")
    p = _command(user, "passwd", "set a new password (stored as SHA512-crypt)", user_passwd)
    p.add_argument("email", metavar="EMAIL")
    _password_option(p)
    p = _command(user, "quota", "set a mailbox's quota", user_quota)
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("size", metavar="SIZE", help="10M, 1G, 512K or bytes; 0 = unlimited")
    p = _command(user, "list", "list mailboxes, their quotas and password schemes", user_list)
    p.add_argument("domain", metavar="DOMAIN", nargs="?", help="only this domain's")
    _json_option(p)

    alias = _group(sub, "alias", "manage forwardings (table forwardings)")
    p = _command(
        alias,
        "add",
        "forward SOURCE (user@domain, or @domain for a catch-all) to DEST addresses; adds to an existing alias",
        alias_add,
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument(
        "destinations", metavar="DEST", nargs="+", help="addresses; several per argument separated by commas"
    )
    p = _command(alias, "remove", "remove an alias, or only the DEST addresses from it", alias_remove)
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("destinations", metavar="DEST", nargs="*")
    p = _command(alias, "list", "list aliases", alias_list)
    p.add_argument("domain", metavar="DOMAIN", nargs="?", help="only this domain's")
    _json_option(p)

    transport = _group(sub, "transport", "manage transport_maps entries (table transport)")
    p = _command(
        transport,
        "set",
        "route KEY (domain, .domain, user@domain or *) through TRANSPORT (transport:nexthop)",
        transport_set,
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument("transport", metavar="TRANSPORT")
    p = _command(transport, "remove", "remove KEY's transport", transport_remove)
    p.add_argument("key", metavar="KEY")
    p = _command(transport, "list", "list transport entries", transport_list)
    _json_option(p)

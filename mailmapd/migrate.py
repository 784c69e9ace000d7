"""Leaving the tutorial's six ``mysql-virtual_*.cf`` files: ``import-cf`` and ``verify``.

``import-cf`` reads mysql_table(5) files (main.cf syntax, read as Postfix's readlline() and
split_nameval() read them) and writes the mailmapd.toml that asks the same database the
same queries. What mailmapd cannot do the same way is named on stderr and in the output,
never dropped silently.

``verify`` proves the switch changes no answer: it asks every key that matters of the old
.cf files through Postfix's own ``postmap -q -``, walking each main.cf parameter's search
order as Postfix's daemons do (reference/postfix-lookups.md section 6; the walk below is
written independently of mailmapd.maps on purpose), and of mailmapd's resolver in-process,
and prints every difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import quote

from mailmapd.backends import Backend, BackendError, open_backend
from mailmapd.config import SEED_QUERIES, Config
from mailmapd.daemon import make_resolver
from mailmapd.lookup import Resolver
from mailmapd.proto import Found, NotFound
from mailmapd.sqltemplate import QueryTemplate, TemplateError

# The seed's file name of each table (seed section 5), which import-cf and verify recognise.
SEED_CF_FILES: dict[str, str] = {
    "domains": "mysql-virtual_domains.cf",
    "forwardings": "mysql-virtual_forwardings.cf",
    "mailboxes": "mysql-virtual_mailboxes.cf",
    "email2email": "mysql-virtual_email2email.cf",
    "transports": "mysql-virtual_transports.cf",
    "quota": "mysql-virtual_mailbox_limit_maps.cf",
}
TABLE_NAMES: tuple[str, ...] = tuple(SEED_CF_FILES)
_TABLE_BY_FILE = {file: table for table, file in SEED_CF_FILES.items()}

# What the MySQL client library means by host "localhost": its default unix socket, the
# path compiled into Debian's libmariadb and mysql clients (also the [client] socket of
# Debian's /etc/mysql/my.cnf).
DEFAULT_MYSQL_SOCKET = "/run/mysqld/mysqld.sock"
MYSQL_PORT = 3306

EXIT_DIFFERENT = 1

_A = TypeVar("_A")
_B = TypeVar("_B")

# Postfix's ISSPACE(): ASCII whitespace.
_WS = " \t\n\v\f\r"


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``import-cf`` and ``verify``."""
    imp = sub.add_parser(
        "import-cf",
        help="write the mailmapd.toml equivalent to the tutorial's mysql-virtual_*.cf files",
        description=(
            "Read mysql_table(5) files and write the equivalent mailmapd configuration. Files are "
            "recognised by their seed names (mysql-virtual_domains.cf, ...) or named with --map. "
            "Parameters mailmapd cannot carry over are named on stderr and in the output."
        ),
    )
    imp.add_argument("files", nargs="*", metavar="FILE", help="mysql-virtual_*.cf files, recognised by name")
    imp.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="TABLE=FILE",
        help=f"a .cf file with another name; TABLE is one of {', '.join(TABLE_NAMES)}",
    )
    imp.add_argument("--output", "-o", metavar="PATH", help="write here (mode 0640) instead of stdout")
    imp.set_defaults(handler=cmd_import_cf, needs_config=False)

    ver = sub.add_parser(
        "verify",
        help="compare every answer of the old .cf files (through postmap) with mailmapd's",
        description=(
            "Ask every domain, user, forwarding source and transport key in the database, plus "
            "variants (+tag, upper case, unknown users, @domain), of the old .cf files through "
            "Postfix's postmap and of mailmapd's resolver; print each difference. "
            "Exit 0: no difference; 1: differences; 75: a lookup failed temporarily."
        ),
    )
    ver.add_argument("--cf-dir", default="/etc/postfix", metavar="DIR", help="where the .cf files are (%(default)s)")
    ver.add_argument(
        "--postfix-config",
        metavar="DIR",
        help="Postfix configuration directory for postmap/postconf -c (default: --cf-dir when it holds a "
        "main.cf, else Postfix's own default)",
    )
    ver.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="TABLE=FILE",
        help="a .cf file with another name (TABLE as for import-cf)",
    )
    ver.add_argument("--keys", metavar="FILE", help="more keys to ask, one per line")
    ver.set_defaults(handler=cmd_verify, needs_config=True)


class MigrateError(Exception):
    """A problem that ends the command: the message and the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- .cf files


@dataclass(frozen=True, slots=True)
class CfParam:
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class CfFile:
    path: str
    params: dict[str, CfParam]
    # Things Postfix also tolerates (an overridden parameter, a stray continuation line).
    notes: tuple[str, ...] = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        param = self.params.get(name)
        return default if param is None else param.value

    def where(self, name: str) -> str:
        param = self.params.get(name)
        return f"{self.path}:{param.line}" if param is not None else self.path


def parse_cf(text: str, path: str) -> CfFile:
    """A mysql_table(5) file as Postfix reads it (readlline(), split_nameval(), dict_load_fp()).

    Blank lines and lines whose first non-blank character is ``#`` are skipped (a ``#``
    later in a line is part of the value); a line starting with whitespace continues the
    preceding one, appended as it is; the later of two settings of a name wins.
    Raises MigrateError (65) naming FILE:LINE for a line that is not ``name = value``.
    """
    entries: list[tuple[int, str]] = []
    notes: list[str] = []
    stray = False
    for number, raw in enumerate(text.split("\n"), 1):
        body = raw.lstrip(_WS)
        if not body or body.startswith("#"):
            continue
        if raw[0] in _WS:
            if entries and not stray:
                start, logical = entries[-1]
                entries[-1] = (start, logical + raw)
            else:
                stray = True
                notes.append(f"{path}:{number}: continuation line with no line to continue; ignored, as Postfix does")
            continue
        stray = False
        entries.append((number, raw))
    params: dict[str, CfParam] = {}
    for number, logical in entries:
        name, value = _split_nameval(logical, path, number)
        old = params.get(name)
        if old is not None and old.value != value:
            notes.append(f"{path}:{number}: {name} overrides line {old.line}; the later setting wins, as in Postfix")
        params[name] = CfParam(value, number)
    return CfFile(path, params, tuple(notes))


def _split_nameval(line: str, path: str, number: int) -> tuple[str, str]:
    """split_nameval(): ``name = value`` or ``name =``."""
    text = line.strip(_WS)
    end = 0
    while end < len(text) and text[end] not in _WS and text[end] != "=":
        end += 1
    if end == 0:
        raise MigrateError(f"{path}:{number}: missing parameter name: {_shown(line)}", os.EX_DATAERR)
    rest = text[end:].lstrip(_WS)
    if not rest.startswith("="):
        raise MigrateError(f"{path}:{number}: missing '=' after parameter name: {_shown(line)}", os.EX_DATAERR)
    return text[:end], rest[1:].strip(_WS)


def read_cf(path: str) -> CfFile:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise MigrateError(f"{path}: cannot read: {exc.strerror or exc}", os.EX_NOINPUT) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MigrateError(f"{path}:{line}: not valid UTF-8", os.EX_DATAERR) from exc
    return parse_cf(text, path)


def _shown(text: str, limit: int = 60) -> str:
    """Text for a message or a TOML comment: one line, escaped, cut at ``limit``."""
    shown = json.dumps(text, ensure_ascii=False)[1:-1]
    return shown if len(shown) <= limit else shown[:limit] + "..."


def assign_tables(files: Sequence[str], named: Sequence[str]) -> dict[str, str]:
    """Table name -> .cf path, from seed file names and ``--map TABLE=FILE``."""
    assigned: dict[str, str] = {}

    def add(table: str, path: str) -> None:
        if table in assigned:
            raise MigrateError(f"two files for {table}: {assigned[table]} and {path}", os.EX_USAGE)
        assigned[table] = path

    for item in named:
        table, eq, path = item.partition("=")
        if not eq or not path:
            raise MigrateError(f"--map {item}: expected TABLE=FILE", os.EX_USAGE)
        if table == "aliases":
            raise MigrateError(
                "--map aliases: aliases has no file of its own; name the forwardings and email2email files",
                os.EX_USAGE,
            )
        if table not in SEED_CF_FILES:
            raise MigrateError(f"--map {item}: unknown table {table!r} (known: {', '.join(TABLE_NAMES)})", os.EX_USAGE)
        add(table, path)
    for path in files:
        known = _TABLE_BY_FILE.get(Path(path).name)
        if known is None:
            raise MigrateError(
                f"{path}: cannot tell which table this is from its name; name it with --map TABLE={path} "
                f"(TABLE: {', '.join(TABLE_NAMES)})",
                os.EX_USAGE,
            )
        add(known, path)
    return assigned


# --------------------------------------------------------------------------- import-cf

_CONNECTION = ("hosts", "user", "password", "dbname")
_LEGACY = ("select_field", "table", "where_field", "additional_conditions")

# mysql_table(5) parameters mailmapd has no equivalent for: the value that changes nothing
# (None: any setting matters), and what mailmapd does instead.
_NO_EQUIVALENT: dict[str, tuple[str | None, str]] = {
    "result_format": ("%s", "mailmapd returns the values as the query gives them; format them in the query (CONCAT)"),
    "domain": ("", "mailmapd asks the query for keys of every domain; filter in the query's WHERE instead"),
    "expansion_limit": ("0", "mailmapd puts no limit on the number of values"),
    "charset": ("utf8mb4", "mailmapd always talks utf8mb4"),
    "option_file": ("", "mailmapd reads no my.cnf option files"),
    "option_group": (None, "mailmapd reads no my.cnf option files"),
    "require_result_set": (None, "mailmapd treats a query that returns no result set as not found"),
    "idle_interval": (None, "mailmapd replaces idle connections after database.pool_recycle seconds"),
    "tls_cert_file": ("", "mailmapd has no TLS settings for MySQL"),
    "tls_key_file": ("", "mailmapd has no TLS settings for MySQL"),
    "tls_CAfile": ("", "mailmapd has no TLS settings for MySQL"),
    "tls_CApath": ("", "mailmapd has no TLS settings for MySQL"),
    "tls_ciphers": ("", "mailmapd has no TLS settings for MySQL"),
    "tls_verify_cert": ("no", "mailmapd has no TLS settings for MySQL"),
}
_KNOWN = frozenset({*_CONNECTION, *_LEGACY, *_NO_EQUIVALENT, "query", "retry_interval"})
_TIME = re.compile(r"(\d+)([smhdw]?)")
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, slots=True)
class Connection:
    hosts: tuple[str, ...]
    user: str
    password: str = dataclasses.field(repr=False)
    dbname: str


@dataclass(slots=True)
class ImportResult:
    toml: str
    # Lines for stderr: what is not carried over, and what works differently.
    warnings: list[str]


def import_cf(tables: dict[str, CfFile]) -> ImportResult:
    """The mailmapd.toml equivalent to one .cf file per table."""
    if not tables:
        raise MigrateError("no .cf files to import", os.EX_USAGE)
    dropped: list[str] = []  # "FILE:LINE: name = value: why"
    notes: list[str] = [note for cf in tables.values() for note in cf.notes]

    connection = _connection(tables)
    url, host_notes, host_dropped = _database_url(connection, next(iter(tables.values())))
    notes += host_notes
    dropped += host_dropped

    queries: dict[str, tuple[str, str]] = {}  # table -> (query, where it came from)
    for table, cf in tables.items():
        query, origin, query_notes = _query(cf)
        notes += query_notes
        queries[table] = (query, origin)
        for name, param in cf.params.items():
            if name in _KNOWN and name not in _NO_EQUIVALENT:
                continue
            shown = f"{cf.path}:{param.line}: {name} = {_shown(param.value)}"
            if name not in _KNOWN:
                dropped.append(f"{shown}: not a mysql_table(5) parameter (Postfix ignores it too)")
                continue
            harmless, why = _NO_EQUIVALENT[name]
            if harmless is not None and param.value.lower() == harmless.lower():
                continue
            dropped.append(f"{shown}: {why}")

    retry, retry_notes, retry_dropped = _retry_interval(tables)
    notes += retry_notes
    dropped += retry_dropped

    out: list[str] = [
        "# mailmapd configuration written by `mailmapd import-cf` from:",
        *(f"#   {_comment(cf.path)} -> maps.{table}" for table, cf in tables.items()),
        "#",
        "# Check it with `mailmapd -c THIS_FILE check-config`, and compare every answer with the",
        "# .cf files with `mailmapd -c THIS_FILE verify` BEFORE switching Postfix over (docs/migration.md).",
    ]
    if dropped:
        out += ["#", "# NOT CARRIED OVER (mailmapd has no equivalent; see docs/migration.md):"]
        out += [f"#   {_comment(item)}" for item in dropped]
    if notes:
        out += ["#", "# NOTES:"]
        out += [f"#   {_comment(item)}" for item in notes]
    out += [
        "",
        "# Must equal recipient_delimiter in Postfix's main.cf.",
        'recipient_delimiter = "+"',
        "",
        "[database]",
        f"# From hosts = {_comment(' '.join(connection.hosts))}, user, password and dbname.",
        f"url = {_toml_string(url)}",
    ]
    if retry is not None:
        out += ["# From retry_interval: seconds a failed database host is skipped.", f"retry_interval = {int(retry)}"]
    out += [
        "",
        "# Postfix's smtpd, cleanup and trivial-rewrite ask this socketmap listener (docs/postfix.md).",
        "[[listen]]",
        'protocol = "socketmap"',
        'address = "inet:127.0.0.1:7979"',
        "",
        "# The quota policy service enforces users.quota at RCPT (docs/quota.md):",
        "# [[listen]]",
        '# protocol = "policy"',
        '# address = "inet:127.0.0.1:7981"',
        "",
    ]
    seed = [t for t in TABLE_NAMES if t in queries and queries[t][0] == SEED_QUERIES[t]]
    missing = [t for t in TABLE_NAMES if t not in queries]
    if seed:
        out.append("# These tables keep the seed's query, which is mailmapd's default, so none is written:")
        out += [f"#   {t} ({_comment(tables[t].path)})" for t in seed]
    if missing:
        out.append(f"# No .cf file was imported for {', '.join(missing)}: mailmapd uses the seed's query.")
    for table in TABLE_NAMES:
        if table in queries and table not in seed:
            query, origin = queries[table]
            out += ["", f"[maps.{table}]", f"# {_comment(origin)}", f"query = {_toml_string(query)}"]
    warnings = [f"not carried over: {item}" for item in dropped] + [f"note: {item}" for item in notes]
    return ImportResult("\n".join(out) + "\n", warnings)


def _connection(tables: dict[str, CfFile]) -> Connection:
    """The one database every file names; an error naming the files when they differ."""
    found: list[tuple[CfFile, Connection]] = []
    for cf in tables.values():
        dbname = cf.get("dbname", "")
        if not dbname:
            raise MigrateError(f"{cf.path}: dbname is not set (mysql_table(5) requires it)", os.EX_DATAERR)
        hosts = tuple(h for h in re.split(r"[\s,]+", cf.get("hosts", "") or "") if h) or ("localhost",)
        found.append((cf, Connection(hosts, cf.get("user", "") or "", cf.get("password", "") or "", dbname)))
    first_cf, first = found[0]
    conflicts: list[str] = []
    for cf, conn in found[1:]:
        fields = [
            name
            for name, differs in (
                # Postfix tries the hosts in random order: the same set is the same database.
                ("hosts", set(conn.hosts) != set(first.hosts)),
                ("user", conn.user != first.user),
                ("password", conn.password != first.password),
                ("dbname", conn.dbname != first.dbname),
            )
            if differs
        ]
        if fields:
            conflicts.append(f"{cf.path} differs from {first_cf.path} in {', '.join(fields)}")
    if conflicts:
        raise MigrateError(
            "the files name different database connections; mailmapd reads every map over one: " + "; ".join(conflicts),
            os.EX_DATAERR,
        )
    return first


def _database_url(conn: Connection, cf: CfFile) -> tuple[str, list[str], list[str]]:
    """``database.url`` for mysql_table's hosts, user, password and dbname."""
    where = cf.where("hosts")
    notes: list[str] = []
    dropped: list[str] = []
    sockets: list[str] = []
    inet: list[str] = []
    for item in conn.hosts:
        if item.startswith("unix:"):
            sockets.append(item[5:])
            continue
        host, port = _inet_host(item.removeprefix("inet:"), where)
        if host.lower() == "localhost":
            # dict_mysql.c host_init(): "localhost" becomes the library's default unix socket.
            notes.append(
                f"{where}: hosts = {item}: mysql_table(5) connects to the MySQL client library's default unix "
                f"socket for 'localhost', not over TCP; written as unix_socket={DEFAULT_MYSQL_SOCKET} "
                "(Debian's default; see 'socket' under [client] in /etc/mysql/my.cnf); use 127.0.0.1 for TCP"
            )
            sockets.append(DEFAULT_MYSQL_SOCKET)
            continue
        bracketed = f"[{host}]" if ":" in host else host
        inet.append(f"{quote(bracketed, safe='[]:')}:{port}")
    sockets = list(dict.fromkeys(sockets))
    dropped.extend(
        f"{where}: hosts: unix socket {extra}: mailmapd takes one unix socket (it keeps {sockets[0]})"
        for extra in sockets[1:]
    )
    if len(conn.hosts) > 1:
        notes.append(
            f"{where}: hosts: Postfix tries several hosts in random order (unix sockets first); "
            "mailmapd tries them in the order of database.url (the unix socket first), failing over to the next"
        )
    auth = quote(conn.user, safe="")
    if conn.password:
        auth += ":" + quote(conn.password, safe="")
    url = f"mysql://{auth}@{','.join(dict.fromkeys(inet))}/{quote(conn.dbname, safe='')}"
    if sockets:
        url += "?unix_socket=" + quote(sockets[0], safe="/")
    return url, notes, dropped


def _inet_host(item: str, where: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` (split at the last colon, as host_init())."""
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not bracket or (rest and not rest.startswith(":")):
            raise MigrateError(f"{where}: hosts: cannot read {item!r}", os.EX_DATAERR)
    else:
        host, colon, port_text = item.rpartition(":")
        if not colon:
            host, port_text = item, ""
    if not port_text or port_text == "mysql":
        return host, MYSQL_PORT
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 65535:  # noqa: PLR2004 - the largest port
        raise MigrateError(f"{where}: hosts: bad port in {item!r}", os.EX_DATAERR)
    return host, int(port_text)


def _query(cf: CfFile) -> tuple[str, str, list[str]]:
    """The file's query (or the one its legacy fields build), where it came from, notes."""
    notes: list[str] = []
    legacy = [name for name in _LEGACY if name in cf.params]
    if cf.get("query"):
        query = cf.get("query") or ""
        origin = f"The query of {cf.where('query')}."
        if legacy:
            notes.append(f"{cf.path}: {', '.join(legacy)} ignored because query is set (Postfix ignores them too)")
    elif legacy:
        # db_common_sql_build_query(): "SELECT %s FROM %s WHERE %s='%%s' %s".
        missing = [name for name in ("select_field", "table", "where_field") if not cf.get(name)]
        if missing:
            raise MigrateError(
                f"{cf.path}: no query, and the legacy form lacks {', '.join(missing)} (Postfix refuses it too)",
                os.EX_DATAERR,
            )
        query = f"SELECT {cf.get('select_field')} FROM {cf.get('table')} WHERE {cf.get('where_field')}='%s'"  # noqa: S608 - a template written out, never run as it stands
        if conditions := cf.get("additional_conditions"):
            query += f" {conditions}"
        origin = f"Built from select_field, table, where_field and additional_conditions of {cf.path}."
    else:
        raise MigrateError(f"{cf.path}: no query (and no select_field/table/where_field)", os.EX_DATAERR)
    try:
        QueryTemplate.parse(query)
    except TemplateError as exc:
        raise MigrateError(f"{cf.where('query')}: query: {exc}", os.EX_DATAERR) from None
    return query, origin, notes


def _retry_interval(tables: dict[str, CfFile]) -> tuple[float | None, list[str], list[str]]:
    """database.retry_interval from the files' retry_interval (Postfix >= 3.9)."""
    values: dict[str, float] = {}
    dropped: list[str] = []
    for cf in tables.values():
        text = cf.get("retry_interval")
        if text is None:
            continue
        match = _TIME.fullmatch(text)
        if match is None or int(match[1]) == 0:
            dropped.append(f"{cf.where('retry_interval')}: retry_interval = {_shown(text)}: not a time in seconds")
            continue
        values[cf.path] = float(int(match[1]) * _TIME_UNITS[match[2]])
    if not values:
        return None, [], dropped
    chosen = max(values.values())
    notes = []
    if len(set(values.values())) > 1:
        shown = ", ".join(f"{path}: {seconds:g}s" for path, seconds in values.items())
        notes.append(f"retry_interval differs between the files ({shown}); mailmapd has one: it takes {chosen:g}s")
    return chosen, notes, dropped


def _comment(text: str) -> str:
    """Text safe inside a one-line TOML comment."""
    return "".join(ch if ch.isprintable() else _shown(ch) for ch in text)


def _toml_string(text: str) -> str:
    """A TOML basic string."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:  # noqa: PLR2004 - the control characters TOML refuses raw
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def write_private(path: str, text: str) -> None:
    """Replace ``path`` atomically with a mode 0640 file (it holds the database password).

    An existing file keeps its owner and group where we may set them.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        os.fchmod(fd, 0o640)
        with contextlib.suppress(FileNotFoundError):
            st = target.stat()
            with contextlib.suppress(PermissionError):
                os.fchown(fd, st.st_uid, st.st_gid)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_import_cf(_cfg: Config | None, args: argparse.Namespace) -> int:
    if not args.files and not args.map:
        sys.stderr.write("mailmapd: import-cf: name at least one .cf file\n")
        return os.EX_USAGE
    try:
        assigned = assign_tables(args.files, args.map)
        tables = {table: read_cf(assigned[table]) for table in TABLE_NAMES if table in assigned}
        result = import_cf(tables)
    except MigrateError as exc:
        sys.stderr.write(f"mailmapd: import-cf: {exc}\n")
        return exc.status
    for line in result.warnings:
        sys.stderr.write(f"mailmapd: import-cf: {line}\n")
    if args.output is None:
        sys.stdout.write(result.toml)
        return os.EX_OK
    try:
        write_private(args.output, result.toml)
    except OSError as exc:
        sys.stderr.write(f"mailmapd: import-cf: cannot write {args.output}: {exc.strerror or exc}\n")
        return os.EX_CANTCREAT
    return os.EX_OK


# --------------------------------------------------------------------------- verify

# The Postfix-facing maps verify compares, and the tables each asks.
VERIFY_MAPS: dict[str, tuple[str, ...]] = {
    "domains": ("domains",),
    "mailboxes": ("mailboxes",),
    "aliases": ("forwardings", "email2email"),
    "transports": ("transports",),
    "quota": ("quota",),
}
# A local part no mailbox has: "unknown user at a known domain". No + - or . in it, so no
# recipient_delimiter splits it.
UNKNOWN_USER = "nosuchuser7mailmapd"
# The database's own keys, in the tutorial's schema.
_KEY_QUERIES = (
    ("domains", "SELECT domain FROM domains"),
    ("users", "SELECT email FROM users"),
    ("forwarding sources", "SELECT source FROM forwardings"),
    ("transport keys", "SELECT domain FROM transport"),
)
# Keys per postmap process: bounds the pipes and lets the progress bar move.
_POSTMAP_CHUNK = 2000
# Lookups mailmapd runs at once (each holds one database connection at most).
_CONCURRENCY = 16
_UNSPLIT = frozenset({"postmaster", "mailer-daemon", "double-bounce"})


@dataclass(frozen=True, slots=True)
class PostfixSettings:
    """What Postfix's main.cf says about the search orders."""

    delimiters: str
    propagate: bool


def split_extension(local: str, delimiters: str) -> tuple[str, str] | None:
    """split_addr() (src/global/split_addr.c): ("user", "+ext") or None."""
    lowered = local.lower()
    if not delimiters or lowered in _UNSPLIT:
        return None
    if "-" in delimiters and (lowered.startswith("owner-") or (len(lowered) > 8 and lowered.endswith("-request"))):  # noqa: PLR2004 - len("-request")
        return None
    at = next((i for i, ch in enumerate(local) if ch in delimiters), -1)
    return None if at <= 0 else (local[:at], local[at:])


def address_walk(key: str, delimiters: str) -> list[tuple[str, str | None]]:
    """mail_addr_find() for a virtual domain: each key and the extension to carry if it matches."""
    local, at, domain = key.rpartition("@")
    if not at:
        local, domain = key, ""
    steps: list[tuple[str, str | None]] = [(key, None)]
    split = split_extension(local, delimiters)
    if split is not None:
        steps.append((split[0] + (f"@{domain}" if at else ""), split[1]))
    if at and local:
        steps.append((f"@{domain}", None))
    return steps


def transport_walk(key: str, delimiters: str) -> list[str]:
    """transport_lookup(): address, address without extension, domain, .parents, ``*``."""
    local, at, domain = key.rpartition("@")
    steps: list[str] = []
    if at:
        steps.append(key)
        split = split_extension(local, delimiters)
        if split is not None:
            steps.append(f"{split[0]}@{domain}")
    else:
        domain = key
    name = domain
    while name:
        steps.append(name)
        dot = name.find(".", 1)
        if dot < 0:
            break
        name = name[dot:]
    steps.append("*")
    return steps


def with_extension(value: str, extension: str) -> str:
    """propagate_unmatched_extensions: the extension before the @ of each address."""
    out = []
    for item in value.split(","):
        address = item.strip()
        if address:
            head, at, tail = address.rpartition("@")
            out.append(f"{head}{extension}@{tail}" if at else address + extension)
    return ",".join(out)


def verify_keys(
    domains: Iterable[str], users: Iterable[str], sources: Iterable[str], transports: Iterable[str], delimiter: str
) -> list[str]:
    """Every key that matters, and the variants Postfix may send for it."""
    keys: list[str] = []

    def domain_keys(domain: str) -> None:
        keys.extend(
            [
                domain,
                domain.upper(),
                f"@{domain}",
                f"{UNKNOWN_USER}@{domain}",
                f"{UNKNOWN_USER}{delimiter}tag@{domain}",
            ]
        )

    def address_keys(address: str) -> None:
        local, at, domain = address.rpartition("@")
        if not at:
            keys.extend([address, address.upper()])
            return
        if not local:
            keys.extend([address, address.upper()])
        else:
            keys.extend(
                [
                    address,
                    address.upper(),
                    f"{local}{delimiter}tag@{domain}",
                    f"{local.upper()}{delimiter}Tag@{domain.upper()}",
                ]
            )
        domain_keys(domain)

    for domain in domains:
        domain_keys(domain)
    for address in [*users, *sources]:
        address_keys(address)
    for key in transports:
        if "@" in key:
            address_keys(key)
        elif key.startswith("."):
            # A parent-domain entry: a subdomain and an address in it.
            keys.extend([key, f"x{key}", f"{UNKNOWN_USER}@x{key}"])
        elif key == "*":
            keys.append(key)
        else:
            domain_keys(key)
    return list(dict.fromkeys(k for k in keys if k))


class Progress:
    """A one-line progress bar on stderr, drawn only on a terminal."""

    def __init__(
        self, total: int, stream: TextIO, *, enabled: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = max(total, 1)
        self.done = 0
        self._stream = stream
        self._enabled = enabled
        self._clock = clock
        self._drawn = -1.0
        self._label = ""

    def advance(self, count: int, label: str) -> None:
        self.done += count
        self._label = label
        now = self._clock()
        if self._enabled and (now - self._drawn >= 0.1 or self.done >= self.total):  # noqa: PLR2004 - 10 redraws a second
            self._drawn = now
            width = 30
            filled = min(width, width * self.done // self.total)
            percent = min(100, 100 * self.done // self.total)
            bar = "#" * filled + "." * (width - filled)
            self._stream.write(f"\r{self._label:<22} [{bar}] {percent:3d}%")
            self._stream.flush()

    def close(self) -> None:
        if self._enabled and self._drawn >= 0:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


class Postmap:
    """Postfix's own client for the old .cf files: ``postmap -q - mysql:FILE``."""

    def __init__(self, program: str, config_dir: str | None, files: dict[str, str]) -> None:
        self._program = program
        self._config = ["-c", config_dir] if config_dir else []
        self._files = files

    async def table(self, table: str, keys: Iterable[str], progress: Callable[[float], None]) -> dict[str, str]:
        """The value of every key found in ``table``; ``progress`` gets the fraction done."""
        wanted = list(dict.fromkeys(k for k in keys if k))
        found: dict[str, str] = {}
        for start in range(0, len(wanted), _POSTMAP_CHUNK):
            chunk = wanted[start : start + _POSTMAP_CHUNK]
            found.update(await self._batch(f"mysql:{self._files[table]}", chunk))
            progress((start + len(chunk)) / len(wanted))
        return found

    async def _batch(self, map_name: str, keys: list[str]) -> dict[str, str]:
        proc = await asyncio.create_subprocess_exec(
            self._program,
            *self._config,
            "-q",
            "-",
            map_name,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate("".join(k + "\n" for k in keys).encode())
        finally:
            if proc.returncode is None:  # cancelled: the other side failed
                proc.kill()
                await proc.wait()
        stderr = err.decode("utf-8", "replace")
        # mysql_table(5) warns about the '' values it skips; anything else is trouble.
        problems = [line for line in stderr.splitlines() if line.strip() and "empty lookup result" not in line]
        if "query error" in stderr:
            raise MigrateError(
                f"postmap {map_name}: the lookup failed (is the database up?):\n{stderr.rstrip()}", os.EX_TEMPFAIL
            )
        if problems or proc.returncode not in (0, 1):
            raise MigrateError(f"postmap {map_name} failed (exit {proc.returncode}):\n{stderr.rstrip()}", os.EX_CONFIG)
        return parse_postmap_output(keys, out.decode("utf-8", "replace"))


def parse_postmap_output(keys: Sequence[str], out: str) -> dict[str, str]:
    """``key<TAB>value`` lines, in the order of ``keys``, for the keys found.

    Matched in order, so a key holding a tab is read right; a line that starts with no key
    still to come continues the previous value (a value holding a newline).
    """
    lines = out.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    found: dict[str, str] = {}
    i = 0
    last: str | None = None
    for line in lines:
        j = i
        while j < len(keys) and not line.startswith(keys[j] + "\t"):
            j += 1
        if j < len(keys):
            last = keys[j]
            found[last] = line[len(last) + 1 :]
            i = j + 1
        elif last is not None:
            found[last] += "\n" + line
        else:
            raise MigrateError(f"postmap printed a line for no key asked: {_shown(line)}", os.EX_SOFTWARE)
    return found


async def postfix_answers(
    postmap: Postmap, map_name: str, keys: list[str], settings: PostfixSettings, progress: Callable[[float], None]
) -> dict[str, str | None]:
    """What Postfix's lookups through the .cf files find, walking the parameter's search order."""
    delims = settings.delimiters
    if map_name == "domains":
        found = await postmap.table("domains", keys, progress)
        return {k: found.get(k) for k in keys}
    if map_name in {"mailboxes", "quota"}:
        walks = {k: [step for step, _ in address_walk(k, delims)] for k in keys}
        found = await postmap.table(map_name, [s for steps in walks.values() for s in steps], progress)
        return {k: next((found[s] for s in walks[k] if s in found), None) for k in keys}
    if map_name == "transports":
        twalks = {k: transport_walk(k, delims) for k in keys}
        found = await postmap.table("transports", [s for steps in twalks.values() for s in steps], progress)
        return {k: next((found[s] for s in twalks[k] if s in found), None) for k in keys}
    assert map_name == "aliases"
    awalks = {k: address_walk(k, delims) for k in keys}
    steps = [s for walk in awalks.values() for s, _ in walk]
    fwd = await postmap.table("forwardings", steps, lambda done: progress(done / 2))
    e2e = await postmap.table("email2email", steps, lambda done: progress(0.5 + done / 2))
    out: dict[str, str | None] = {}
    for k, walk in awalks.items():
        out[k] = None
        for step, ext in walk:
            value = fwd.get(step) or e2e.get(step)
            if value is not None:
                out[k] = with_extension(value, ext) if ext and settings.propagate else value
                break
    return out


@dataclass(frozen=True, slots=True)
class Failed:
    """mailmapd could not answer (TEMP): not compared."""

    reason: str


async def mailmapd_answers(
    resolver: Resolver, map_name: str, keys: list[str], progress: Callable[[int], None]
) -> dict[str, str | Failed | None]:
    """What mailmapd's resolver answers, with at most _CONCURRENCY lookups at once."""
    gate = asyncio.Semaphore(_CONCURRENCY)
    out: dict[str, str | Failed | None] = {}

    async def one(key: str) -> None:
        async with gate:
            result = await resolver.resolve(map_name, key)
        match result:
            case Found(value):
                out[key] = value
            case NotFound():
                out[key] = None
            case _:
                out[key] = Failed(result.reason)
        progress(1)

    await asyncio.gather(*(one(k) for k in keys))
    return out


@dataclass(slots=True)
class MapReport:
    name: str
    keys: int = 0
    postfix_found: int = 0
    mailmapd_found: int = 0
    differences: list[tuple[str, str | None, str | None]] = dataclasses.field(default_factory=list)
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def compare(name: str, keys: list[str], old: dict[str, str | None], new: dict[str, str | Failed | None]) -> MapReport:
    report = MapReport(name, keys=len(keys))
    for key in keys:
        before, after = old.get(key), new.get(key)
        report.postfix_found += before is not None
        if isinstance(after, Failed):
            report.failures.append((key, after.reason))
            continue
        report.mailmapd_found += after is not None
        if before != after:
            report.differences.append((key, before, after))
    return report


def _answer(value: str | None) -> str:
    return "not found" if value is None else json.dumps(value, ensure_ascii=False)


def without_cache(cfg: Config) -> Config:
    """The same configuration with every cache TTL at zero: each lookup asks the database."""
    return dataclasses.replace(
        cfg,
        cache=dataclasses.replace(cfg.cache, positive_ttl=0.0, negative_ttl=0.0, max_stale=0.0),
        maps={name: dataclasses.replace(mc, positive_ttl=0.0, negative_ttl=0.0) for name, mc in cfg.maps.items()},
    )


async def database_keys(backend: Backend, warn: Callable[[str], None]) -> list[list[str]]:
    """The domains, users, forwarding sources and transport keys of the tutorial's tables."""
    lists: list[list[str]] = []
    for what, sql in _KEY_QUERIES:
        try:
            rows = await backend.fetch(sql, ())
        except BackendError as exc:
            if exc.reason != "query":
                raise MigrateError(f"cannot read the {what} from the database: {exc}", os.EX_TEMPFAIL) from exc
            warn(f"cannot list the {what} ({exc}); add such keys with --keys FILE")
            rows = []
        lists.append([str(row[0]) for row in rows if row and row[0] is not None])
    return lists


def postfix_settings(
    postconf: str | None, config_dir: str | None, cfg: Config, warn: Callable[[str], None]
) -> PostfixSettings:
    """recipient_delimiter and propagate_unmatched_extensions from Postfix's main.cf.

    The old side walks as Postfix does today; when mailmapd's settings differ, the answers
    for addresses with an extension differ too, and verify says why.
    """
    ours = PostfixSettings(cfg.recipient_delimiter, cfg.map_config("aliases").propagate_extension)
    if postconf is None:
        warn("postconf not found: walking Postfix's search orders with mailmapd's recipient_delimiter")
        return ours
    command = [postconf, *(["-c", config_dir] if config_dir else []), "-h"]
    result = subprocess.run(  # noqa: S603 - a fixed program and fixed arguments
        [*command, "recipient_delimiter", "propagate_unmatched_extensions"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    lines = result.stdout.split("\n")
    if result.returncode != 0 or len(lines) < 2:  # noqa: PLR2004 - two parameters asked
        warn(f"postconf failed ({result.stderr.strip()}); walking with mailmapd's recipient_delimiter")
        return ours
    theirs = PostfixSettings(lines[0].strip(), "virtual" in re.split(r"[\s,]+", lines[1].strip()))
    if theirs.delimiters != ours.delimiters:
        warn(
            f"Postfix's recipient_delimiter is {theirs.delimiters!r} but mailmapd's is {ours.delimiters!r}: "
            "addresses with an extension will be answered differently (set both alike; docs/postfix.md)"
        )
    if theirs.propagate != ours.propagate:
        warn(
            "Postfix's propagate_unmatched_extensions and mailmapd's maps.aliases.propagate_extension disagree: "
            "aliases of addresses with an extension will be answered differently"
        )
    return theirs


def locate_cf(cf_dir: str, named: Sequence[str]) -> dict[str, str]:
    """Table -> .cf path: the seed's file names in ``cf_dir``, overridden by ``--map``."""
    files = {table: str(Path(cf_dir) / name) for table, name in SEED_CF_FILES.items()}
    files = {table: path for table, path in files.items() if Path(path).is_file()}
    files.update(assign_tables((), named))
    return files


@dataclass(frozen=True, slots=True)
class VerifyPlan:
    """What verify compares, settled before anything is asked."""

    files: dict[str, str]
    maps: list[str]
    postmap: str
    config_dir: str | None
    settings: PostfixSettings
    extra_keys: list[str]


def plan_verify(cfg: Config, args: argparse.Namespace, warn: Callable[[str], None]) -> VerifyPlan:
    files = locate_cf(args.cf_dir, args.map)
    maps = [m for m, tables in VERIFY_MAPS.items() if all(t in files for t in tables)]
    for m, tables in VERIFY_MAPS.items():
        if m not in maps:
            missing = ", ".join(SEED_CF_FILES[t] for t in tables if t not in files)
            warn(f"{m}: not compared: no {missing} in {args.cf_dir} (name another file with --map)")
    if not maps:
        raise MigrateError(f"no mysql-virtual_*.cf files in {args.cf_dir}", os.EX_NOINPUT)
    unreadable = [path for path in files.values() if not os.access(path, os.R_OK)]
    if unreadable:
        raise MigrateError(f"cannot read {', '.join(unreadable)} (run as root)", os.EX_NOINPUT)
    postmap = _program("postmap")
    if postmap is None:
        raise MigrateError("postmap not found (Debian packages postfix and postfix-mysql)", os.EX_UNAVAILABLE)
    config_dir = args.postfix_config
    if config_dir is None and (Path(args.cf_dir) / "main.cf").is_file():
        config_dir = args.cf_dir
    settings = postfix_settings(_program("postconf"), config_dir, cfg, warn)
    extra: list[str] = []
    if args.keys:
        try:
            extra = [line for line in Path(args.keys).read_text(encoding="utf-8").split("\n") if line]
        except (OSError, UnicodeDecodeError) as exc:
            raise MigrateError(f"--keys {args.keys}: cannot read: {exc}", os.EX_NOINPUT) from exc
    return VerifyPlan(files, maps, postmap, config_dir, settings, extra)


def _program(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


async def run_verify(cfg: Config, plan: VerifyPlan, stdout: TextIO, stderr: TextIO) -> int:
    def warn(message: str) -> None:
        stderr.write(f"mailmapd: verify: {message}\n")

    backend = open_backend(cfg.database)
    try:
        domains, users, sources, transports = await database_keys(backend, warn)
        delimiter = (cfg.recipient_delimiter or "+")[0]
        candidates = list(
            dict.fromkeys([*verify_keys(domains, users, sources, transports, delimiter), *plan.extra_keys])
        )
        keys = [k for k in candidates if "\n" not in k and "\x00" not in k]
        if len(keys) < len(candidates):
            warn(f"{len(candidates) - len(keys)} keys holding a newline or NUL skipped (postmap reads one key a line)")
        resolver = make_resolver(without_cache(cfg), backend)
        postmap = Postmap(plan.postmap, plan.config_dir, plan.files)
        progress = Progress(2 * len(keys) * len(plan.maps), stderr, enabled=stderr.isatty())
        reports: list[MapReport] = []
        try:
            for name in plan.maps:
                old, new = await _both(
                    postfix_answers(postmap, name, keys, plan.settings, _share(progress, f"postfix {name}", len(keys))),
                    mailmapd_answers(resolver, name, keys, _counter(progress, f"mailmapd {name}")),
                )
                reports.append(compare(name, keys, old, new))
        finally:
            progress.close()
    finally:
        await backend.close()
    return report_verify(cfg, plan=plan, keys=keys, reports=reports, stdout=stdout, warn=warn)


def report_verify(
    cfg: Config,
    *,
    plan: VerifyPlan,
    keys: list[str],
    reports: list[MapReport],
    stdout: TextIO,
    warn: Callable[[str], None],
) -> int:
    dirs = sorted({str(Path(path).parent) for path in plan.files.values()})
    stdout.write(
        f"verify: {len(keys)} keys; postfix: {len(plan.files)} .cf files in {', '.join(dirs)}; "
        f"mailmapd: {cfg.database.url.redacted()}\n"
    )
    failures = 0
    for report in reports:
        stdout.writelines(
            f"DIFFERENT {report.name} {json.dumps(key, ensure_ascii=False)}: "
            f"postfix {_answer(before)}, mailmapd {_answer(after)}\n"
            for key, before, after in report.differences
        )
        for key, reason in report.failures[:10]:
            warn(f"{report.name} {json.dumps(key, ensure_ascii=False)}: mailmapd failed temporarily: {reason}")
        failures += len(report.failures)
    stdout.write(f"{'map':<12} {'keys':>7} {'postfix found':>14} {'mailmapd found':>15} {'differences':>12}\n")
    for report in reports:
        stdout.write(
            f"{report.name:<12} {report.keys:>7} {report.postfix_found:>14} {report.mailmapd_found:>15} "
            f"{len(report.differences):>12}\n"
        )
    differences = sum(len(r.differences) for r in reports)
    if differences:
        stdout.write(f"verify: {differences} differences\n")
        return EXIT_DIFFERENT
    if failures:
        warn(f"{failures} lookups failed temporarily; run verify again")
        return os.EX_TEMPFAIL
    stdout.write("verify: no differences\n")
    return os.EX_OK


async def _both(first: Coroutine[Any, Any, _A], second: Coroutine[Any, Any, _B]) -> tuple[_A, _B]:
    """Run both; when one fails, cancel the other (its lookups or its postmap) and raise."""
    a, b = asyncio.ensure_future(first), asyncio.ensure_future(second)
    try:
        await asyncio.wait({a, b}, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        pending = [t for t in (a, b) if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return a.result(), b.result()


def _counter(progress: Progress, label: str) -> Callable[[int], None]:
    def advance(count: int) -> None:
        progress.advance(count, label)

    return advance


def _share(progress: Progress, label: str, units: int) -> Callable[[float], None]:
    """A part of the bar worth ``units``, filled as the fraction of its work done grows."""
    shown = 0

    def update(fraction: float) -> None:
        nonlocal shown
        now = min(units, int(units * fraction))
        if now > shown:
            progress.advance(now - shown, label)
            shown = now

    return update


def cmd_verify(cfg: Config | None, args: argparse.Namespace) -> int:
    assert cfg is not None

    def warn(message: str) -> None:
        sys.stderr.write(f"mailmapd: verify: {message}\n")

    try:
        plan = plan_verify(cfg, args, warn)
        return asyncio.run(run_verify(cfg, plan, sys.stdout, sys.stderr))
    except MigrateError as exc:
        sys.stderr.write(f"mailmapd: verify: {exc}\n")
        return exc.status

"""schema: the mail database and the tutorial's four tables, on MySQL/MariaDB or SQLite.

Only what is missing is created: an existing tutorial database is adopted with its rows,
never dropped. users.password is widened to varchar(128) so that a SHA512-crypt hash fits.
On MySQL/MariaDB it also creates the admin account (SELECT, INSERT, UPDATE, DELETE, as the
tutorial's mail_admin has) and the read-only account (SELECT only) for the lookups, and
the change-tracking table and triggers (mailmapd.schema).

Every check runs first; the statements run only for what differs, so a second run has
nothing to do. ``--dry-run`` prints the statements instead (passwords masked).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pymysql

from mailmapd import schema
from mailmapd.config import DatabaseURL, parse_database_url
from mailmapd.install.plan import Context, InstallError, Options
from mailmapd.install.values import Values

NAME = "schema"
ADMIN_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
READONLY_PRIVILEGES = frozenset({"SELECT"})
PASSWORD_WIDTH = 128
TABLES = ("domains", "forwardings", "users", "transport")
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
_CREATE_NAME = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")


@dataclass(slots=True)
class Plan:
    """Statements to run, with the words that describe them."""

    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, note: str, sql: str, params: Sequence[Any] = ()) -> None:
        self.notes.append(note)
        self.statements.append((sql, tuple(params)))


def _tables_by_name(ddl: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for statement in ddl:
        match = _CREATE_NAME.match(statement)
        assert match is not None
        out[match[1]] = statement
    return out


# ------------------------------------------------------------------------------ SQLite


def sqlite_plan(conn: sqlite3.Connection) -> Plan:
    plan = Plan()
    have = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
    for name, ddl in _tables_by_name(schema.SQLITE_TABLES).items():
        if name not in have:
            plan.add(f"create table {name}", ddl)
    tracking = schema.sqlite_change_tracking()
    triggers = {f"mailmapd_{t}_{s}" for t in schema.TRACKED_TABLES for s in ("ins", "upd", "del")}
    rows = 0
    if "mailmapd_changes" in have:
        rows = conn.execute("SELECT COUNT(*) FROM mailmapd_changes").fetchone()[0]
    if "mailmapd_changes" not in have or not triggers <= have or rows < len(schema.TRACKED_TABLES):
        for statement in tracking:
            plan.add("change tracking", statement)
    return plan


def apply_sqlite(ctx: Context, db: DatabaseURL) -> None:
    path = ctx.target(db.path)
    if ctx.dry_run and not path.exists():
        plan = sqlite_plan(sqlite3.connect(":memory:"))
    else:
        if not path.parent.is_dir():
            ctx.ensure_dir(NAME, str(PurePosixPath(db.path).parent), mode=0o750)
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True) if ctx.dry_run else sqlite3.connect(path)
        try:
            plan = sqlite_plan(conn)
            _report_rows(ctx, [(t, _sqlite_count(conn, t)) for t in TABLES if _sqlite_has(conn, t)])
            if plan.statements and not ctx.dry_run:
                with conn:
                    for sql, params in plan.statements:
                        conn.execute(sql, params)
        finally:
            conn.close()
    _report_plan(ctx, plan, db.redacted())


def _sqlite_has(conn: sqlite3.Connection, table: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None
    )


def _sqlite_count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608 - table from TABLES


# ------------------------------------------------------------------------------ MySQL


def connect(
    url: DatabaseURL, *, database: str | None = None, user: str | None = None, password: str | None = None
) -> Any:
    kwargs: dict[str, Any] = {
        "user": url.user if user is None else user,
        "password": url.password if password is None else password,
        "charset": "utf8mb4",
        "autocommit": True,
        "connect_timeout": 10,
    }
    if database:
        kwargs["database"] = database
    if url.unix_socket:
        kwargs["unix_socket"] = url.unix_socket
    else:
        kwargs["host"] = url.hosts[0].host
        kwargs["port"] = url.hosts[0].port
    return pymysql.connect(**kwargs)


def account_hosts(db: DatabaseURL) -> list[str]:
    """The hosts the accounts are made for: where the mail server's clients connect from."""
    if db.unix_socket or all(h.host in _LOCAL_HOSTS for h in db.hosts):
        return ["localhost", "127.0.0.1"]
    return ["%"]


def _quote_db(name: str) -> str:
    """A database name in a GRANT: backquoted, with LIKE's wildcards escaped."""
    return "`" + name.replace("_", "\\_").replace("%", "\\%") + "`"


def _grantee(user: str, host: str) -> str:
    return f"'{user}'@'{host}'"


@dataclass(frozen=True, slots=True)
class Account:
    role: str
    user: str
    password: str
    privileges: frozenset[str]


def mysql_plan(cur: Any, db: DatabaseURL, accounts: Sequence[Account], ctx: Context) -> Plan:
    plan = Plan()
    name = db.database
    cur.execute("SELECT VERSION()")
    version = str(cur.fetchone()[0])
    _warn_version(ctx, version)
    cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,))
    if cur.fetchone() is None:
        plan.add(f"create database {name}", f"CREATE DATABASE `{name}` DEFAULT CHARACTER SET utf8mb4")
    cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (name,))
    have = {str(row[0]) for row in cur.fetchall()}
    for table, ddl in _tables_by_name(schema.MYSQL_TABLES).items():
        if table not in have:
            plan.add(f"create table {table}", ddl)
    if "users" in have:
        cur.execute(
            "SELECT DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, IS_NULLABLE FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'users' AND COLUMN_NAME = 'password'",
            (name,),
        )
        row = cur.fetchone()
        if row is None:
            raise InstallError(
                NAME, f"{name}.users", "the table has no password column", "this is not the tutorial's users table"
            )
        data_type, width, nullable = str(row[0]).lower(), row[1], row[2] == "YES"
        if data_type in {"varchar", "char"} and (width or 0) < PASSWORD_WIDTH:
            plan.add(
                f"widen users.password from {data_type}({width}) to varchar({PASSWORD_WIDTH}) (SHA512-crypt is 106 characters)",
                f"ALTER TABLE users MODIFY password varchar({PASSWORD_WIDTH}) {'NULL' if nullable else 'NOT NULL'}",
            )
    for account in accounts:
        _plan_account(cur, plan, db, account)
    _plan_tracking(cur, plan, name)
    return plan


def _warn_version(ctx: Context, version: str) -> None:
    match = re.match(r"(\d+)\.(\d+)", version)
    if "mariadb" in version.lower() or match is None:
        return
    if int(match[1]) >= 8:  # noqa: PLR2004 - MySQL 8.0 removed ENCRYPT()
        ctx.warn(
            NAME,
            f"MySQL {version}: there is no ENCRYPT() for the seed's INSERT INTO users; use `mailmapd user add` "
            "(SHA512-crypt, which pam_mysql crypt=1 and Courier verify)",
        )
        ctx.warn(
            NAME,
            "MySQL 8 gives new accounts caching_sha2_password: Postfix's mysql client, pam_mysql and Courier log in "
            "with it only over the unix socket or TLS; give --database-url mysql://localhost/mail?unix_socket=/run/mysqld/mysqld.sock",
        )


def _plan_account(cur: Any, plan: Plan, db: DatabaseURL, account: Account) -> None:
    target = _quote_db(db.database)
    for host in account_hosts(db):
        grantee = _grantee(account.user, host)
        cur.execute(
            "SELECT plugin, authentication_string FROM mysql.user WHERE User = %s AND Host = %s", (account.user, host)
        )
        row = cur.fetchone()
        if row is None:
            plan.add(
                f"create the {account.role} account {grantee}",
                "CREATE USER %s@%s IDENTIFIED BY %s",
                (account.user, host, account.password),
            )
        elif not _password_matches(cur, str(row[0] or ""), str(row[1] or ""), account.password):
            plan.add(
                f"set the password of {grantee}",
                "ALTER USER %s@%s IDENTIFIED BY %s",
                (account.user, host, account.password),
            )
        grants: dict[str, set[str]] = {}  # schema as the grant names it -> privileges
        if row is not None:
            cur.execute(
                "SELECT TABLE_SCHEMA, PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES"
                " WHERE GRANTEE = %s AND TABLE_SCHEMA IN (%s, %s)",
                (grantee, db.database, db.database.replace("_", "\\_")),
            )
            for schema_name, privilege in cur.fetchall():
                grants.setdefault(str(schema_name), set()).add(str(privilege).upper())
        have = set().union(*grants.values()) if grants else set()
        extra = have - account.privileges
        if extra and account.privileges == READONLY_PRIVILEGES:
            for schema_name in sorted(grants):
                plan.add(
                    f"take {', '.join(sorted(extra))} from the read-only account {grantee}",
                    f"REVOKE ALL PRIVILEGES ON `{schema_name}`.* FROM %s@%s",
                    (account.user, host),
                )
            have = set()
        missing = account.privileges - have
        if missing:
            plan.add(
                f"grant {', '.join(sorted(missing))} on {db.database} to {grantee}",
                f"GRANT {', '.join(sorted(missing))} ON {target}.* TO %s@%s",
                (account.user, host),
            )


def _password_matches(cur: Any, plugin: str, stored: str, password: str) -> bool:
    """Whether the account's stored hash is ``password``'s (mysql_native_password only)."""
    if plugin not in {"mysql_native_password", ""}:
        return True  # salted hashes cannot be compared: an existing account keeps its password
    try:
        cur.execute("SELECT PASSWORD(%s)", (password,))
    except pymysql.MySQLError:
        return True
    return bool(stored) and str(cur.fetchone()[0]) == stored


def _plan_tracking(cur: Any, plan: Plan, name: str) -> None:
    expected = {
        f"mailmapd_{table}_{suffix}": (table, event)
        for table in schema.TRACKED_TABLES
        for suffix, event in (("ins", "INSERT"), ("upd", "UPDATE"), ("del", "DELETE"))
    }
    cur.execute(
        "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, EVENT_MANIPULATION FROM information_schema.TRIGGERS"
        " WHERE TRIGGER_SCHEMA = %s AND TRIGGER_NAME LIKE 'mailmapd\\_%%'",
        (name,),
    )
    found = {str(r[0]): (str(r[1]), str(r[2]).upper()) for r in cur.fetchall()}
    rows = 0
    cur.execute(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'mailmapd_changes'",
        (name,),
    )
    if cur.fetchone()[0]:
        cur.execute(f"SELECT COUNT(*) FROM `{name}`.mailmapd_changes")  # noqa: S608 - a checked identifier
        rows = int(cur.fetchone()[0])
    if found != expected or rows < len(schema.TRACKED_TABLES):
        for statement in schema.mysql_change_tracking():
            plan.add("change tracking (mailmapd_changes and 12 triggers)", statement)


def apply_mysql(ctx: Context, values: Values, db: DatabaseURL) -> None:
    superuser_text = values.get("superuser_url", NAME)
    superuser = parse_database_url(superuser_text, "--db-superuser-url")
    ctx.secret(superuser.password)
    accounts = [
        Account("admin", values.get("admin_user", NAME), values.get("admin_password", NAME), ADMIN_PRIVILEGES),
        Account(
            "read-only", values.get("readonly_user", NAME), values.get("readonly_password", NAME), READONLY_PRIVILEGES
        ),
    ]
    if accounts[0].user == accounts[1].user:
        raise InstallError(
            NAME,
            None,
            "the admin and read-only accounts have the same name",
            "give different --admin-user and --readonly-user",
        )
    try:
        conn = connect(superuser, database=None)
    except pymysql.MySQLError as exc:
        raise InstallError(
            NAME,
            superuser.redacted(),
            f"cannot log in to create the database and accounts: {exc.args[-1] if exc.args else exc}",
            "give --db-superuser-url mysql://root:PASSWORD@HOST:PORT/mysql (an account with CREATE, CREATE USER, GRANT OPTION, TRIGGER)",
        ) from exc
    try:
        cur = conn.cursor()
        plan = mysql_plan(cur, db, accounts, ctx)
        cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (db.database,))
        if cur.fetchone() is not None:
            counts = []
            for table in TABLES:
                cur.execute(
                    "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                    (db.database, table),
                )
                if cur.fetchone()[0]:
                    cur.execute(f"SELECT COUNT(*) FROM `{db.database}`.`{table}`")  # noqa: S608 - checked identifiers
                    counts.append((table, int(cur.fetchone()[0])))
            _report_rows(ctx, counts)
        if plan.statements and not ctx.dry_run:
            for note, (sql, params) in zip(plan.notes, plan.statements, strict=True):
                if not sql.startswith("CREATE DATABASE"):
                    cur.execute(f"USE `{db.database}`")
                try:
                    cur.execute(sql, params or None)
                except pymysql.MySQLError as exc:
                    code = exc.args[0] if exc.args else 0
                    fix = (
                        "SET GLOBAL log_bin_trust_function_creators = 1 (binary logging is on), or run as an account with SUPER"
                        if code == 1419  # noqa: PLR2004 - ER_BINLOG_CREATE_ROUTINE_NEED_SUPER
                        else "give --db-superuser-url an account with CREATE, CREATE USER, GRANT OPTION and TRIGGER"
                    )
                    raise InstallError(
                        NAME, f"database {db.database}", f"{note}: {exc.args[-1] if exc.args else exc}", fix
                    ) from exc
    finally:
        conn.close()
    _report_plan(ctx, plan, db.redacted())


def _report_rows(ctx: Context, counts: list[tuple[str, int]]) -> None:
    if counts and any(n for _, n in counts):
        ctx.say(NAME, "existing tutorial data adopted, never dropped: " + ", ".join(f"{t} {n} rows" for t, n in counts))


def _report_plan(ctx: Context, plan: Plan, where: str) -> None:
    if not plan.statements:
        ctx.say(NAME, f"{where}: tables, accounts and change tracking: unchanged")
        return
    notes = list(dict.fromkeys(plan.notes))
    if ctx.dry_run:
        for sql, params in plan.statements:
            shown = sql.replace("%s", "{}").format(*(f"'{p}'" for p in params)) if params else sql
            ctx.raw(f"+ SQL: {shown};")
        ctx.say(NAME, f"{where}: would " + "; ".join(notes))
        return
    ctx.changed.append((NAME, where))
    ctx.say(NAME, f"{where}: " + "; ".join(notes))


def apply(ctx: Context, values: Values, options: Options) -> None:  # noqa: ARG001 - one signature for every component
    db = values.database(NAME)
    if db.scheme == "sqlite":
        apply_sqlite(ctx, db)
    else:
        apply_mysql(ctx, values, db)

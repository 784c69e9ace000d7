"""The tutorial's four tables, for MySQL/MariaDB and for the embedded SQLite default.

The columns and keys are the tutorial's; only ``users.password`` is wider, so that a
SHA512-crypt hash (106 characters) fits where the tutorial's varchar(20) held DES crypt.
SQLite compares the key columns with NOCASE, as MySQL's default collations do.
"""

from __future__ import annotations

MYSQL_TABLES: tuple[str, ...] = (
    ("CREATE TABLE IF NOT EXISTS domains ( domain varchar(50) NOT NULL, PRIMARY KEY (domain)) DEFAULT CHARSET=utf8mb4"),
    (
        "CREATE TABLE IF NOT EXISTS forwardings ("
        " source varchar(80) NOT NULL, destination TEXT NOT NULL, PRIMARY KEY (source)"
        ") DEFAULT CHARSET=utf8mb4"
    ),
    (
        "CREATE TABLE IF NOT EXISTS users ("
        " email varchar(80) NOT NULL, password varchar(128) NOT NULL,"
        " quota INT(10) DEFAULT '10485760', PRIMARY KEY (email)"
        ") DEFAULT CHARSET=utf8mb4"
    ),
    (
        "CREATE TABLE IF NOT EXISTS transport ("
        " domain varchar(128) NOT NULL DEFAULT '', transport varchar(128) NOT NULL DEFAULT '',"
        " UNIQUE KEY domain (domain)"
        ") DEFAULT CHARSET=utf8mb4"
    ),
)

SQLITE_TABLES: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS domains ( domain varchar(50) NOT NULL COLLATE NOCASE PRIMARY KEY)",
    (
        "CREATE TABLE IF NOT EXISTS forwardings ("
        " source varchar(80) NOT NULL COLLATE NOCASE PRIMARY KEY, destination TEXT NOT NULL)"
    ),
    (
        "CREATE TABLE IF NOT EXISTS users ("
        " email varchar(80) NOT NULL COLLATE NOCASE PRIMARY KEY, password varchar(128) NOT NULL,"
        " quota INT DEFAULT 10485760)"
    ),
    (
        "CREATE TABLE IF NOT EXISTS transport ("
        " domain varchar(128) NOT NULL DEFAULT '' COLLATE NOCASE UNIQUE,"
        " transport varchar(128) NOT NULL DEFAULT '')"
    ),
)

# Change tracking: one counter per tutorial table, bumped by triggers on every insert,
# update and delete, whatever tool makes the change. The daemon polls the counters
# (cache.poll_interval) and drops the cached answers of the maps built on a changed table.
TRACKED_TABLES: tuple[str, ...] = ("domains", "forwardings", "users", "transport")
_EVENTS = (("ins", "INSERT"), ("upd", "UPDATE"), ("del", "DELETE"))


def mysql_change_tracking() -> list[str]:
    """DDL for MySQL/MariaDB (needs the TRIGGER privilege); safe to run again."""
    # Every name below is one of our constants; nothing comes from input.
    seed = ", ".join(f"('{t}')" for t in TRACKED_TABLES)
    statements = [
        (
            "CREATE TABLE IF NOT EXISTS mailmapd_changes ("
            " tbl varchar(32) NOT NULL PRIMARY KEY, version BIGINT UNSIGNED NOT NULL DEFAULT 0"
            ") DEFAULT CHARSET=utf8mb4"
        ),
        f"INSERT IGNORE INTO mailmapd_changes (tbl) VALUES {seed}",  # noqa: S608 - constants only
    ]
    for table in TRACKED_TABLES:
        for suffix, event in _EVENTS:
            name = f"mailmapd_{table}_{suffix}"
            statements.append(f"DROP TRIGGER IF EXISTS {name}")
            statements.append(
                f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW"  # noqa: S608 - constants only
                f" UPDATE mailmapd_changes SET version = version + 1 WHERE tbl = '{table}'"
            )
    return statements


def sqlite_change_tracking() -> list[str]:
    seed = ", ".join(f"('{t}')" for t in TRACKED_TABLES)
    statements = [
        "CREATE TABLE IF NOT EXISTS mailmapd_changes (tbl TEXT NOT NULL PRIMARY KEY, version INTEGER NOT NULL DEFAULT 0)",
        f"INSERT OR IGNORE INTO mailmapd_changes (tbl) VALUES {seed}",  # noqa: S608 - constants only
    ]
    statements.extend(
        f"CREATE TRIGGER IF NOT EXISTS mailmapd_{table}_{suffix} AFTER {event} ON {table} BEGIN"  # noqa: S608 - constants only
        f" UPDATE mailmapd_changes SET version = version + 1 WHERE tbl = '{table}'; END"
        for table in TRACKED_TABLES
        for suffix, event in _EVENTS
    )
    return statements

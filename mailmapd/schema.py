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

"""Shared fixtures: the tutorial database on MariaDB and SQLite, the Postfix oracle, and an
in-process mailmapd bound to port 0."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from mailmapd.backends import open_backend
from mailmapd.config import Config, parse_config
from mailmapd.daemon import start_server
from mailmapd.schema import MYSQL_TABLES
from mailmapd.server import Server
from tests import tutorial_data
from tests.oracle import PostfixOracle, write_seed_cf
from tests.support.mariadb import DatabaseAccount, MariaDB

pytest_plugins = ["tests.support.fixtures"]


def load_tutorial_mysql(account: DatabaseAccount) -> None:
    conn = account.connect()
    try:
        with conn.cursor() as cur:
            for table in ("domains", "forwardings", "users", "transport"):
                cur.execute(f"DROP TABLE IF EXISTS {table}")
            for ddl in MYSQL_TABLES:
                cur.execute(ddl)
            for sql, params in tutorial_data.insert_statements("%s"):
                cur.execute(sql, params)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def tutorial_account(mariadb: MariaDB) -> DatabaseAccount:
    """The tutorial's database ("mail", user mail_admin) holding tests/tutorial_data.py."""
    account = mariadb.create_database("mail", "mail_admin", "mail_admin_password")
    load_tutorial_mysql(account)
    return account


@pytest.fixture(scope="session")
def oracle(tutorial_account: DatabaseAccount, tmp_path_factory: pytest.TempPathFactory) -> PostfixOracle:
    return PostfixOracle(write_seed_cf(tmp_path_factory.mktemp("seedcf"), tutorial_account))


def mysql_url(account: DatabaseAccount) -> str:
    return f"mysql://{account.user}:{account.password}@{account.host}:{account.port}/{account.database}"


def make_config(url: str, listen: list[dict[str, Any]] | None = None, **extra: Any) -> Config:
    """A config for in-process tests: no metrics exporter, no control socket, no change
    polling, and no cache unless a test asks (so the database's behaviour shows)."""
    data: dict[str, Any] = {
        "database": {"url": url},
        "listen": listen or [],
        "metrics": {"address": ""},
        "server": {"control_socket": ""},
        "cache": {"positive_ttl": 0.0, "negative_ttl": 0.0, "poll_interval": 0.0},
    }
    data.update(extra)
    return parse_config(data, "<test>")


@asynccontextmanager
async def running_mailmapd(cfg: Config) -> AsyncIterator[Server]:
    """mailmapd in this event loop; read ports back from ``server.sockets``."""
    backend = open_backend(cfg.database)
    try:
        server = await start_server(cfg, backend)
        try:
            yield server
        finally:
            await server.stop()
    finally:
        await backend.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'mail.db'}"


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path holds 108 bytes; tmp_path can be longer)."""
    with tempfile.TemporaryDirectory(prefix="mm-", dir="/tmp", ignore_cleanup_errors=True) as path:
        yield Path(path)

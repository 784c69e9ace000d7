"""mailmapd answers exactly what Postfix answers through the seed's own .cf files.

The data is the tutorial schema filled with awkward rows (tests/tutorial_data.py) on a real
MariaDB. The oracle is Postfix's mysql: client walking each parameter's search order
(tests/oracle.py). mailmapd is asked through Postfix's own socketmap and tcp clients
(``postmap -q``), and on the SQLite backend through the resolver.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

import pytest

from mailmapd.backends.sqlite import SQLiteBackend
from mailmapd.config import MAP_NAMES
from mailmapd.daemon import make_resolver
from mailmapd.proto import Found, NotFound
from tests import tutorial_data
from tests.conftest import make_config, mysql_url, running_mailmapd
from tests.oracle import PostfixOracle
from tests.support.mariadb import DatabaseAccount

KEYS = tutorial_data.probe_keys()


@pytest.fixture(scope="module")
def expected(oracle: PostfixOracle) -> dict[str, dict[str, str | None]]:
    return {name: oracle.answers(name, KEYS) for name in MAP_NAMES}


async def postmap_batch(oracle: PostfixOracle, table: str, keys: list[str]) -> dict[str, str | None]:
    """Ask mailmapd through postmap without blocking the event loop that serves it."""
    postmap = shutil.which("postmap") or "/usr/sbin/postmap"
    proc = await asyncio.create_subprocess_exec(
        postmap,
        "-c",
        str(oracle.config_dir),
        "-q",
        "-",
        table,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    wanted = [k for k in keys if k]
    out, err = await asyncio.wait_for(proc.communicate("".join(k + "\n" for k in wanted).encode()), 60)
    assert b"warning" not in err, err.decode()
    assert b"fatal" not in err, err.decode()
    found = dict(line.split("\t", 1) for line in out.decode().splitlines())
    return {k: found.get(k) for k in wanted}


def differences(got: dict[str, str | None], want: dict[str, str | None]) -> list[str]:
    return [f"{k!r}: mailmapd {got.get(k)!r} != postfix {want.get(k)!r}" for k in got if got[k] != want.get(k)]


def test_oracle_sees_the_awkward_cases(expected: dict[str, dict[str, str | None]]) -> None:
    """Guard the oracle itself: if these fail, the comparison below proves nothing."""
    aliases, mailboxes = expected["aliases"], expected["mailboxes"]
    assert mailboxes["SALES+Tag+more@EXAMPLE.TEST"] == "example.test/sales/"
    assert aliases["sales@example.test"] == "sales@example.test"  # real mailbox beats catch-all
    assert aliases["nosuchuser@example.test"] == "sales@example.test"  # catch-all
    assert aliases["info+tag@example.test"] == "sales+tag@example.test,o'brien+tag@example.test"
    assert expected["transports"]["user@deep.sub.example.test"] == "smtp:[127.0.0.1]:2525"
    assert expected["quota"]["Mixed.Case@Mixed.Example.TEST"] is None  # NULL quota
    assert aliases["x' OR '1'='1"] is None


@pytest.mark.parametrize("combine", [True, False], ids=["one-statement", "one-query-per-key"])
async def test_socketmap_equals_postfix_mysql(
    tutorial_account: DatabaseAccount,
    oracle: PostfixOracle,
    expected: dict[str, dict[str, str | None]],
    combine: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    listen = [{"protocol": "socketmap", "address": "inet:127.0.0.1:0"}]
    cfg = make_config(mysql_url(tutorial_account), listen, lookup={"combine_queries": combine})
    with caplog.at_level(logging.INFO, logger="mailmapd.maps"):
        async with running_mailmapd(cfg) as server:
            host, port = server.sockets[0][1]
            problems: list[str] = []
            for name in MAP_NAMES:
                got = await postmap_batch(oracle, f"socketmap:inet:{host}:{port}:{name}", KEYS)
                problems += [f"{name} {d}" for d in differences(got, expected[name])]
    assert not problems, "\n".join(problems)
    assert not [r for r in caplog.records if r.name == "mailmapd.maps"], "the seed's queries must combine"


@pytest.mark.parametrize("map_name", ["mailboxes", "aliases", "transports"])
async def test_tcp_table_equals_postfix_mysql(
    tutorial_account: DatabaseAccount,
    oracle: PostfixOracle,
    expected: dict[str, dict[str, str | None]],
    map_name: str,
) -> None:
    listen = [{"protocol": "tcp_table", "address": "inet:127.0.0.1:0", "map": map_name}]
    async with running_mailmapd(make_config(mysql_url(tutorial_account), listen)) as server:
        host, port = server.sockets[0][1]
        got = await postmap_batch(oracle, f"tcp:{host}:{port}", KEYS)
    assert not differences(got, expected[map_name]), "\n".join(differences(got, expected[map_name]))


@pytest.mark.parametrize("combine", [True, False], ids=["one-statement", "one-query-per-key"])
async def test_sqlite_backend_gives_the_same_answers(
    sqlite_url: str, expected: dict[str, dict[str, str | None]], combine: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailmapd.maps")
    cfg = make_config(sqlite_url, lookup={"combine_queries": combine})
    backend = SQLiteBackend(cfg.database)
    try:
        for sql, params in tutorial_data.insert_statements("?"):
            await backend.execute(sql, params)
        resolver = make_resolver(cfg, backend)
        problems: list[str] = []
        for name in MAP_NAMES:
            for key in KEYS:
                result = await resolver.resolve(name, key)
                assert isinstance(result, Found | NotFound), (name, key, result)
                got = result.value if isinstance(result, Found) else None
                if got != expected[name][key]:
                    problems.append(f"{name} {key!r}: sqlite {got!r} != postfix {expected[name][key]!r}")
    finally:
        await backend.close()
    assert not problems, "\n".join(problems)
    assert not [r for r in caplog.records if r.name == "mailmapd.maps"], "the seed's queries must combine"

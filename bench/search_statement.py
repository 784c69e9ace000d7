"""What one statement per search order saves (docs/maps.md), on a private MariaDB.

    python bench/search_statement.py                  # size small, 1,500 keys, 5 rounds
    python bench/search_statement.py --keys 3000 --rounds 7

Two parts, each side run over the same keys in rotating order, round after round, one lookup
at a time; the figures are medians over rounds of the wall time per key (no socketmap, no
cache).

- statements, on one aiomysql connection: the seed's mailboxes query as one statement with
  one key; wrapped as a derived table; two and three of them joined by UNION ALL (as
  ``mailmapd.maps.combine`` builds them); two plain statements one after the other. This is
  what the database and the client pay per form.
- maps: ``mailboxes``, ``aliases`` and ``transports`` from ``mailmapd.maps.build_maps`` on
  the MySQL backend (default ``pool_size``), with ``lookup.combine_queries`` true (one
  statement per template; aliases sends its two at once) and false (one query per key, as
  Postfix's mysql: client), asked the key mix of bench/lookups.py.

Everything listens on 127.0.0.1; the MariaDB is stopped and its files removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiomysql
import uvloop
from lookup_bench import datagen

from mailmapd.backends.mysql import MySQLBackend
from mailmapd.config import SEED_QUERIES, parse_config
from mailmapd.maps import build_maps, combine
from mailmapd.sqltemplate import MYSQL, QueryTemplate
from tests.support.mariadb import DatabaseAccount, MariaDB

Ask = Callable[[str], Awaitable[Any]]


async def rounds(sides: dict[str, Ask], keys: Sequence[str], count: int) -> dict[str, float]:
    """Median µs per key of each side, sides rotated round by round."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # connections and first-use costs out of the way
        for key in keys[:50]:
            await sides[name](key)
    for r in range(count):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            ask = sides[name]
            started = time.perf_counter()
            for key in keys:
                await ask(key)
            times[name].append((time.perf_counter() - started) / len(keys) * 1e6)
    return {name: statistics.median(v) for name, v in times.items()}


async def statements(account: DatabaseAccount, keys: Sequence[str], count: int) -> dict[str, float]:
    conn = await aiomysql.connect(
        host=account.host,
        port=account.port,
        user=account.user,
        password=account.password,
        db=account.database,
        charset="utf8mb4",
        autocommit=True,
    )
    single = QueryTemplate.parse(SEED_QUERIES["mailboxes"]).compile(MYSQL).sql

    async def run(sql: str, params: Sequence[str]) -> None:
        async with conn.cursor() as cur:
            await cur.execute(sql, tuple(params))
            await cur.fetchall()

    def union(n: int) -> Ask:
        async def ask(key: str) -> None:
            await run(*combine([(i, single, [key]) for i in range(n)]))

        return ask

    async def one(key: str) -> None:
        await run(single, [key])

    async def derived(key: str) -> None:
        await run(*combine([(0, single, [key])]))

    async def two(key: str) -> None:
        await run(single, [key])
        await run(single, ["@" + key.rpartition("@")[2]])

    try:
        return await rounds(
            {
                "one key, one statement": one,
                "one key, as a derived table": derived,
                "two keys, UNION ALL": union(2),
                "three keys, UNION ALL": union(3),
                "two keys, two statements": two,
            },
            keys,
            count,
        )
    finally:
        conn.close()


async def maps(account: DatabaseAccount, keys: Sequence[str], count: int) -> dict[str, float]:
    url = f"mysql://{account.user}:{account.password}@{account.host}:{account.port}/{account.database}"
    sides: dict[str, Ask] = {}
    backends = []
    for combined in (True, False):
        cfg = parse_config({"database": {"url": url}, "lookup": {"combine_queries": combined}}, "<bench>")
        backend = MySQLBackend(cfg.database)
        backends.append(backend)
        built = build_maps(cfg, backend)
        for name in ("mailboxes", "aliases", "transports"):
            sides[f"{name}, {'combined' if combined else 'one query per key'}"] = built[name].lookup
    try:
        return await rounds(sides, keys, count)
    finally:
        for backend in backends:
            await backend.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(datagen.SIZES), default="small")
    parser.add_argument("--keys", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data = datagen.generate(datagen.SIZES[args.size])
    keys = [key for _, key in datagen.keys(data, args.keys)]
    with contextlib.ExitStack() as stack:
        mariadb = MariaDB.private()
        stack.callback(mariadb.close)
        mariadb.open()
        account = mariadb.create_database("mail", "mail_admin", "mail_admin_password")
        datagen.load_mysql(
            data,
            host=account.host,
            port=account.port,
            user=account.user,
            password=account.password,
            database=account.database,
        )
        print(f"size {args.size}, {len(keys):,} keys (the key mix of bench/lookups.py), {args.rounds} rounds")
        for title, part in (("statements", statements), ("maps", maps)):
            result = uvloop.run(part(account, keys, args.rounds))
            print(f"\n{title}: median wall time per key (µs)")
            for name, us in result.items():
                print(f"  {name:42s} {us:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The long forms of the reliability cases (issue 8), run by hand (not a test).

    python bench/reliability.py --minutes 2 --case all
    python bench/reliability.py --minutes 1 --case killed --connections 100

Runs the cases of tests/reliability_support.py, the same code tests/test_reliability.py runs for
a few seconds in CI, for about ``--minutes`` each: mailmapd as a real process on loopback, a
private MariaDB where the case needs one (started for each case, since cases kill and pause
it). For each case it prints what ran, for how long, the requests answered, the figures, and
what went wrong. Exit status 1 if any case found a problem. Record the output in
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import reliability_support as rs
from tests.conftest import mysql_url
from tests.support.mariadb import MariaDB

CASES = ("killed", "slow", "failover", "flood", "clients", "hostile", "keyspace", "reload")


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mariadbd = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin")
    version = "not installed"
    if mariadbd:
        out = subprocess.run([mariadbd, "--version"], capture_output=True, text=True, check=False).stdout
        version = out.strip().split(" Ver ")[-1] if out else "?"
    return (
        f"nproc {os.cpu_count()}, {cpu}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, MariaDB {version}"
    )


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mmrel-", dir="/tmp", ignore_cleanup_errors=True) as path:
        yield Path(path)


@contextlib.asynccontextmanager
async def fresh_mariadb() -> AsyncIterator[tuple[MariaDB, Path]]:
    """A private MariaDB of its own (cases kill and pause it) and a work directory."""
    db = MariaDB.private()
    with workdir() as work:
        try:
            await asyncio.to_thread(db.open)
            yield db, work
        finally:
            await asyncio.to_thread(db.close)


async def run_case(case: str, seconds: float, connections: int, keys: int) -> AsyncIterator[rs.CaseReport]:
    """The runs of one case, their durations adding up to about ``seconds``."""
    half = seconds / 2
    if case == "killed":
        async with fresh_mariadb() as (db, work):
            cycles = max(1, int(seconds // 15))
            yield await rs.case_db_killed(db, work, seconds=seconds, connections=connections, cycles=cycles)
    elif case == "slow":
        for mode in ("lock", "pause"):
            async with fresh_mariadb() as (db, work):
                yield await rs.case_db_slow(
                    db,
                    work,
                    mode=mode,
                    seconds=half,
                    stall=half / 2,
                    connections=connections,
                    other_tables_must_answer=mode == "lock",
                )
    elif case == "failover":
        for mode in ("refused", "hung"):
            async with fresh_mariadb() as (db, work):
                yield await rs.case_failover(db, work, mode=mode, seconds=half, connections=connections)
    elif case == "flood":
        with workdir() as work:
            yield await rs.case_flood(work, seconds=seconds)
    elif case == "clients":
        for part in rs.CLIENT_PARTS:
            with workdir() as work:
                yield await rs.case_clients(work, part=part, seconds=seconds / len(rs.CLIENT_PARTS), non_readers=2)
    elif case == "hostile":
        with workdir() as work:
            yield await rs.case_hostile(rs.sqlite_url(work), work, backend="SQLite", seconds=seconds / 3)
        async with fresh_mariadb() as (db, work):
            url = mysql_url(rs.mysql_account(db))
            yield await rs.case_hostile(url, work, backend="MariaDB", seconds=seconds / 3)
        async with fresh_mariadb() as (db, work):  # known bugs: see tests/test_reliability.py
            url = mysql_url(rs.mysql_account(db, "latin1"))
            yield await rs.case_hostile(url, work, backend="MariaDB latin1 tables", rounds=1)
        async with fresh_mariadb() as (db, work):
            url = mysql_url(rs.mysql_account(db))
            yield await rs.case_long_dotted_keys(url, work, backend="MariaDB", concurrent=8, rounds=2)
    elif case == "keyspace":
        with workdir() as work:
            url = rs.sqlite_url(work)
            yield await rs.case_keyspace(url, work, backend="SQLite", keys=keys, max_entries=10_000, seconds=seconds)
    elif case == "reload":
        with workdir() as work:
            url = rs.sqlite_url(work)
            yield await rs.case_reload(url, work, backend="SQLite", seconds=half, connections=connections)
        async with fresh_mariadb() as (db, work):
            url = mysql_url(rs.mysql_account(db))
            yield await rs.case_reload(url, work, backend="MariaDB", seconds=half, connections=connections)
    else:
        raise ValueError(f"unknown case {case!r}")


async def main(cases: list[str], seconds: float, connections: int, keys: int) -> int:
    print(f"machine: {machine()}")
    print(f"cases: {', '.join(cases)}; about {seconds:g} s each; {connections} client connections where it applies")
    failed = 0
    started = time.monotonic()
    for case in cases:
        async for report in run_case(case, seconds, connections, keys):
            print()
            print(report.render(), flush=True)
            failed += bool(report.problems)
    print(f"\n{failed} run(s) with problems; {time.monotonic() - started:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=1.0, help="about how long each case runs (default 1)")
    parser.add_argument("--case", nargs="+", choices=[*CASES, "all"], default=["all"], dest="cases")
    parser.add_argument("--connections", type=int, default=50, help="client connections of the load (default 50)")
    parser.add_argument("--keys", type=int, default=1_000_000, help="key-space flood: most keys to send")
    args = parser.parse_args()
    chosen = list(CASES) if "all" in args.cases else list(dict.fromkeys(args.cases))
    sys.exit(asyncio.run(main(chosen, args.minutes * 60, args.connections, args.keys)))

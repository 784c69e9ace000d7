"""The quota policy's cost, warm and cold, side by side in one run (not a test).

    python bench/quota_policy.py [--messages N] [--requests R]

Starts a real mailmapd App on a temporary SQLite database with a policy listener on a unix
socket, then, over one persistent connection as smtpd keeps it:

- warm: R policy requests for a user whose usage and lookups are cached;
- cold: the same user's request after every cache is dropped (lookups from SQLite and a
  scan of its N-message Maildir), repeated a few times;
- scan: scan_maildir() alone on the same Maildir, for reference.

Prints per-request latency (median, p99) and the ratio cold/warm. Absolute numbers are
this machine's; the ratios are what to compare between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailmapd.config import parse_config
from mailmapd.daemon import App
from mailmapd.maildir import scan_maildir

REQUEST = b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=user@bench.test\nsize=1000\n\n"


def build_maildir(root: Path, messages: int) -> None:
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(messages):
        (root / "cur" / f"{1_700_000_000 + i}.M{i}P1.bench,S={3000 + i % 5000}:2,S").touch()


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    started = time.perf_counter()
    writer.write(REQUEST)
    reply = await reader.readuntil(b"\n\n")
    elapsed = time.perf_counter() - started
    assert reply.startswith(b"action="), reply
    return elapsed


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(ordered) * 1e6:8.1f} us   p99 {p99 * 1e6:8.1f} us   (n={len(ordered)})"


async def main(messages: int, requests: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="mmbench", dir="/tmp"))
    db = work / "mail.db"
    sock = work / "policy.sock"
    build_maildir(work / "vmail" / "bench.test" / "user", messages)
    cfg = parse_config(
        {
            "database": {"url": f"sqlite://{db}"},
            "cache": {"poll_interval": 0.0},
            "quota": {"mailbox_base": str(work / "vmail"), "usage_cache_ttl": 3600.0},
            "metrics": {"address": ""},
            "server": {"control_socket": ""},
            "listen": [{"protocol": "policy", "address": f"unix:{sock}"}],
        },
        "bench",
    )
    app = App(cfg)
    await app.start()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO domains VALUES ('bench.test')")
        conn.execute("INSERT INTO users VALUES ('user@bench.test', 'x', 1000000000)")
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        await ask(reader, writer)  # warm everything once
        warm = [await ask(reader, writer) for _ in range(requests)]
        cold = []
        for _ in range(20):
            assert app.resolver is not None
            assert app.policy is not None
            app.resolver.cache.flush()
            app.policy._usage_cache.clear()  # noqa: SLF001 - the benchmark drops the usage cache on purpose
            cold.append(await ask(reader, writer))
        scans = []
        for _ in range(20):
            started = time.perf_counter()
            scan_maildir(work / "vmail" / "bench.test" / "user")
            scans.append(time.perf_counter() - started)
    finally:
        writer.close()
        await app.stop()
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(f"maildir: {messages} messages")
    print(f"warm policy check : {summary(warm)}")
    print(f"cold policy check : {summary(cold)}")
    print(f"scan_maildir alone: {summary(scans)}")
    print(f"cold / warm median: {statistics.median(cold) / statistics.median(warm):.0f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.requests))

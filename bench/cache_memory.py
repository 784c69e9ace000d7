"""Memory and hit cost of the lookup cache, new against old (issue 7: 1,000,000 cached keys
in at most 300 MB RSS).

    python bench/cache_memory.py [N]                        # both implementations, N = 1,000,000
    python bench/cache_memory.py N --implementation new     # one of them
    python bench/cache_memory.py N --max-entries 1000000    # a bound the keys exceed: rotations

Fills a LookupCache (``--max-entries``, default 2,000,000, so nothing is evicted) with N
distinct mailbox answers in map "mailboxes", key ``user{i}@domain{i % 100000}.example`` and
value ``domain{i % 100000}.example/user{i}/``, as the resolver stores them. It prints the RSS
(VmRSS from /proc/self/status) before and after, the growth per entry held, the slowest put (a
generation rotation in the new cache), and the cost of ``fresh()`` on a hit: "hit" over
100,000 keys picked at random among the newest half held, "hot" on one key again and again (the old API's
``(map, key)`` tuple is built in the timed call, as the resolver built it).

"new" is mailmapd/cache.py. "old" is the cachetools version, read from git (``--old-rev``,
by default the last commit that has it) and executed in a fresh module. Each implementation
runs in a process of its own, so that they do not share a heap.
"""

from __future__ import annotations

import argparse
import gc
import random
import subprocess
import sys
import time
import timeit
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailmapd.proto import Found

ROOT = Path(__file__).resolve().parent.parent
OLD_REV = "457fcf54c92075df76968b139e10db467abe1c48"  # the last commit with the cachetools cache
TABLE = "mailboxes"
TTL = 3600.0
SAMPLE = 100_000


def rss_kib() -> int:
    with Path("/proc/self/status").open() as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def load_old(rev: str) -> types.ModuleType:
    """mailmapd/cache.py as it was at ``rev``, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{rev}:mailmapd/cache.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType("old_cache")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev[:12]}:mailmapd/cache.py", "exec"), module.__dict__)  # noqa: S102 - our own code from git
    return module


class Adapter:
    """One implementation behind the new API, and the statement that times a fresh() hit."""

    def __init__(self, implementation: str, max_entries: int, rev: str) -> None:
        if implementation == "new":
            from mailmapd.cache import LookupCache  # noqa: PLC0415 - only in the process that measures it

            self.cache: Any = LookupCache(max_entries)
            self.put: Callable[[str, str, Found, float], None] = self.cache.put
            self.fresh: Callable[[str, str], object] = self.cache.fresh
            self.statement = "fresh(TABLE, key)"
        else:
            old = self.cache = load_old(rev).LookupCache(max_entries)
            self.put = lambda table, key, result, ttl: old.put((table, key), result, ttl, 0.0)
            self.fresh = lambda table, key: old.fresh((table, key))
            self.statement = "fresh((TABLE, key))"  # the resolver built the tuple


def measure(implementation: str, n: int, max_entries: int, rev: str) -> str:
    adapter = Adapter(implementation, max_entries, rev)
    put = adapter.put
    gc.collect()
    before = rss_kib()
    slowest = 0.0
    clock = time.perf_counter
    for i in range(n):
        domain = f"domain{i % 100_000}.example"
        key, result = f"user{i}@{domain}", Found(f"{domain}/user{i}/")
        started = clock()
        put(TABLE, key, result, TTL)
        slowest = max(slowest, clock() - started)
    gc.collect()
    after = rss_kib()
    entries = len(adapter.cache)

    # Hits on the newest half: in the new cache those are young, so reading them does not
    # rotate (a hit in old moves the entry to young, and rotates if young is full).
    picks = random.sample(range(n - entries // 2, n), min(SAMPLE, entries // 2))
    keys = [f"user{i}@domain{i % 100_000}.example" for i in picks]
    assert all(adapter.fresh(TABLE, key) is not None for key in keys)
    spread_ns = hit_ns(adapter, keys)  # each hit on another entry: memory latency included
    hot_ns = hit_ns(adapter, keys[:1] * len(keys))  # the same entry every time: the CPU cost

    return (
        f"{implementation:4} {n:>10,} {entries:>10,} {before / 1024:>9.1f} {after / 1024:>9.1f}"
        f" {(after - before) * 1024 / max(1, entries):>11.1f} {slowest * 1000:>10.2f} {spread_ns:>9.0f} {hot_ns:>9.0f}"
    )


def hit_ns(adapter: Adapter, keys: list[str]) -> float:
    """Nanoseconds per fresh() hit over ``keys``, the best of five passes."""
    env = {"fresh": adapter.cache.fresh, "TABLE": TABLE, "keys": keys}
    timer = timeit.Timer(f"for key in keys: {adapter.statement}", globals=env)
    return min(timer.repeat(repeat=5, number=1)) / max(1, len(keys)) * 1e9


HEADER = (
    f"{'impl':4} {'puts':>10} {'entries':>10} {'RSS0 MiB':>9} {'RSS1 MiB':>9}"
    f" {'B/entry':>11} {'put max ms':>10} {'hit ns':>9} {'hot ns':>9}"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=1_000_000, help="distinct keys to put (1,000,000)")
    parser.add_argument("--implementation", choices=["new", "old", "both"], default="both")
    parser.add_argument("--max-entries", type=int, default=2_000_000, help="the cache bound (2,000,000)")
    parser.add_argument("--old-rev", default=OLD_REV, help="the git revision of the old cache.py")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, max_entries {args.max_entries:,}")
    print(HEADER)
    if args.implementation != "both":
        print(measure(args.implementation, args.n, args.max_entries, args.old_rev))
        return 0
    for implementation in ("old", "new"):
        command = [sys.executable, __file__, str(args.n), "--implementation", implementation]
        command += ["--max-entries", str(args.max_entries), "--old-rev", args.old_rev]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        print(output.splitlines()[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

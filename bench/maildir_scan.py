"""Time scan_maildir() over a 10,000-message Maildir (not a test).

    python bench/maildir_scan.py [--messages N] [--runs R] [--stat-fraction F]

Builds the Maildir under a temporary directory: N counted messages in INBOX and a few
folders, plus N/20 in Trash (listed and skipped), most
names carrying ,S=<size> as Dovecot and Courier write them, a fraction without (those need
an lstat() each, as mail delivered by stock virtual(8) does). Prints min and median seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailmapd.maildir import scan_maildir

FOLDERS = ["", ".Sent", ".Archive", ".Archive.2024"]
TRASH = ".Trash"


def build(root: Path, messages: int, stat_fraction: float) -> tuple[int, int]:
    """Create the Maildir; the (bytes, messages) a scan must find (Trash excluded)."""
    for folder in [*FOLDERS, TRASH]:
        for sub in ("new", "cur", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
    stat_every = round(1 / stat_fraction) if stat_fraction > 0 else 0
    expected_bytes = 0
    for i in range(messages + messages // 20):
        folder = FOLDERS[i % len(FOLDERS)] if i < messages else TRASH
        sub = "new" if i % 10 == 0 else "cur"
        size = 2000 + (i * 7919) % 50_000
        base = f"{1_700_000_000 + i}.M{i}P{os.getpid()}.bench"
        directory = root / folder / sub
        if stat_every and i % stat_every == 0:
            (directory / f"{base}:2,S").write_bytes(b"x" * size)
        else:
            (directory / f"{base},S={size},W={size + 40}:2,S").touch()
        if folder != TRASH:
            expected_bytes += size
    return expected_bytes, messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stat-fraction", type=float, default=0.1, help="share of names without ,S=")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailmapd-bench-") as tmp:
        root = Path(tmp) / "Maildir"
        expected = build(root, args.messages, args.stat_fraction)
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            usage = scan_maildir(root)
            times.append(time.perf_counter() - started)
            assert (usage.bytes, usage.messages) == expected, (usage, expected)
    print(
        f"scan_maildir: {args.messages} messages ({usage.messages} counted, {args.stat_fraction:.0%} without ,S=), "
        f"{args.runs} runs: min {min(times) * 1000:.2f} ms, median {statistics.median(times) * 1000:.2f} ms"
    )
    print(f"python {platform.python_version()}, nproc {os.cpu_count()}, {platform.machine()} {platform.system()}")


if __name__ == "__main__":
    main()

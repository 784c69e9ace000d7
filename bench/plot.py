"""PNG plots of a bench/lookups.py run: python bench/plot.py RESULTS.json [OUTDIR].

- lookups-sequential.png: time per key through ``postmap -q -``, every side, every round;
- lookups-throughput.png: lookups per second against connections (the C ceiling, mailmapd);
- lookups-latency.png: latency percentiles at each connection count (median over rounds).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt

COLORS = {
    "C ceiling": "black",
    "mailmapd socketmap warm": "tab:blue",
    "mailmapd tcp_table warm": "tab:green",
}


def plot_all(results: dict[str, Any], out: Path) -> list[Path]:
    written: list[Path] = []
    footer = (
        f"{results['machine']['nproc']} x {results['machine']['cpu']}, {results['started']} (this machine's figures)"
    )
    if "sequential" in results:
        written.append(sequential(results["sequential"], out / "lookups-sequential.png", footer))
    if "concurrent" in results:
        written.append(throughput(results["concurrent"], out / "lookups-throughput.png", footer))
        written.append(latency(results["concurrent"], out / "lookups-latency.png", footer))
    return written


def sequential(seq: dict[str, Any], path: Path, footer: str) -> Path:
    names = list(seq["summary"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, name in enumerate(names):
        values = [run["per_key_us"] for run in seq["runs"][name]]
        ax.barh(i, statistics.median(values), color="tab:blue" if name.startswith("mailmapd") else "tab:gray")
        ax.plot(values, [i] * len(values), "k.", markersize=4)
        ax.text(max(values), i, f"  {statistics.median(values):.0f} us", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("microseconds per key (median bar, dots = rounds)")
    ax.set_title(f"postmap -q - with {seq['keys']:,} keys, one process per run")
    fig.text(0.01, 0.01, footer, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput(conc: dict[str, Any], path: Path, footer: str) -> Path:
    ns = [int(n) for n in conc["summary"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for side, color in COLORS.items():
        rows = [conc["summary"][str(n)][side] for n in ns]
        median = [r["rps"] for r in rows]
        low = [r["rps"] - r["rps_min"] for r in rows]
        high = [r["rps_max"] - r["rps"] for r in rows]
        ax.errorbar(ns, median, yerr=[low, high], marker="o", capsize=3, label=side, color=color)
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("persistent connections, one request outstanding each")
    ax.set_ylabel("lookups per second")
    ax.set_title("Warm lookups: throughput against connections (median, min-max of rounds)")
    ax.grid(visible=True, alpha=0.3)
    ax.legend()
    fig.text(0.01, 0.01, footer, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency(conc: dict[str, Any], path: Path, footer: str) -> Path:
    ns = list(conc["runs"])
    fig, axes = plt.subplots(1, len(ns), figsize=(3.2 * len(ns), 4.2), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], ns, strict=True):
        for side, color in COLORS.items():
            runs = [r["quantiles"] for r in conc["runs"][n][side] if r["quantiles"]]
            if not runs:
                continue
            percentiles = [p for p, _ in runs[0]]
            values = [statistics.median(run[i][1] for run in runs) for i in range(len(percentiles))]
            # x: how rare (1 - percentile) on a log scale, so the tail gets the room.
            ax.plot([100 - p for p in percentiles], values, label=side, color=color)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_yscale("log")
        ax.set_xticks([50, 10, 1, 0.1], ["p50", "p90", "p99", "p99.9"])
        ax.axhline(1000, color="red", linewidth=0.6, linestyle=":")
        ax.set_title(f"{n} connection{'s' if n != '1' else ''}")
        ax.grid(visible=True, alpha=0.3, which="both")
    axes[0][0].set_ylabel("latency, microseconds (red: 1 ms)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Warm lookup latency percentiles (median of rounds)")
    fig.text(0.01, 0.01, footer, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 64
    results = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    for written in plot_all(results, out):
        print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The machine a run measured, the targets of issue 7, and the Markdown of docs/performance.md."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from lookup_bench.peers import REPO

# Issue 7's targets.
WARM_VS_PROXY = 2.0  # warm socketmap at least 2x faster than proxy:mysql:
COLD_VS_MYSQL = 1.3  # cold no slower than 1.3x mysql:
CEILING_SHARE = 0.5  # warm concurrent throughput at least 0.5x the C ceiling
P99_AT_50_US = 1000.0  # p99 under 1 ms at 50 connections
RSS_AT_1M_MIB = 300.0  # at most 300 MB with 1,000,000 cached keys


def _first_line(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return "not installed"
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr) else "unknown"


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.partition(":")[2].strip()
            break
    postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    mariadbd = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin") or "mariadbd"
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "--", "mailmapd"])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "mariadb": _first_line([mariadbd, "--version"]).partition(" Ver ")[2] or "unknown",
        "postfix": _first_line([postconf, "-d", "mail_version"]).replace("mail_version = ", ""),
        "cc": _first_line(["cc", "--version"]),
        "mailmapd": f"commit {commit}" + (" with local changes to mailmapd/" if dirty not in ("", "unknown") else ""),
        "load_at_start": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
    }


# --------------------------------------------------------------------------- targets


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seq = results.get("sequential")
    if seq is not None:
        s = seq["summary"]
        warm = 1.0 / s["mailmapd socketmap warm"]["ratio_to_proxy:mysql:"]
        out.append(
            _target(
                "warm socketmap vs proxy:mysql: (postmap -q -)",
                f">= {WARM_VS_PROXY:g}x faster",
                warm,
                warm >= WARM_VS_PROXY,
                "x faster",
            )
        )
        cold = s["mailmapd socketmap cold"]["ratio_to_mysql:"]
        out.append(
            _target(
                "cold socketmap vs mysql: (postmap -q -)",
                f"<= {COLD_VS_MYSQL:g}x the time",
                cold,
                cold <= COLD_VS_MYSQL,
                "x the time"
                + (
                    f" (bound for a socketmap server: {seq['cold_bound']['ratio_to_mysql:']:.2f}x)"
                    if "cold_bound" in seq
                    else ""
                ),
            )
        )
    conc = results.get("concurrent")
    if conc is not None:
        summary = conc["summary"]
        side = "mailmapd socketmap warm"
        best_n = max(summary, key=lambda n: summary[n][side]["rps"])
        best_ceiling = max(summary[n]["C ceiling"]["rps"] for n in summary)
        share = summary[best_n][side]["rps"] / best_ceiling
        out.append(
            _target(
                "warm concurrent throughput vs the C ceiling (best of each)",
                f">= {CEILING_SHARE:g}x",
                share,
                share >= CEILING_SHARE,
                f"x ({summary[best_n][side]['rps']:,.0f}/s at {best_n} connections vs {best_ceiling:,.0f}/s)",
            )
        )
        if "50" in summary:
            p99 = summary["50"][side]["p99"]
            out.append(
                _target(
                    "p99 latency at 50 connections, closed loop",
                    f"< {P99_AT_50_US:g} us",
                    p99,
                    p99 < P99_AT_50_US,
                    " us",
                )
            )
        if conc.get("paced_connections") == 50:
            for rate, row in conc["paced_summary"].items():
                p99 = row[side]["p99"]
                out.append(
                    _target(
                        f"p99 latency at 50 connections, paced at {float(rate):,.0f}/s",
                        f"< {P99_AT_50_US:g} us",
                        p99,
                        p99 < P99_AT_50_US,
                        f" us (C ceiling: {row['C ceiling']['p99']:.0f} us)",
                    )
                )
    mem = results.get("memory")
    if mem is not None:
        last = mem["points"][-1]
        entries = last.get("target_entries", last["entries"])
        rss = last.get("rss_kib_extrapolated", last["rss_kib"]) / 1024
        note = " (extrapolated)" if last["extrapolated"] else ""
        if entries >= 1_000_000:
            out.append(
                _target(
                    "RSS with 1,000,000 cached keys",
                    f"<= {RSS_AT_1M_MIB:g} MiB",
                    rss,
                    rss <= RSS_AT_1M_MIB,
                    f" MiB{note}",
                )
            )
    return out


def _target(what: str, goal: str, value: float, met: bool, unit: str) -> dict[str, Any]:
    return {"what": what, "goal": goal, "value": value, "met": met, "unit": unit}


# --------------------------------------------------------------------------- markdown


def markdown(results: dict[str, Any], image_dir: str | None) -> str:
    m = results["machine"]
    out = [
        (
            f"Run of {results['started']}, size `{results['size']}` "
            f"({results['dataset']['domains']:,} domains, {results['dataset']['users']:,} users, "
            f"{results['dataset']['aliases']:,} aliases, {results['dataset']['transports']:,} transports)."
        ),
        "",
        "    " + results["command"],
        "",
        "| machine | |",
        "| --- | --- |",
        f"| CPU | {m['nproc']} x {m['cpu']} (shared, noisy) |",
        f"| kernel | {m['kernel']} |",
        f"| Python | {m['python']} |",
        f"| MariaDB | {m['mariadb']} |",
        f"| Postfix | {m['postfix']} |",
        f"| C compiler | {m['cc']} |",
        f"| mailmapd | {m['mailmapd']} |",
        f"| load average (1, 5, 15 min) at start / end | {m.get('load_at_start', '?')} / {m.get('load_at_end', '?')} |",
        "",
    ]
    if results.get("targets"):
        out += ["| target | goal | measured | met |", "| --- | --- | --- | --- |"]
        for t in results["targets"]:
            out.append(
                f"| {t['what']} | {t['goal']} | {t['value']:.2f}{t['unit']} | {'yes' if t['met'] else '**no**'} |"
            )
        out.append("")
    if "sequential" in results:
        out += _sequential_md(results["sequential"], image_dir)
    if "concurrent" in results:
        out += _concurrent_md(results["concurrent"], image_dir)
    if "memory" in results:
        out += _memory_md(results["memory"])
    if "efficiency" in results:
        out += _efficiency_md(results["efficiency"])
    if "profile" in results:
        out += _profile_md(results["profile"])
    return "\n".join(out) + "\n"


def _sequential_md(seq: dict[str, Any], image_dir: str | None) -> list[str]:
    kinds = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in seq["key_kinds"].items())
    out = [
        (
            f"**Sequential**: one `postmap -q -` process per run reads {seq['keys']:,} distinct keys "
            f"({kinds}) on stdin; {seq['rounds']} rounds, sides in rotating order. Time per key is the "
            "run's wall time (postmap's start included) divided by the keys; ratios are medians of "
            "per-round ratios."
        ),
        "",
        (
            "| side | per key, median (this machine) | min - max | x mysql: | x mysql:, search order "
            "| x proxy:mysql: | DB queries per key | mailmapd CPU per key |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in seq["summary"].items():
        if name == "mysql:, search order":
            queries = f"{seq['walk_queries_per_key']:.2f}"
        elif "queries_per_key" in row:
            queries = f"{row['queries_per_key']:.2f}"
        elif name.startswith(("mysql", "proxy")):
            queries = "1"
        else:
            queries = "0"
        cpu = f"{row['daemon_cpu_us_per_key']:.0f} us" if "daemon_cpu_us_per_key" in row else ""
        out.append(
            f"| {name} | {row['median_us']:.1f} us | {row['min_us']:.1f} - {row['max_us']:.1f} | "
            f"{row['ratio_to_mysql:']:.2f} | {row['ratio_to_mysql:, search order']:.2f} | "
            f"{row['ratio_to_proxy:mysql:']:.2f} | {queries} | {cpu} |"
        )
    bound = seq.get("cold_bound")
    if bound is not None:
        out.append(
            f"| *bound for a socketmap server, cold: C ceiling + (mysql: - floor)* | "
            f"{bound['median_us']:.1f} us | | {bound['ratio_to_mysql:']:.2f} | "
            f"{bound['ratio_to_mysql:, search order']:.2f} | {bound['ratio_to_proxy:mysql:']:.2f} | 1 | |"
        )
    out.append("")
    if image_dir:
        out += [f"![time per key through postmap -q -]({image_dir}/lookups-sequential.png)", ""]
    return out


def _concurrent_md(conc: dict[str, Any], image_dir: str | None) -> list[str]:
    summary = conc["summary"]
    sides = list(next(iter(summary.values())))
    out = [
        (
            f"**Concurrent**: bench/loadgen.c (C, epoll, one thread) keeps N connections each with one "
            f"request outstanding, asking the {conc['keys']:,} keys (all cached) of the `mailboxes` map; "
            f"{conc['rounds']} rounds of {conc['duration']:g} s (after {conc['warmup']:g} s of warm-up) "
            "per side and N, in rotating order. Medians over rounds; `x ceiling` is the median of "
            "per-round ratios; `cpu` is the server's CPU time over wall time (1.00 = one core)."
        ),
        "",
        "| N | " + " | ".join(f"{s}: lookups/s (x ceiling, cpu)" for s in sides) + " |",
        "| --- |" + " --- |" * len(sides),
    ]
    for n, row in summary.items():
        cells = [f"{row[s]['rps']:,.0f} ({row[s]['ratio_to_ceiling']:.2f}, {row[s]['server_cpu']:.2f})" for s in sides]
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    out += [
        "",
        "| N | " + " | ".join(f"{s}: p50 / p99 / p99.9 (us)" for s in sides) + " |",
        "| --- |" + " --- |" * len(sides),
    ]
    for n, row in summary.items():
        cells = [f"{row[s]['p50']:.0f} / {row[s]['p99']:.0f} / {row[s]['p999']:.0f}" for s in sides]
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    if conc.get("paced_summary"):
        out += [
            "",
            (
                f"Paced: {conc['paced_connections']} connections, requests due at a fixed rate in total, each "
                "sent on a free connection; latency counted from when the request was due."
            ),
            "",
            "| offered | " + " | ".join(f"{s}: achieved, p50 / p99 / p99.9 (us)" for s in sides) + " |",
            "| --- |" + " --- |" * len(sides),
        ]
        for rate, row in conc["paced_summary"].items():
            cells = [
                f"{row[s]['rps']:,.0f}/s, {row[s]['p50']:.0f} / {row[s]['p99']:.0f} / {row[s]['p999']:.0f}"
                for s in sides
            ]
            out.append(f"| {float(rate):,.0f}/s | " + " | ".join(cells) + " |")
    loadgen_cpu = max(row[s]["loadgen_cpu"] for row in summary.values() for s in sides)
    out += [
        "",
        (
            f"The load generator used at most {loadgen_cpu:.2f} of a core in any run; mailmapd's own "
            f"backend queries during the load: {conc['backend_queries_during_load']:.0f} (every answer "
            "came from the cache)."
        ),
        "",
    ]
    if image_dir:
        out += [
            f"![throughput against connections]({image_dir}/lookups-throughput.png)",
            "",
            f"![latency distribution]({image_dir}/lookups-latency.png)",
            "",
        ]
    return out


def _memory_md(mem: dict[str, Any]) -> list[str]:
    out = [
        (
            "**Memory**: one mailmapd (SQLite backend, `cache.max_entries` twice the keys, TTLs far "
            "beyond the run) asked each key once through the socketmap; the keys are existing "
            "mailboxes, so every entry holds a found value (`domain/user/`). RSS from /proc."
        ),
        "",
        "| cached entries | RSS | per entry above the empty cache | time to fill |",
        "| --- | --- | --- | --- |",
    ]
    base = mem["points"][0]["rss_kib"]
    for p in mem["points"]:
        per = f"{(p['rss_kib'] - base) * 1024 / p['entries']:.0f} bytes" if p["entries"] else ""
        fill = f"{p['fill_seconds']:.0f} s" if "fill_seconds" in p else ""
        out.append(f"| {p['entries']:,} | {p['rss_kib'] / 1024:.0f} MiB | {per} | {fill} |")
        if p["extrapolated"]:
            out.append(
                f"| {p['target_entries']:,} (extrapolated: the fill ran out of its {mem['time_limit']:g} s) | "
                f"{p['rss_kib_extrapolated'] / 1024:.0f} MiB | | |"
            )
    out.append("")
    return out


def _efficiency_md(eff: dict[str, Any]) -> list[str]:
    out = [
        (
            f"**Backend efficiency**: {eff['recipients']:,} recipients drawn from {eff['population']:,} "
            "addresses (the key mix) with Zipf weights 1/rank; each costs the six lookups a Postfix "
            "using mailmapd's maps sends (domains and aliases twice, mailboxes, transports): "
            f"{eff['lookups']:,} socketmap lookups, {eff['repeat_fraction']:.0%} of them repeats, over "
            f"{eff['connections']} connections. Counters from the metrics endpoint."
        ),
        "",
        "| cache | lookups | DB queries | queries per 1,000 lookups | answered from cache | run time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in eff["sides"].items():
        out.append(
            f"| {name} | {s['lookups']:,.0f} | {s['queries']:,.0f} | {s['queries_per_1000']:.0f} | "
            f"{s['cache_hit_fraction']:.0%} | {s['seconds']:.1f} s |"
        )
    out += [
        "",
        (
            "Each search order is one statement per query template (docs/maps.md). The last row, with "
            "`combine_queries = false`, "
            "sends one query per key and waits for each answer, as Postfix's own mysql: and proxy:mysql: "
            "clients do for the same lookups (mailmapd walks the same search orders): that row is their cost."
        ),
        "",
    ]
    return out


def _profile_md(prof: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for mode, what in (
        ("warm", "warm socketmap load (every key cached), {connections} closed-loop connections"),
        ("cold", "cold socketmap lookups (cache flushed, one connection, each key once, MariaDB backend)"),
    ):
        p = prof.get(mode)
        if p is None:
            continue
        out += [
            (
                f"**Profile, {mode}**: py-spy (200 Hz, {p['samples']:,} samples, idle time excluded) on mailmapd "
                f"under {what.format(connections=p['connections'])}, {p['rps_while_profiled']:,.0f} lookups/s "
                "while profiled."
            ),
            "",
            "| function (self time) | share | | function (inclusive, frames on 90 % of stacks left out) | share |",
            "| --- | --- | --- | --- | --- |",
        ]
        for (sf, ss), (tf, ts) in zip(p["self"][:15], p["total"][:15], strict=False):
            out.append(f"| `{sf}` | {ss:.1%} | | `{tf}` | {ts:.1%} |")
        out.append("")
    return out

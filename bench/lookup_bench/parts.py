"""The five measurements. Each returns a JSON-able dict; ``report`` turns them into tables.

Sides that are compared run in one process tree, on the same data and keys, in rotating
order round after round, so that the machine's drift hits every side alike; the summaries
are medians over rounds of per-round ratios.
"""

from __future__ import annotations

import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookup_bench import datagen
from lookup_bench.peers import (
    REPO,
    BenchError,
    Ceiling,
    LoadResult,
    Mailmapd,
    MailmapdConfig,
    cpu_seconds,
    rss_kib,
    run_loadgen,
)
from tests.oracle import address_walk

POSTMAP_TIMEOUT = 600.0


CEILING_SIDE = "C ceiling (socketmap, a constant)"
EFFICIENCY_POSTFIX_SIDE = "cache off, one query per key (combine_queries = false)"


def rotate(items: Sequence[Any], shift: int) -> list[Any]:
    k = shift % len(items)
    return [*items[k:], *items[:k]]


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def fill(mm: Mailmapd, loadgen: Path, keyfile: Path, table: str = "mailboxes", connections: int = 8) -> LoadResult:
    """Ask every key once (a cache fill); bounded at 30 minutes."""
    return run_loadgen(
        loadgen, mm.ports["socketmap"], keyfile, table=table, connections=connections, duration=1800, once=True
    )


# --------------------------------------------------------------------------- 1. sequential


@dataclass
class _Side:
    name: str
    table: str
    keyfile: Path
    prepare: Callable[[], None] | None = None
    daemon: Mailmapd | None = None
    done: Callable[[], None] | None = None


def postmap(config_dir: Path, table: str, keyfile: Path) -> tuple[float, int]:
    """``postmap -c DIR -q - TABLE < keyfile``: (wall seconds, keys found)."""
    binary = shutil.which("postmap") or "/usr/sbin/postmap"
    with keyfile.open("rb") as stdin:
        started = time.perf_counter()
        result = subprocess.run(
            [binary, "-c", str(config_dir), "-q", "-", table],
            stdin=stdin,
            capture_output=True,
            timeout=POSTMAP_TIMEOUT,
            check=False,
        )
        elapsed = time.perf_counter() - started
    problems = [line for line in result.stderr.decode().splitlines() if "empty lookup result" not in line]
    if problems or result.returncode not in (0, 1):
        raise BenchError(f"postmap -q - {table} exited {result.returncode}:\n" + "\n".join(problems[:20]))
    return elapsed, result.stdout.count(b"\n")


def walk_keys(keys: Sequence[str], users: set[str]) -> list[str]:
    """The keys Postfix's own daemons ask a mysql: virtual_mailbox_maps for these
    recipients: virtual(5)'s order (user+ext@domain, user@domain, @domain) up to the
    first hit, as mail_addr_find() does it."""
    out: list[str] = []
    for key in keys:
        for step, _ in address_walk(key):
            out.append(step)
            if step.lower() in users:
                break
    return out


def sequential(
    *,
    work: Path,
    data: datagen.Dataset,
    keys: Sequence[tuple[str, str]],
    postfix_config: Path,
    cf: Path,
    mm: Mailmapd,
    loadgen: Path,
    ceiling: Ceiling,
    rounds: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    plain = [k for _, k in keys]
    keyfile = write_lines(work / "seq-keys.txt", plain)
    users = {e.lower() for e in data.emails}
    walked = walk_keys(plain, users)
    walkfile = write_lines(work / "seq-walk.txt", walked)
    warm = {"ok": False}

    def flush() -> None:
        mm.flush()
        warm["ok"] = False

    def ensure_warm() -> None:
        if not warm["ok"]:
            fill(mm, loadgen, keyfile)
            warm["ok"] = True

    def filled() -> None:
        warm["ok"] = True  # a cold pass leaves every key cached

    sm = f"socketmap:inet:127.0.0.1:{mm.ports['socketmap']}:mailboxes"
    sides = [
        _Side("postmap floor (static:)", "static:x", keyfile),
        _Side("mysql:", f"mysql:{cf}", keyfile),
        _Side("mysql:, search order", f"mysql:{cf}", walkfile),
        _Side("proxy:mysql:", f"proxy:mysql:{cf}", keyfile),
        _Side("mailmapd socketmap cold", sm, keyfile, flush, mm, filled),
        _Side("mailmapd socketmap warm", sm, keyfile, ensure_warm, mm),
        _Side("mailmapd tcp_table warm", f"tcp:127.0.0.1:{mm.ports['tcp_table']}", keyfile, ensure_warm, mm),
        _Side(CEILING_SIDE, f"socketmap:inet:127.0.0.1:{ceiling.port}:mailboxes", keyfile),
    ]
    runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in sides}
    # Connections and first-use costs out of the way: one unmeasured pass per side.
    for side in sides:
        postmap(postfix_config, side.table, side.keyfile)
    for r in range(rounds):
        for side in rotate(sides, r):
            if side.prepare is not None:
                side.prepare()
            before = side.daemon.metrics() if side.daemon is not None else {}
            cpu0 = cpu_seconds(side.daemon.pid) if side.daemon is not None else 0.0
            seconds, found = postmap(postfix_config, side.table, side.keyfile)
            run = {"seconds": seconds, "per_key_us": seconds / len(plain) * 1e6, "found": float(found)}
            run["keys"] = float(len(plain))
            if side.daemon is not None:
                run["daemon_cpu_us_per_key"] = (cpu_seconds(side.daemon.pid) - cpu0) / len(plain) * 1e6
                after = side.daemon.metrics()
                run["queries"] = after.get("mailmapd_backend_queries_total", 0.0) - before.get(
                    "mailmapd_backend_queries_total", 0.0
                )
                run["lookups"] = after.get("mailmapd_lookups_total", 0.0) - before.get("mailmapd_lookups_total", 0.0)
            if side.done is not None:
                side.done()
            runs[side.name].append(run)
        log(
            f"  sequential round {r + 1}/{rounds}: "
            + ", ".join(f"{n} {v[-1]['per_key_us']:.0f}" for n, v in runs.items())
        )
    return {
        "keys": len(plain),
        "key_kinds": _kinds(keys),
        "walk_queries_per_key": len(walked) / len(plain),
        "rounds": rounds,
        "runs": runs,
        "summary": _sequential_summary(runs),
        "cold_bound": _cold_bound(runs),
    }


def _cold_bound(runs: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """The least a cold lookup through a socketmap server costs, per round: the round trip to
    a server that answers at once (the C ceiling) plus one database round trip made by Postfix's
    own C client (mysql: less the postmap floor). Medians, and the median ratio to each baseline."""
    bound = [
        c["per_key_us"] + m["per_key_us"] - f["per_key_us"]
        for c, m, f in zip(runs[CEILING_SIDE], runs["mysql:"], runs["postmap floor (static:)"], strict=True)
    ]
    out = {"median_us": statistics.median(bound)}
    for base in ("mysql:", "mysql:, search order", "proxy:mysql:"):
        out[f"ratio_to_{base}"] = statistics.median(b / v["per_key_us"] for b, v in zip(bound, runs[base], strict=True))
    return out


def _kinds(keys: Sequence[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for kind, _ in keys:
        out[kind] = out.get(kind, 0) + 1
    return out


def _sequential_summary(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for name, values in runs.items():
        per_key = [v["per_key_us"] for v in values]
        row = {
            "median_us": statistics.median(per_key),
            "min_us": min(per_key),
            "max_us": max(per_key),
        }
        for base in ("mysql:", "mysql:, search order", "proxy:mysql:"):
            ratios = [v["per_key_us"] / b["per_key_us"] for v, b in zip(values, runs[base], strict=True)]
            row[f"ratio_to_{base}"] = statistics.median(ratios)
        if "queries" in values[0]:
            row["queries_per_key"] = statistics.median(v["queries"] / v["keys"] for v in values)
            row["daemon_cpu_us_per_key"] = statistics.median(v["daemon_cpu_us_per_key"] for v in values)
        summary[name] = row
    return summary


# --------------------------------------------------------------------------- 2. concurrent


def concurrent(
    *,
    work: Path,
    keys: Sequence[tuple[str, str]],
    mm: Mailmapd,
    loadgen: Path,
    ceiling_binary: Path,
    connections: Sequence[int],
    rounds: int,
    duration: float,
    warmup: float,
    paced_connections: int,
    paced_rates: Sequence[float],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Closed loop at each N, then paced load (fixed offered rates) at ``paced_connections``."""
    keyfile = write_lines(work / "conc-keys.txt", [k for _, k in keys])
    fill(mm, loadgen, keyfile)
    ceiling = Ceiling(ceiling_binary)
    try:
        targets: list[tuple[str, str, int, int]] = [
            ("C ceiling", "socketmap", ceiling.port, ceiling.pid),
            ("mailmapd socketmap warm", "socketmap", mm.ports["socketmap"], mm.pid),
            ("mailmapd tcp_table warm", "tcp", mm.ports["tcp_table"], mm.pid),
        ]
        before = mm.metrics()

        def series(n: int, rate: float) -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in targets}
            for r in range(rounds):
                for name, protocol, port, pid in rotate(targets, r):
                    cpu0 = cpu_seconds(pid)
                    res = run_loadgen(
                        loadgen,
                        port,
                        keyfile,
                        protocol=protocol,
                        connections=n,
                        duration=duration,
                        warmup=warmup,
                        rate=rate,
                        samples=work / "samples.bin",
                    )
                    server_cpu = (cpu_seconds(pid) - cpu0) / float(res.raw["wall_seconds"])
                    if res.raw["errors"] or res.raw["replies"]["temp"] or res.raw["replies"]["other"]:
                        raise BenchError(f"{name} with {n} connections: {res.raw}")
                    out[name].append({**res.raw, "server_cpu": server_cpu, "quantiles": res.quantiles})
            return out

        results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for n in connections:
            results[str(n)] = series(n, 0.0)
            log(
                f"  {n:>3} connections: "
                + ", ".join(f"{k} {statistics.median(x['rps'] for x in v):,.0f}/s" for k, v in results[str(n)].items())
            )
        paced: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for rate in paced_rates:
            paced[f"{rate:g}"] = series(paced_connections, rate)
            log(
                f"  {paced_connections} connections at {rate:,.0f}/s: "
                + ", ".join(
                    f"{k} p99 {statistics.median(x['latency_us']['p99'] for x in v):,.0f} us"
                    for k, v in paced[f"{rate:g}"].items()
                )
            )
        after = mm.metrics()
    finally:
        ceiling.stop()
    queries = after.get("mailmapd_backend_queries_total", 0.0) - before.get("mailmapd_backend_queries_total", 0.0)
    return {
        "keys": len(keys),
        "rounds": rounds,
        "duration": duration,
        "warmup": warmup,
        "connections": list(connections),
        "backend_queries_during_load": queries,
        "runs": results,
        "summary": _concurrent_summary(results),
        "paced_connections": paced_connections,
        "paced_runs": paced,
        "paced_summary": _concurrent_summary(paced),
    }


def _concurrent_summary(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for n, per_n in results.items():
        ceiling = per_n["C ceiling"]
        row: dict[str, Any] = {}
        for name, values in per_n.items():
            row[name] = {
                "rps": statistics.median(v["rps"] for v in values),
                "rps_min": min(v["rps"] for v in values),
                "rps_max": max(v["rps"] for v in values),
                "ratio_to_ceiling": statistics.median(
                    v["rps"] / c["rps"] for v, c in zip(values, ceiling, strict=True)
                ),
                "server_cpu": statistics.median(v["server_cpu"] for v in values),
                "loadgen_cpu": statistics.median(v["loadgen_cpu_seconds"] / v["wall_seconds"] for v in values),
                **{p: statistics.median(v["latency_us"][p] for v in values) for p in ("p50", "p99", "p999", "max")},
            }
        out[n] = row
    return out


# --------------------------------------------------------------------------- 3. memory


def memory(
    *,
    work: Path,
    loadgen: Path,
    steps: Sequence[int],
    time_limit: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """RSS of a mailmapd (SQLite backend) holding 0, then each of ``steps`` cached answers.

    The keys are existing mailboxes (a found answer is the larger kind of entry), asked once
    each through the socketmap. A step that does not finish within ``time_limit`` seconds
    is extrapolated linearly from the entries reached, and the result says so.
    """
    biggest = max(steps)
    size = datagen.Size(domains=max(1, biggest // 10), users=biggest + 1000, aliases=0, transports=0)
    started = time.monotonic()
    data = datagen.generate(size)
    db = work / "memory.db"
    db.unlink(missing_ok=True)
    datagen.load_sqlite(data, db)
    log(f"  memory: {size.users:,} users in SQLite in {time.monotonic() - started:.0f} s")
    emails = data.emails
    cfg = MailmapdConfig(f"sqlite://{db}", positive_ttl=1e7, negative_ttl=1e7, max_entries=2 * biggest, tcp_map=None)
    mm = Mailmapd(cfg, work, "mailmapd-memory")
    try:
        # The code paths, the pool and the metrics children exist before the baseline.
        fill(mm, loadgen, write_lines(work / "mem-warm.txt", emails[biggest:]), connections=20)
        mm.flush()
        base = rss_kib(mm.pid)
        points: list[dict[str, Any]] = [{"entries": 0, "rss_kib": base["VmRSS"], "extrapolated": False}]
        done = 0
        for step in sorted(steps):
            keyfile = write_lines(work / "mem-keys.txt", emails[done:step])
            t0 = time.monotonic()
            run_loadgen(
                loadgen,
                mm.ports["socketmap"],
                keyfile,
                connections=20,
                duration=time_limit,
                once=True,
            )
            seconds = time.monotonic() - t0
            entries = int(mm.metrics()["mailmapd_cache_entries"])
            rss = rss_kib(mm.pid)
            point: dict[str, Any] = {
                "entries": entries,
                "rss_kib": rss["VmRSS"],
                "hwm_kib": rss["VmHWM"],
                "fill_seconds": seconds,
                "extrapolated": False,
            }
            if entries < step:
                per_entry = (rss["VmRSS"] - base["VmRSS"]) / max(1, entries)
                point = {
                    **point,
                    "extrapolated": True,
                    "target_entries": step,
                    "rss_kib_extrapolated": base["VmRSS"] + per_entry * step,
                }
            points.append(point)
            log(f"  memory: {entries:,} entries, RSS {rss['VmRSS'] / 1024:.0f} MiB after {seconds:.0f} s")
            done = entries
            if entries < step:
                break
    finally:
        mm.stop()
    return {"points": points, "backend": "sqlite", "time_limit": time_limit}


# --------------------------------------------------------------------------- 4. efficiency


def efficiency(
    *,
    work: Path,
    population: Sequence[str],
    recipients: int,
    database_url: str,
    loadgen: Path,
    connections: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Database queries per 1,000 lookups for a recipient stream, cache on and off.

    Cache on: the default TTLs (60 s found, 10 s not found). Cache off: TTLs 0, each search
    order one statement. Cache off with ``combine_queries = false``: one query per key of
    each search order, which is what Postfix's own mysql: and proxy:mysql: clients send for
    the same lookups, since mailmapd's search orders are theirs.
    """
    lines = datagen.recipient_stream(population, recipients)
    stream = write_lines(work / "stream.txt", lines)
    out: dict[str, Any] = {
        "recipients": recipients,
        "lookups": len(lines),
        "population": len(population),
        "repeat_fraction": datagen.repeat_fraction(lines),
        "connections": connections,
        "sides": {},
    }
    for name, ttl, combine in (
        ("cache on (TTL 60 s / 10 s)", None, True),
        ("cache off (TTL 0)", 0.0, True),
        (EFFICIENCY_POSTFIX_SIDE, 0.0, False),
    ):
        cfg = MailmapdConfig(
            database_url,
            positive_ttl=60.0 if ttl is None else ttl,
            negative_ttl=10.0 if ttl is None else ttl,
            tcp_map=None,
            combine_queries=combine,
        )
        mm = Mailmapd(cfg, work, "mailmapd-efficiency")
        try:
            before = mm.metrics()
            t0 = time.monotonic()
            res = run_loadgen(
                loadgen, mm.ports["socketmap"], stream, table="-", connections=connections, once=True, duration=1800
            )
            seconds = time.monotonic() - t0
            after = mm.metrics()
        finally:
            mm.stop()
        lookups = after.get("mailmapd_lookups_total", 0.0) - before.get("mailmapd_lookups_total", 0.0)
        queries = after.get("mailmapd_backend_queries_total", 0.0) - before.get("mailmapd_backend_queries_total", 0.0)
        hits = after.get("mailmapd_cache_hits_total", 0.0) - before.get("mailmapd_cache_hits_total", 0.0)
        out["sides"][name] = {
            "lookups": lookups,
            "queries": queries,
            "queries_per_1000": queries / lookups * 1000 if lookups else 0.0,
            "cache_hit_fraction": hits / lookups if lookups else 0.0,
            "seconds": seconds,
            "replies": res.raw["replies"],
        }
        log(f"  efficiency, {name}: {queries / max(1.0, lookups) * 1000:.0f} queries per 1,000 lookups")
    return out


# --------------------------------------------------------------------------- 5. profile


def profile(
    *,
    work: Path,
    keys: Sequence[tuple[str, str]],
    mm: Mailmapd,
    loadgen: Path,
    connections: int,
    seconds: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """py-spy on mailmapd: the hottest frames, self and inclusive.

    warm: the cache holds every key, ``connections`` closed-loop connections for ``seconds``;
    cold: the cache flushed, each key asked once on one connection (as postmap does), again
    after another flush until ``seconds`` have passed (at most 20 passes).
    """
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        raise BenchError("py-spy is not installed: pip install py-spy")
    keyfile = write_lines(work / "prof-keys.txt", [k for _, k in keys])
    out: dict[str, Any] = {}
    for mode in ("warm", "cold"):
        if mode == "warm":
            fill(mm, loadgen, keyfile)
        raw = work / f"profile-{mode}.txt"
        spy = subprocess.Popen(
            [pyspy, "record", "-p", str(mm.pid), "-r", "200", "-f", "raw", "-o", str(raw), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.0)  # py-spy attaches
            lookups = 0
            started = time.monotonic()
            if mode == "warm":
                res = run_loadgen(loadgen, mm.ports["socketmap"], keyfile, connections=connections, duration=seconds)
                lookups = int(res.raw["requests"])
            else:
                for _ in range(20):
                    mm.flush()
                    res = run_loadgen(
                        loadgen, mm.ports["socketmap"], keyfile, connections=1, once=True, duration=seconds
                    )
                    lookups += int(res.raw["requests"])
                    if time.monotonic() - started >= seconds:
                        break
            rate = lookups / (time.monotonic() - started)
            spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
            _, err = spy.communicate(timeout=60)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        if not raw.exists():
            raise BenchError(f"py-spy wrote nothing:\n{err}")
        self_time, total_time, samples = collapse(raw.read_text())
        log(f"  profile {mode}: {samples} samples at {rate:,.0f} lookups/s")
        out[mode] = {
            "connections": connections if mode == "warm" else 1,
            "rps_while_profiled": rate,
            "samples": samples,
            "self": self_time[:25],
            "total": drop_outer(total_time)[:25],
        }
    return out


def collapse(text: str) -> tuple[list[tuple[str, float]], list[tuple[str, float]], int]:
    """py-spy's raw (collapsed) stacks -> (self, inclusive) shares per function, descending."""
    self_count: dict[str, int] = {}
    total_count: dict[str, int] = {}
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_function(f) for f in stack.split(";")]
        self_count[frames[-1]] = self_count.get(frames[-1], 0) + count
        for frame in set(frames):
            total_count[frame] = total_count.get(frame, 0) + count

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        return sorted(((f, c / samples) for f, c in counts.items()), key=lambda x: -x[1]) if samples else []

    return ranked(self_count), ranked(total_count), samples


def drop_outer(total: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Leave out the frames on every stack of the main thread (runpy, the CLI, the event
    loop's run_forever): they hold the root's share and say nothing."""
    if not total:
        return total
    root = max(share for _, share in total)
    return [(f, share) for f, share in total if share < root - 0.005]


def _function(frame: str) -> str:
    """``handle (mailmapd/server.py:300)`` -> ``handle (mailmapd/server.py)``: lines apart."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    for marker in ("/site-packages/", "/lib/python3.11/", f"{REPO}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"

"""mailmapd against Postfix's own mysql: and proxy:mysql: clients, in one run (issue 7).

    python bench/lookups.py                       # everything, size small (about 11 minutes here)
    python bench/lookups.py --parts sequential    # one part; see --help for the others
    python bench/lookups.py --size large          # 100,000 domains, 1,000,000 users: by hand
    python bench/lookups.py --generate-sql mail.sql --size medium   # only write the data

It starts its own private MariaDB and Postfix (tests/support), mailmapd as a real process
(its socketmap on port 0, read back from its log), and a C socketmap server that answers a constant (bench/ceiling.c, the ceiling);
it builds bench/loadgen.c and bench/ceiling.c with ``cc -O2``. Everything listens on
127.0.0.1 only, every run is bounded in count and time, and everything started is stopped.

Parts:

- sequential: ``postmap -q -`` (one process, keys on stdin) against mysql:, proxy:mysql:,
  mailmapd socketmap cold and warm, mailmapd tcp_table warm and the ceiling, alternating over
  rounds; from these, the bound for a cold lookup through any socketmap server;
- concurrent: N persistent connections, one request outstanding each, against the ceiling
  and mailmapd (socketmap and tcp_table, warm): throughput and p50/p99/p99.9 latency;
- memory: RSS of mailmapd holding 100,000 and 1,000,000 cached answers (SQLite backend);
- efficiency: database queries per 1,000 lookups for a recipient stream, cache on and off;
- profile: py-spy on mailmapd under warm concurrent load (``pip install py-spy``).

Writes results.json and report.md into --out (default: a new directory under /tmp) and the
plots into --plots (default docs/img). Absolute figures are this machine's; compare ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import grp
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lookup_bench import datagen, parts, report
from lookup_bench.peers import REPO, Ceiling, Mailmapd, MailmapdConfig, build

from tests.oracle import CF_FILES, write_seed_cf
from tests.support.mariadb import MariaDB
from tests.support.postfix import PostfixInstance

PARTS = ("sequential", "concurrent", "memory", "efficiency", "profile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/lookups.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=datagen.SIZES, default="small", help="data set size (default: small)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts (default: all)")
    parser.add_argument("--keys", type=int, default=5000, help="distinct keys per sequential run (default: 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="sequential rounds (default: 5)")
    parser.add_argument("--connections", default="1,10,50,100,200", help="concurrent connection counts")
    parser.add_argument("--conc-rounds", type=int, default=3, help="concurrent rounds per N (default: 3)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per concurrent run (default: 3)")
    parser.add_argument("--warmup", type=float, default=0.5, help="uncounted seconds before each (default: 0.5)")
    parser.add_argument("--paced-connections", type=int, default=50, help="connections of the paced runs")
    parser.add_argument("--paced-rates", default="1000,5000,10000", help="offered lookups/s of the paced runs")
    parser.add_argument("--memory-keys", default="100000,1000000", help="cached entries to measure RSS at")
    parser.add_argument(
        "--memory-time-limit", type=float, default=360.0, help="seconds a memory fill may take (then extrapolate)"
    )
    parser.add_argument("--recipients", type=int, default=5000, help="recipients in the efficiency stream")
    parser.add_argument("--profile-seconds", type=float, default=10.0, help="seconds py-spy samples (default: 10)")
    parser.add_argument("--out", type=Path, help="directory for results.json and report.md")
    parser.add_argument("--plots", type=Path, default=REPO / "docs" / "img", help="directory for the PNG plots")
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    parser.add_argument("--generate-sql", type=Path, metavar="PATH", help="only write the data set as a MySQL script")
    parser.add_argument(
        "--rereport", type=Path, metavar="RESULTS", help="only write report.md and the plots again from a results.json"
    )
    return parser


def postconf_default(name: str) -> str:
    postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    result = subprocess.run([postconf, "-d", "-h", name], capture_output=True, text=True, timeout=30, check=True)
    return result.stdout.strip()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    selected = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(selected) - set(PARTS)
    if unknown:
        print(f"unknown parts: {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})", file=sys.stderr)
        return os.EX_USAGE
    size = datagen.SIZES[args.size]
    if args.generate_sql is not None:
        datagen.write_sql(datagen.generate(size), args.generate_sql)
        log(f"wrote {args.generate_sql}")
        return os.EX_OK

    # SIGTERM (timeout(1), a CI limit) unwinds like ^C, so every process started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.rereport is not None:
        saved: dict[str, Any] = json.loads(args.rereport.read_text())
        for part in saved.get("profile", {}).values():
            part["total"] = parts.drop_outer([(f, share) for f, share in part["total"]])
        saved["targets"] = report.targets(saved)
        write_outputs(saved, args.rereport.parent, None if args.no_plots else args.plots)
        return os.EX_OK

    work = Path(tempfile.mkdtemp(prefix="mmlb", dir="/tmp"))
    work.chmod(0o755)  # proxymap (user postfix) reads the .cf files below it
    out_dir = args.out or work
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python bench/lookups.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command.strip(),
        "size": args.size,
        "dataset": {
            "domains": size.domains,
            "users": size.users,
            "aliases": size.aliases,
            "transports": size.transports,
        },
        "machine": report.machine(),
    }
    log(f"work directory {work}; results into {out_dir}")
    binaries = build(work)
    with contextlib.ExitStack() as stack:
        needs_sql = bool(set(selected) & {"sequential", "concurrent", "efficiency", "profile"})
        data = datagen.generate(size)
        keys = datagen.keys(data, min(args.keys, size.users))
        mm: Mailmapd | None = None
        url = ""
        account = None
        if needs_sql:
            mariadb = MariaDB.private()
            stack.callback(mariadb.close)
            mariadb.open()
            account = mariadb.create_database("mail", "mail_admin", "mail_admin_password")
            started = time.monotonic()
            datagen.load_mysql(
                data,
                host=account.host,
                port=account.port,
                user=account.user,
                password=account.password,
                database=account.database,
            )
            log(f"MariaDB on port {account.port}: {args.size} data set loaded in {time.monotonic() - started:.0f} s")
            url = f"mysql://{account.user}:{account.password}@{account.host}:{account.port}/{account.database}"
            mm = Mailmapd(MailmapdConfig(url), work)
            stack.callback(mm.stop)
            log(f"mailmapd pid {mm.pid}: ports {mm.ports}, metrics {mm.metrics_port}")

        if "sequential" in selected:
            assert mm is not None
            assert account is not None
            cf_dir = write_seed_cf(work / "cf", account)
            cf_dir.chmod(0o755)
            postfix_gid = grp.getgrnam("postfix").gr_gid
            for name in CF_FILES.values():
                os.chown(cf_dir / name, 0, postfix_gid)
            cf = cf_dir / CF_FILES["mailboxes"]
            # Postfix's own default list (smtpd asks proxymap for passwd.byname), plus ours.
            postfix = PostfixInstance({"proxy_read_maps": f"{postconf_default('proxy_read_maps')} proxy:mysql:{cf}"})
            stack.callback(postfix.close)
            postfix.start()
            log(f"Postfix master for proxymap in {postfix.base_dir}")
            ceiling = Ceiling(binaries["ceiling"])
            stack.callback(ceiling.stop)
            log("sequential lookups through postmap -q -")
            results["sequential"] = parts.sequential(
                work=work,
                data=data,
                keys=keys,
                postfix_config=postfix.config_dir,
                cf=cf,
                mm=mm,
                loadgen=binaries["loadgen"],
                ceiling=ceiling,
                rounds=args.rounds,
                log=log,
            )
            postfix.close()
            ceiling.stop()
        if "concurrent" in selected:
            assert mm is not None
            log("concurrent load")
            results["concurrent"] = parts.concurrent(
                work=work,
                keys=keys,
                mm=mm,
                loadgen=binaries["loadgen"],
                ceiling_binary=binaries["ceiling"],
                connections=[int(n) for n in args.connections.split(",")],
                rounds=args.conc_rounds,
                duration=args.duration,
                warmup=args.warmup,
                paced_connections=args.paced_connections,
                paced_rates=[float(r) for r in args.paced_rates.split(",") if r],
                log=log,
            )
        if "profile" in selected:
            assert mm is not None
            log("profile under warm concurrent load")
            results["profile"] = parts.profile(
                work=work,
                keys=keys,
                mm=mm,
                loadgen=binaries["loadgen"],
                connections=50,
                seconds=args.profile_seconds,
                log=log,
            )
        if "efficiency" in selected:
            log("backend efficiency")
            results["efficiency"] = parts.efficiency(
                work=work,
                population=[k for _, k in keys],
                recipients=args.recipients,
                database_url=url,
                loadgen=binaries["loadgen"],
                connections=10,
                log=log,
            )
        if "memory" in selected:
            log("memory")
            results["memory"] = parts.memory(
                work=work,
                loadgen=binaries["loadgen"],
                steps=[int(n) for n in args.memory_keys.split(",")],
                time_limit=args.memory_time_limit,
                log=log,
            )

    _clean(work, keep=out_dir)
    results["machine"]["load_at_end"] = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    results["targets"] = report.targets(results)
    write_outputs(results, out_dir, None if args.no_plots else args.plots)
    return os.EX_OK


def write_outputs(results: dict[str, Any], out_dir: Path, plots: Path | None) -> None:
    """results.json and report.md into ``out_dir``, the PNGs into ``plots``; the report on stdout."""
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    image_dir = None
    if plots is not None and ("sequential" in results or "concurrent" in results):
        import plot  # noqa: PLC0415 - bench/plot.py, beside this script: matplotlib only when plotting

        plots.mkdir(parents=True, exist_ok=True)
        for path in plot.plot_all(results, plots):
            log(f"wrote {path}")
        image_dir = os.path.relpath(plots, REPO / "docs")
    text = report.markdown(results, image_dir)
    (out_dir / "report.md").write_text(text)
    print(text)
    for t in results["targets"]:
        log(f"target {t['what']}: {t['value']:.2f}{t['unit']} ({'met' if t['met'] else 'MISSED'}, goal {t['goal']})")
    log(f"results: {out_dir / 'results.json'}, {out_dir / 'report.md'}")


def _clean(work: Path, keep: Path) -> None:
    """Remove the run's work files (databases, key files, binaries), not its results."""
    for entry in work.iterdir():
        if entry.resolve() == keep.resolve():
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if work.resolve() != keep.resolve():
        work.rmdir()


if __name__ == "__main__":
    raise SystemExit(main())

"""The warm path: cached lookups under N closed-loop connections, against the C ceiling (issue 7).

    python bench/warm_path.py                          # 50 connections, 5 rounds of 3 s, each loop
    python bench/warm_path.py --loops uvloop --connections 1,50
    python bench/warm_path.py --tree before=/tmp/mm-old --tree after=.   # two source trees, one run
    python bench/warm_path.py --loops uvloop --floor   # also the Python floor (a constant per read)
    python bench/warm_path.py serve --loop uvloop      # only the server: prints its port, for py-spy

The server side is mailmapd's own parts, in a process of their own: a Config, the Resolver that
``make_resolver`` builds (real maps, real cache, real metrics on a registry), the Server and its
socketmap and tcp_table handlers, on 127.0.0.1 port 0. Only the database is replaced, by a dict
of 5,000 mailboxes; every key is asked once before the load, so the load is all cache hits.

With ``--floor``, a third kind of server runs beside them: the Python floor, an asyncio
Protocol on the same event loop that writes a constant for every read, the least any Python
server can cost per request.

The load comes from bench/loadgen.c: N persistent connections, one request outstanding on
each, the next sent as soon as the reply arrived. The reference is bench/ceiling.c, a C
socketmap server that answers a constant. Both are built with ``cc -O2``. The sides (the
ceiling, and mailmapd on each event loop) run in rotating order, round after round, so that
the machine's drift hits them alike. Reported per side: replies/s (median of rounds), the ratio
to the ceiling (median of per-round ratios), p50/p99 latency, and the server's CPU time (user +
system, from /proc) per request it was sent. This machine is shared and noisy: compare ratios
and CPU per request within one run, not absolute figures across runs.

``--tree LABEL=PATH`` imports mailmapd from another source tree, to measure a change side by
side (``git archive COMMIT mailmapd | tar -x -C /tmp/mm-old``). The tree must have the same
Server and make_resolver; one from before uvloop support runs with ``--loops asyncio`` only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KEYS = 5000
DOMAINS = 100


# --------------------------------------------------------------------------- the server side


def mailbox_keys() -> list[str]:
    return [f"user{i}@example{i % DOMAINS}.test" for i in range(KEYS)]


class DictBackend:
    """The database, as a dict: answers the mailboxes query (``WHERE email=?``) and nothing else."""

    def __init__(self, keys: Sequence[str]) -> None:
        from mailmapd.sqltemplate import SQLITE  # noqa: PLC0415 - imported from the chosen tree

        self.dialect = SQLITE
        self._rows = {key: key.partition("@")[2] + "/" + key.partition("@")[0] + "/" for key in keys}

    async def fetch(self, sql: str, params: Sequence[str], _lane: str | None = None) -> list[tuple[Any, ...]]:
        # A search order comes as one statement whose parts are tagged with their position
        # (mailmapd.maps.combine); a tree from before that sends one key per query.
        positions = [int(n) for n in re.findall(r"SELECT (\d+) AS mailmapd_position", sql)]
        if not positions:
            value = self._rows.get(params[0]) if params else None
            return [(value,)] if value is not None else []
        return [(n, self._rows[key]) for n, key in zip(positions, params, strict=True) if key in self._rows]

    async def close(self) -> None:
        pass


async def serve(ready: Callable[[dict[str, int]], None]) -> None:
    """Run mailmapd's server over DictBackend, warm, until SIGTERM."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from mailmapd.config import ListenConfig, parse_config  # noqa: PLC0415 - imported from the chosen tree
    from mailmapd.daemon import make_handler, make_resolver  # noqa: PLC0415
    from mailmapd.metrics import Metrics  # noqa: PLC0415
    from mailmapd.server import Server  # noqa: PLC0415

    cfg = parse_config(
        {
            "database": {"url": "sqlite:///nonexistent/bench.db"},  # never opened
            "cache": {"positive_ttl": 86400.0, "negative_ttl": 86400.0, "max_entries": 4 * KEYS},
            "metrics": {"address": ""},
            "server": {"control_socket": ""},
            "listen": [{"protocol": "socketmap", "address": "inet:127.0.0.1:0"}],
        },
        "bench",
    )
    metrics = Metrics.create(CollectorRegistry())
    keys = mailbox_keys()
    resolver = make_resolver(cfg, DictBackend(keys), metrics)
    for key in keys:  # warm: every key of the load is cached
        await resolver.resolve("mailboxes", key)
    server = Server(cfg.server, resolver, metrics)
    # Two listeners on port 0 would be "the same address twice" in a config file.
    for lc in (*cfg.listen, ListenConfig("tcp_table", "inet:127.0.0.1:0", map="mailboxes")):
        await server.listen(lc, make_handler(lc))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    ready({name: sockname[1] for name, sockname in server.sockets})
    await stop.wait()
    await server.stop()


class _Floor(asyncio.Protocol):
    """The least a Python server on the same event loop can do: a constant reply per read, no
    parsing (one reply per request as long as each connection has one request outstanding, as
    loadgen's do)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: Any = transport

    def data_received(self, _data: bytes) -> None:
        self._transport.write(b"4:OK x,")


async def serve_floor(ready: Callable[[dict[str, int]], None]) -> None:
    """The Python floor: ``_Floor`` on 127.0.0.1 port 0, until SIGTERM."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Floor, "127.0.0.1", 0)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    ready({"socketmap": server.sockets[0].getsockname()[1]})
    await stop.wait()
    server.close()


def cmd_serve(args: argparse.Namespace) -> int:
    """The server process: prints ``{"socketmap": PORT, "tcp_table": PORT, "loop": ...}``, one line."""
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if args.loop == "uvloop":
        import uvloop  # noqa: PLC0415 - optional

        factory = uvloop.new_event_loop

    def ready(ports: dict[str, int]) -> None:
        loop = type(asyncio.get_running_loop())
        print(json.dumps({**ports, "loop": f"{loop.__module__}.{loop.__qualname__}"}), flush=True)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve_floor(ready) if args.floor else serve(ready))
    return 0


# --------------------------------------------------------------------------- the load side


@dataclass
class Side:
    label: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    ports: dict[str, int] = field(default_factory=dict)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, env={**os.environ, **self.env}
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the ceiling prints its port, `serve` a JSON object
        try:
            info: dict[str, Any] = {"socketmap": int(line)} if line.strip().isdigit() else json.loads(line)
        except json.JSONDecodeError:
            self.stop()
            raise SystemExit(f"{self.label}: did not start: {line!r}") from None
        if "loop" in info:
            print(f"{self.label}: {info.pop('loop')}", file=sys.stderr)
        self.ports = info

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rfind(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build(work: Path) -> dict[str, Path]:
    """bench/loadgen.c and bench/ceiling.c, compiled with ``cc -O2`` into ``work``."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("no C compiler: apt-get install gcc")
    out = {}
    for name in ("loadgen", "ceiling"):
        out[name] = work / name
        subprocess.run([cc, "-O2", "-o", str(out[name]), str(REPO / "bench" / f"{name}.c")], check=True)
    return out


def load(loadgen: Path, side: Side, keyfile: Path, args: argparse.Namespace, connections: int) -> dict[str, float]:
    protocol = "tcp_table" if args.protocol == "tcp_table" and "tcp_table" in side.ports else "socketmap"
    argv = [str(loadgen), "-p", str(side.ports[protocol]), "-k", str(keyfile), "-m", "mailboxes"]
    argv += ["-t", "tcp" if protocol == "tcp_table" else "socketmap", "-c", str(connections)]
    argv += ["-d", str(args.seconds), "-w", str(args.warmup)]
    cpu = side.cpu_seconds()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + 60, check=False)
    cpu = side.cpu_seconds() - cpu
    if result.returncode != 0:
        raise SystemExit(f"loadgen against {side.label} exited {result.returncode}: {result.stdout}{result.stderr}")
    raw = json.loads(result.stdout)
    wrong = raw["replies"]["ok"] != raw["requests"]
    if "tcp_table" in side.ports and wrong:  # mailmapd's sides; the ceiling and the floor answer a constant
        raise SystemExit(f"{side.label}: not every reply was OK (not warm?): {raw['replies']}")
    return {
        "rps": raw["rps"],
        "p50": raw["latency_us"]["p50"],
        "p99": raw["latency_us"]["p99"],
        "cpu_us": cpu / raw["issued"] * 1e6,
        "cpu_share": cpu / raw["wall_seconds"],
    }


def cmd_run(args: argparse.Namespace) -> int:
    trees = dict(t.split("=", 1) for t in args.tree) or {"mailmapd": str(REPO)}
    loops = args.loops.split(",")
    connections = [int(n) for n in args.connections.split(",")]
    with tempfile.TemporaryDirectory(prefix="warm-path-") as tmp:
        work = Path(tmp)
        binaries = build(work)
        keyfile = work / "keys"
        keyfile.write_text("\n".join(mailbox_keys()) + "\n")
        sides = [Side("ceiling", [str(binaries["ceiling"]), "-t", "3600"])]
        for label, path in trees.items():
            for loop in loops:
                argv = [sys.executable, str(Path(__file__).resolve()), "serve", "--loop", loop]
                name = f"{label} {loop}" if len(loops) > 1 or len(trees) > 1 else label
                sides.append(Side(name, argv, {"PYTHONPATH": str(Path(path).resolve())}))
        if args.floor:
            for loop in loops:
                argv = [sys.executable, str(Path(__file__).resolve()), "serve", "--loop", loop, "--floor"]
                sides.append(Side(f"python floor {loop}" if len(loops) > 1 else "python floor", argv))
        try:
            for side in sides:
                side.start()
            results: dict[int, dict[str, list[dict[str, float]]]] = {}
            for n in connections:
                per_side: dict[str, list[dict[str, float]]] = {s.label: [] for s in sides}
                for r in range(args.rounds):
                    for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
                        per_side[side.label].append(load(binaries["loadgen"], side, keyfile, args, n))
                results[n] = per_side
        finally:
            for side in sides:
                side.stop()
    report(results, args)
    return 0


def report(results: dict[int, dict[str, list[dict[str, float]]]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.protocol}, closed loop, {args.rounds} rounds of {args.seconds:g} s (after {args.warmup:g} s warm-up);"
        " medians over rounds; x ceiling = median of per-round ratios\n"
    )
    print("| N | side | replies/s | x ceiling | p50 / p99 (us) | server CPU per request (us) | server CPU (cores) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, per_side in results.items():
        ceiling = [run["rps"] for run in per_side["ceiling"]]
        for label, runs in per_side.items():
            ratio = statistics.median(run["rps"] / c for run, c in zip(runs, ceiling, strict=True))
            med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            print(
                f"| {n} | {label} | {med['rps']:,.0f} | {ratio:.2f} | {med['p50']:.0f} / {med['p99']:.0f}"
                f" | {med['cpu_us']:.1f} | {med['cpu_share']:.2f} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({str(n): r for n, r in results.items()}, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    sub = parser.add_subparsers(dest="command")
    srv = sub.add_parser("serve", help="only run the warm server (prints its ports as JSON)")
    srv.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    srv.add_argument("--floor", action="store_true", help="the Python floor instead of mailmapd")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH", help="a mailmapd source tree")
    default_loops = "asyncio"
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401, PLC0415 - only whether it is there

        default_loops = "asyncio,uvloop"
    parser.add_argument("--loops", default=default_loops, help="event loops, comma-separated (default: %(default)s)")
    parser.add_argument("--connections", default="50", help="N, comma-separated (default: %(default)s)")
    parser.add_argument("--protocol", choices=("socketmap", "tcp_table"), default="socketmap")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--json", metavar="PATH", help="also write every run's figures here")
    parser.add_argument(
        "--floor", action="store_true", help="also run the Python floor: a constant reply per read, on each loop"
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    return cmd_run(args)


if __name__ == "__main__":
    raise SystemExit(main())

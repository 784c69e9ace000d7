"""The processes a benchmark run starts, each bounded in time and stopped by the run.

- the C programs (bench/loadgen.c, bench/ceiling.c), built with ``cc -O2`` into the run's
  work directory;
- mailmapd as a real process (``python -m mailmapd serve``), on port 0, its ports read back
  from its log; its cache flushed through the control socket; its counters read from its
  metrics endpoint; its RSS read from /proc;
- the C ceiling server;
- a private MariaDB and a private Postfix (tests/support), for mysql: and proxy:mysql:.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from array import array
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

_LISTENING = re.compile(r"listening for (\S+) on inet:127\.0\.0\.1:(\d+)")
_METRICS = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


class BenchError(RuntimeError):
    """A peer did not start or misbehaved; the message says which and what it printed."""


def build(work: Path) -> dict[str, Path]:
    """Compile loadgen and ceiling with ``cc -O2``; return their paths."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BenchError("no C compiler: apt-get install gcc")
    out: dict[str, Path] = {}
    for name in ("loadgen", "ceiling"):
        binary = work / name
        result = subprocess.run(
            [cc, "-O2", "-Wall", "-o", str(binary), str(BENCH / f"{name}.c")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"cc {name}.c failed:\n{result.stderr}")
        out[name] = binary
    return out


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            out[name] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Drain(threading.Thread):
    """Reads a child's stderr so that it never blocks on a full pipe; keeps the last lines."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self.lines: deque[str] = deque(maxlen=200)
        self.ready = threading.Event()
        self.failed = threading.Event()

    def run(self) -> None:
        for line in self._stream:
            self.lines.append(line)
            if "mailmapd ready" in line:
                self.ready.set()
        self.failed.set()


@dataclass
class MailmapdConfig:
    database_url: str
    positive_ttl: float = 3600.0
    negative_ttl: float = 3600.0
    max_entries: int = 1_000_000
    tcp_map: str | None = "mailboxes"
    pool_size: int = 10
    combine_queries: bool = True

    def toml(self, control: Path) -> str:
        lines = [
            'recipient_delimiter = "+"',
            'log_level = "info"',
            "[database]",
            f"url = {json.dumps(self.database_url)}",
            f"pool_size = {self.pool_size}",
            "[lookup]",
            "timeout = 10.0",
            f"combine_queries = {'true' if self.combine_queries else 'false'}",
            "[cache]",
            f"positive_ttl = {self.positive_ttl!r}",
            f"negative_ttl = {self.negative_ttl!r}",
            f"max_entries = {self.max_entries}",
            "poll_interval = 0.0",
            "[metrics]",
            'address = "inet:127.0.0.1:0"',
            "[server]",
            f"control_socket = {json.dumps(str(control))}",
            "[[listen]]",
            'protocol = "socketmap"',
            'address = "inet:127.0.0.1:0"',
        ]
        if self.tcp_map is not None:
            # Two listeners may not share an address, even port 0: a port free a moment ago.
            address = f"inet:127.0.0.1:{free_port()}"
            lines += ["[[listen]]", 'protocol = "tcp_table"', f'address = "{address}"', f'map = "{self.tcp_map}"']
        return "\n".join(lines) + "\n"


class Mailmapd:
    """``python -m mailmapd serve`` on 127.0.0.1 port 0 (socketmap, and tcp_table for one map)."""

    def __init__(self, cfg: MailmapdConfig, work: Path, name: str = "mailmapd") -> None:
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.control = self.dir / "control.sock"
        config = self.dir / "mailmapd.toml"
        config.write_text(cfg.toml(self.control))
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailmapd", "-c", str(config), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        self._drain = _Drain(self.proc.stderr)
        self._drain.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._drain.ready.wait(0.05):
            if self._drain.failed.is_set() or self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError("mailmapd did not start:\n" + "".join(self._drain.lines))
        self.ports: dict[str, int] = {}
        self.metrics_port = 0
        for line in list(self._drain.lines):
            if (m := _LISTENING.search(line)) is not None:
                self.ports[m.group(1)] = int(m.group(2))
            if (m := _METRICS.search(line)) is not None:
                self.metrics_port = int(m.group(1))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self) -> str:
        return "".join(self._drain.lines)

    def flush(self) -> int:
        """Drop every cached answer (the control socket's ``flush``); return how many."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.control))
            sock.sendall(b"flush\n")
            reply = sock.makefile("rb").readline().decode()
        if not reply.startswith("OK "):
            raise BenchError(f"mailmapd flush: {reply!r}")
        return int(reply[3:])

    def metrics(self) -> dict[str, float]:
        """Every sample of the metrics endpoint, summed over labels: name -> value."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if (m := _SAMPLE.match(line)) is not None:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain.join(timeout=5)


class Ceiling:
    """bench/ceiling.c on 127.0.0.1 port 0: answers every socketmap request with ``OK x``."""

    def __init__(self, binary: Path, max_seconds: float = 3600.0) -> None:
        self.proc = subprocess.Popen(
            [str(binary), "-t", str(max_seconds)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise BenchError(f"ceiling did not report its port: {line!r}")
        self.port = int(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass(frozen=True)
class LoadResult:
    """One loadgen run, as bench/loadgen.c reports it (latencies in microseconds)."""

    raw: dict[str, Any]
    quantiles: list[tuple[float, float]]  # (percentile, latency_us), for the plots

    @property
    def rps(self) -> float:
        return float(self.raw["rps"])

    def latency(self, name: str) -> float:
        return float(self.raw["latency_us"][name])


# Percentiles stored for the latency plots: dense in the tail.
PLOT_PERCENTILES: tuple[float, ...] = (
    *(float(p) for p in range(1, 90)),
    *(90 + i / 10 for i in range(90)),
    *(99 + i / 100 for i in range(90)),
    *(99.9 + i / 1000 for i in range(99)),
)


def run_loadgen(
    binary: Path,
    port: int,
    keyfile: Path,
    *,
    protocol: str = "socketmap",
    table: str = "mailboxes",
    connections: int = 1,
    duration: float = 3.0,
    warmup: float = 0.5,
    rate: float = 0.0,
    once: bool = False,
    samples: Path | None = None,
) -> LoadResult:
    """One bench/loadgen.c run; rate 0 is a closed loop, else requests per second in total."""
    argv = [str(binary), "-p", str(port), "-k", str(keyfile), "-t", protocol, "-m", table]
    argv += ["-c", str(connections), "-d", str(duration), "-w", str(warmup), "-r", str(rate)]
    if once:
        argv.append("-1")
    if samples is not None:
        argv += ["-s", str(samples)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=warmup + duration + 60, check=False)
    if result.returncode not in (0, 3) or not result.stdout.strip():
        raise BenchError(f"loadgen exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    raw: dict[str, Any] = json.loads(result.stdout)
    quantiles: list[tuple[float, float]] = []
    if samples is not None:
        quantiles = _quantiles(samples)
        samples.unlink(missing_ok=True)
    return LoadResult(raw, quantiles)


def _quantiles(path: Path) -> list[tuple[float, float]]:
    values = array("Q")
    values.frombytes(path.read_bytes())
    ordered = sorted(values)
    if not ordered:
        return []
    last = len(ordered) - 1
    return [(p, ordered[round(p / 100 * last)] / 1000.0) for p in PLOT_PERCENTILES]

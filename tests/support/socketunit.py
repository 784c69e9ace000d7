"""systemd's part in socket activation, played by the test: mailmapd.socket plus mailmapd.service.

There is no systemd as PID 1 in the test container (nor in CI), so ``SocketUnit`` does by hand
what systemd does for ``systemd/mailmapd.socket`` and ``systemd/mailmapd.service``, as
systemd.socket(5), systemd.service(5) and sd_listen_fds(3) describe it:

- It binds and listens on every socket itself (``ListenStream=``: ``127.0.0.1`` port 0, or a unix
  socket in a private directory under /tmp), and keeps them open for its whole life. The service
  can stop and start any number of times, and the sockets stay in the kernel. A connection made
  while no service runs waits in the accept queue.
- ``start()`` runs the service with the sockets as descriptors 3, 4, ... in ``ListenStream=``
  order, and with ``LISTEN_FDS`` (how many), ``LISTEN_FDNAMES`` (one ``FileDescriptorName=`` per
  socket, colon-separated: the shipped unit names every socket ``mailmapd``) and ``LISTEN_PID``
  (the service's own pid: systemd sets it between fork and exec, here a tiny launcher sets it and
  execs, which keeps the pid). No other descriptor is inherited. It also sets ``NOTIFY_SOCKET``
  (``Type=notify``) and waits for ``READY=1`` sent by that pid (``NotifyAccess=main``; the sender
  is checked with SCM_CREDENTIALS).
- ``stop()`` is systemd's stop: SIGTERM, wait up to ``TimeoutStopSec=`` (30 s in
  mailmapd.service), then SIGKILL.
- ``restart()`` is ``systemctl restart mailmapd.service`` while mailmapd.socket keeps listening:
  stop, then start again on the same sockets.

mailmapd matches inherited sockets to ``[[listen]]`` sections by address, not by name
(mailmapd/sdactivation.py), so the config must list ``addresses`` exactly as given here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Sequence

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent.parent
START_TIMEOUT = 30.0  # seconds to READY=1 (systemd's TimeoutStartSec= default is 90 s)
STOP_TIMEOUT = 30.0  # TimeoutStopSec=30s in systemd/mailmapd.service
LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid

# Runs as the service's process, between "fork" and the service's own exec, as systemd's exec
# code does. argv[1]: the descriptors to pass, comma-separated, in order; argv[2:]: the command.
# It moves them to 3, 4, ... (through a copy above them, so that no source is overwritten
# before it is moved), sets LISTEN_PID to its own pid and execs the command, which keeps that pid.
_LAUNCHER = r"""
import fcntl, os, sys
fds = [int(fd) for fd in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + len(fds)) for fd in fds]
for fd in fds:
    os.close(fd)
for target, fd in enumerate(high, 3):
    os.dup2(fd, target, inheritable=True)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


class ServiceError(RuntimeError):
    """The service did not start or stop as systemd expects; the message has its log."""


@dataclass
class Service:
    """One run of the service: its process, its stderr lines and what it sent to NOTIFY_SOCKET."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    notified: list[str] = field(default_factory=list)
    killed: bool = False  # SIGKILL was needed after STOP_TIMEOUT
    started: float = field(default_factory=time.monotonic)  # time.monotonic() at start, READY=1, exit
    ready: float = 0.0
    exited: float = 0.0

    def __post_init__(self) -> None:
        # A thread reads stderr so that the pipe never fills.
        assert self.proc.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def lines_with(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    def problems(self) -> list[str]:
        """ERROR and CRITICAL lines and tracebacks in its log."""
        return [line for line in self.lines if line.startswith(("ERROR", "CRITICAL")) or "Traceback" in line]

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def collect(self) -> None:
        """Once the process has exited: the last log lines, and the pipe closed."""
        self._reader.join(10.0)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class SocketUnit:
    """Listening sockets held for a service that is started, stopped and restarted on them.

    ``listen`` gives one ``ListenStream=`` per entry, in order: ``"inet"`` binds 127.0.0.1 port 0,
    ``"unix"`` a socket file in the unit's own directory. ``addresses`` are their addresses in
    mailmapd's config syntax, in the same order. ``command`` is the service's ExecStart=.
    Use it as a context manager: the exit stops the service and closes the sockets.
    """

    def __init__(self, command: Sequence[str], listen: Sequence[str], *, name: str = "mailmapd") -> None:
        self.command = list(command)
        self.name = name
        self.directory = Path(tempfile.mkdtemp(prefix="mm-unit-", dir="/tmp"))  # sun_path holds 108 bytes
        self.sockets: list[socket.socket] = []
        self.addresses: list[str] = []
        self.runs: list[Service] = []
        self._notify: socket.socket | None = None
        try:
            for i, kind in enumerate(listen):
                self._listen(kind, i)
            self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._notify.bind(str(self.directory / "notify"))
            self._notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        except BaseException:
            self.close()
            raise

    def _listen(self, kind: str, index: int) -> None:
        if kind == "inet":
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as systemd does for ListenStream=
            sock.bind((LOOPBACK, 0))
            address = f"inet:{LOOPBACK}:{sock.getsockname()[1]}"
        elif kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sockets.append(sock)
            path = self.directory / f"{self.name}-{index}.sock"
            sock.bind(str(path))
            path.chmod(0o666)  # SocketMode= default
            address = f"unix:{path}"
        else:
            raise ValueError(f"ListenStream kind {kind!r}: expected 'inet' or 'unix'")
        sock.listen(socket.SOMAXCONN)  # Backlog= default
        self.addresses.append(address)

    @property
    def service(self) -> Service | None:
        """The current run, while it runs."""
        if self.runs and self.runs[-1].proc.poll() is None:
            return self.runs[-1]
        return None

    def unix_paths(self) -> list[Path]:
        return [Path(a.removeprefix("unix:")) for a in self.addresses if a.startswith("unix:")]

    def sockets_in_place(self) -> bool:
        """Every unix socket file still exists and is a socket (the socket unit's, never removed)."""
        return all(p.exists() and stat.S_ISSOCK(p.lstat().st_mode) for p in self.unix_paths())

    # ------------------------------------------------------------------ the service

    def start(self) -> Service:
        """Run the command with the sockets passed; return once it has sent READY=1."""
        if self.service is not None:
            raise ServiceError(f"{self.name}.service is running already (pid {self.service.pid})")
        fds = [s.fileno() for s in self.sockets]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_SOCKET"))}
        if fds:
            env["LISTEN_FDS"] = str(len(fds))
            env["LISTEN_FDNAMES"] = ":".join([self.name] * len(fds))  # FileDescriptorName=mailmapd
        if self._notify is not None:
            env["NOTIFY_SOCKET"] = str(self.directory / "notify")
        argv = [sys.executable, "-I", "-S", "-c", _LAUNCHER, ",".join(map(str, fds)), *self.command]
        if not fds:  # nothing to pass: exec the command directly
            argv = list(self.command)
        proc = subprocess.Popen(
            argv,
            pass_fds=fds,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        run = Service(proc)
        self.runs.append(run)
        self._wait_ready(run)
        return run

    def _wait_ready(self, run: Service) -> None:
        deadline = run.started + START_TIMEOUT
        while "READY=1" not in run.notified:
            if run.proc.poll() is not None:
                run.collect()
                raise ServiceError(
                    f"{self.name}.service exited with status {run.proc.returncode} before READY=1:\n{run.log}"
                )
            if time.monotonic() >= deadline:
                raise ServiceError(f"{self.name}.service sent no READY=1 within {START_TIMEOUT:g}s:\n{run.log}")
            self._receive(0.05)
        run.ready = time.monotonic()

    def _receive(self, timeout: float) -> bool:
        """Read one NOTIFY_SOCKET message, waiting up to ``timeout`` s; file it under the run that
        sent it. False when none came."""
        if self._notify is None:
            time.sleep(timeout)
            return False
        self._notify.settimeout(timeout)
        try:
            data, ancdata, _flags, _addr = self._notify.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        except (TimeoutError, BlockingIOError):
            return False
        pid = None
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(cdata[: _UCRED.size])[0]
        for run in self.runs:
            if run.pid == pid:  # NotifyAccess=main: only the service's own process counts
                run.notified.extend(data.decode(errors="replace").splitlines())
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; the exit status (negative: the signal)."""
        run = self.service
        if run is None:
            return 0
        run.proc.send_signal(signal.SIGTERM)
        try:
            code = run.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            run.killed = True
            run.proc.kill()
            code = run.proc.wait()
        run.exited = time.monotonic()
        run.collect()
        while self._receive(0.0):  # what it sent while stopping (STOPPING=1)
            pass
        return code

    def restart(self, timeout: float = STOP_TIMEOUT) -> Service:
        """``systemctl restart``: stop the running service, start it again on the same sockets."""
        self.stop(timeout)
        return self.start()

    # ------------------------------------------------------------------ the unit

    def close(self) -> None:
        """Stop the service and close every socket (``systemctl stop mailmapd.socket``)."""
        try:
            self.stop()
        finally:
            for sock in self.sockets:
                sock.close()
            if self._notify is not None:
                self._notify.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

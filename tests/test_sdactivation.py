"""Socket activation with real sockets passed the way systemd passes them.

The pytest process already uses descriptors 3 and up, so each case runs a child the way
systemd starts a service: a launcher moves the test's listening sockets to descriptors 3, 4, ...,
sets LISTEN_PID to its own pid and execs the probe, which keeps that pid, calls
inherited_sockets() and prints what it saw as JSON.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mailmapd.config import ConfigError
from mailmapd.sdactivation import (
    InheritedSocket,
    SocketActivationError,
    inherited_sockets,
    match,
)

REPO = Path(__file__).resolve().parent.parent
ENV_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

# argv: comma-separated descriptors to move to 3, 4, ...; "self" to set LISTEN_PID to our pid
# (as systemd does between fork and exec) or "-" to leave the environment as the test set it;
# then the probe's arguments.
LAUNCHER = r"""
import fcntl, os, sys
sources = [int(fd) for fd in sys.argv[1].split(",") if fd]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 200) for fd in sources]
for fd in sources:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
    os.close(fd)
if sys.argv[2] == "self":
    os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-c", sys.argv[3], *sys.argv[4:]])
"""

PROBE = r"""
import dataclasses, fcntl, json, os, socket, sys
from mailmapd.sdactivation import SocketActivationError, inherited_sockets

def flags(fd):
    try:
        cloexec = bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
    except OSError:
        return {"open": False}
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return {"open": True, "cloexec": cloexec, "socket": False}
    try:
        listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    finally:
        sock.detach()
    return {"open": True, "cloexec": cloexec, "listening": listening}

count = int(sys.argv[1])
try:
    found = inherited_sockets(unset=sys.argv[2] == "unset")
except SocketActivationError as exc:
    out = {"error": str(exc)}
else:
    out = {"sockets": [dataclasses.asdict(s) for s in found]}
out["env"] = {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
out["fds"] = [flags(fd) for fd in range(3, 3 + count)]
print(json.dumps(out))
"""

# Serves one connection on every inherited socket through asyncio, as Server.listen will.
SERVE = r"""
import asyncio, socket
from mailmapd.sdactivation import inherited_sockets

async def main():
    done = asyncio.Event()
    async def reply(reader, writer):
        writer.write(b"hello from " + (await reader.readline()))
        await writer.drain()
        writer.close()
        done.set()
    for inh in inherited_sockets():
        sock = socket.socket(fileno=inh.fd)
        if inh.family == socket.AF_UNIX:
            server = await asyncio.start_unix_server(reply, sock=sock)
        else:
            server = await asyncio.start_server(reply, sock=sock)
        async with server:
            await done.wait()
        done.clear()

asyncio.run(main())
"""


def child_env(**listen: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(listen)
    return env


def launch(
    socks: Sequence[socket.socket | int], env: dict[str, str], *, pid: str = "self", unset: bool = True
) -> dict[str, Any]:
    fds = [s if isinstance(s, int) else s.fileno() for s in socks]
    argv = [sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)), pid, PROBE, str(len(fds))]
    argv.append("unset" if unset else "keep")
    proc = subprocess.run(
        argv, pass_fds=fds, env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.fixture
def v4() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


@pytest.fixture
def v6() -> Iterator[socket.socket]:
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as sock:
        yield sock


@pytest.fixture
def unix(tmp_path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(tmp_path / "mailmapd.sock"))
        sock.listen()
        yield sock


def test_inet_v4_v6_and_unix_with_names(v4: socket.socket, v6: socket.socket, unix: socket.socket) -> None:
    env = child_env(LISTEN_FDS="3", LISTEN_FDNAMES="socketmap:tcp_table:postfix")
    out = launch([v4, v6, unix], env)
    assert out["sockets"] == [
        {
            "fd": 3,
            "name": "socketmap",
            "family": socket.AF_INET,
            "address": f"inet:127.0.0.1:{v4.getsockname()[1]}",
        },
        {
            "fd": 4,
            "name": "tcp_table",
            "family": socket.AF_INET6,
            "address": f"inet:[::1]:{v6.getsockname()[1]}",
        },
        {
            "fd": 5,
            "name": "postfix",
            "family": socket.AF_UNIX,
            "address": f"unix:{unix.getsockname()}",
        },
    ]
    # Still open and listening (nothing closed them), and no longer inherited by children.
    assert out["fds"] == [{"open": True, "cloexec": True, "listening": True}] * 3
    assert out["env"] == dict.fromkeys(ENV_VARS)


def test_names_default_to_unknown(v4: socket.socket, v6: socket.socket) -> None:
    out = launch([v4, v6], child_env(LISTEN_FDS="2"))
    assert [s["name"] for s in out["sockets"]] == ["unknown", "unknown"]


def test_wrong_listen_pid_means_none(v4: socket.socket) -> None:
    # The variables were meant for the process that exec'd us (pid 1 is never us).
    out = launch([v4], child_env(LISTEN_PID="1", LISTEN_FDS="1", LISTEN_FDNAMES="socketmap"), pid="-")
    assert out["sockets"] == []
    assert out["fds"] == [{"open": True, "cloexec": False, "listening": True}]  # not ours: untouched
    assert out["env"] == dict.fromkeys(ENV_VARS)  # as sd_listen_fds(3) with unset_environment


def test_without_listen_fds_means_none(v4: socket.socket) -> None:
    out = launch([v4], child_env())
    assert out["sockets"] == []
    assert out["fds"] == [{"open": True, "cloexec": False, "listening": True}]


def test_unset_false_keeps_the_environment(v4: socket.socket) -> None:
    out = launch([v4], child_env(LISTEN_FDS="1", LISTEN_FDNAMES="socketmap"), unset=False)
    assert [s["fd"] for s in out["sockets"]] == [3]
    assert out["env"]["LISTEN_FDS"] == "1"
    assert out["env"]["LISTEN_FDNAMES"] == "socketmap"
    assert out["env"]["LISTEN_PID"] is not None


def test_datagram_socket_is_an_error(v4: socket.socket) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
        dgram.bind(("127.0.0.1", 0))
        out = launch([v4, dgram], child_env(LISTEN_FDS="2", LISTEN_FDNAMES="socketmap:udp"))
    assert "descriptor 4 ('udp')" in out["error"]
    assert "SOCK_DGRAM" in out["error"]
    assert out["env"] == dict.fromkeys(ENV_VARS)


def test_socket_that_does_not_listen_is_an_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        out = launch([sock], child_env(LISTEN_FDS="1", LISTEN_FDNAMES="socketmap"))
    assert "descriptor 3 ('socketmap')" in out["error"]
    assert "not listening" in out["error"]


def test_descriptor_that_is_not_a_socket_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with path.open() as f:
        out = launch([f.fileno()], child_env(LISTEN_FDS="1"))
    assert "descriptor 3 ('unknown')" in out["error"]
    assert "not a socket" in out["error"]
    assert out["fds"] == [{"open": True, "cloexec": True, "socket": False}]


def test_asyncio_serves_the_inherited_sockets(v4: socket.socket, v6: socket.socket, unix: socket.socket) -> None:
    fds = [v4.fileno(), v6.fileno(), unix.fileno()]
    env = child_env(LISTEN_FDS="3")
    argv = [sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)), "self", SERVE]
    with subprocess.Popen(argv, pass_fds=fds, env=env, cwd=REPO, stderr=subprocess.PIPE) as proc:
        try:
            for listener in (v4, v6, unix):
                # The child accepts from the shared queue; this process never calls accept().
                with socket.socket(listener.family, socket.SOCK_STREAM) as client:
                    client.settimeout(20)
                    client.connect(listener.getsockname())
                    client.sendall(b"postfix\n")
                    assert client.makefile("rb").read() == b"hello from postfix\n"
            assert proc.wait(timeout=20) == 0
        finally:
            proc.kill()
        assert proc.stderr is not None
        assert proc.stderr.read() == b""


# --------------------------------------------------------------- environment errors, in-process: no descriptor is touched


def test_environment_errors_come_before_any_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    pid = str(os.getpid())
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SocketActivationError, match="LISTEN_FDS='two'"):
        inherited_sockets({"LISTEN_PID": pid, "LISTEN_FDS": "two"}, unset=False)
    with pytest.raises(SocketActivationError, match="LISTEN_FDS='-1'"):
        inherited_sockets({"LISTEN_PID": pid, "LISTEN_FDS": "-1"}, unset=False)
    with pytest.raises(SocketActivationError, match="LISTEN_PID='me'"):
        inherited_sockets({"LISTEN_PID": "me", "LISTEN_FDS": "1"}, unset=False)
    with pytest.raises(SocketActivationError, match="names 1 descriptors, LISTEN_FDS=2"):
        inherited_sockets({"LISTEN_PID": pid, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "socketmap"}, unset=False)
    assert inherited_sockets({"LISTEN_PID": pid, "LISTEN_FDS": "0"}, unset=False) == []


def test_unset_clears_os_environ_even_when_not_for_us(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", "1")
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "socketmap")
    assert inherited_sockets() == []
    assert not any(var in os.environ for var in ENV_VARS)


# --------------------------------------------------------------- match(): which [[listen]] takes which socket

INHERITED = [
    InheritedSocket(3, "mailmapd", socket.AF_INET, "inet:127.0.0.1:7979"),
    InheritedSocket(4, "mailmapd", socket.AF_INET, "inet:127.0.0.1:7980"),
    InheritedSocket(5, "mailmapd", socket.AF_INET6, "inet:[::1]:7979"),
    InheritedSocket(6, "mailmapd", socket.AF_UNIX, "unix:/var/spool/postfix/private/mailmapd"),
    InheritedSocket(7, "mailmapd", socket.AF_UNIX, "unix:@mailmapd"),
]


@pytest.mark.parametrize(
    ("address", "fd"),
    [
        pytest.param("inet:127.0.0.1:7979", 3, id="v4"),
        pytest.param("inet:127.0.0.1:7980", 4, id="v4-other-port"),
        pytest.param("inet:[::1]:7979", 5, id="v6"),
        pytest.param("inet:[0:0:0:0:0:0:0:1]:7979", 5, id="v6-long-form"),
        pytest.param("inet:::1:7979", 5, id="v6-without-brackets"),
        pytest.param("unix:/var/spool/postfix/private/mailmapd", 6, id="unix"),
        pytest.param("unix:/var/spool/postfix/./private//mailmapd", 6, id="unix-normalized"),
        pytest.param("inet:127.0.0.1:7981", None, id="other-port"),
        pytest.param("inet:127.0.0.2:7979", None, id="other-host"),
        pytest.param("inet:0.0.0.0:7979", None, id="wildcard-is-not-loopback"),
        pytest.param("inet:localhost:7979", None, id="host-names-are-not-resolved"),
        pytest.param("inet:[::ffff:127.0.0.1]:7979", None, id="mapped-v4-is-another-socket"),
        pytest.param("unix:/run/mailmapd/mailmapd.sock", None, id="other-path"),
    ],
)
def test_match(address: str, fd: int | None) -> None:
    found = match(INHERITED, address)
    assert (found.fd if found else None) == fd


def test_match_rejects_an_invalid_listen_address() -> None:
    with pytest.raises(ConfigError, match=r"listen\.address"):
        match(INHERITED, "tcp:127.0.0.1:7979")

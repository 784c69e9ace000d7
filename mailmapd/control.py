"""The control socket: `mailmapd flush [MAP [KEY]]` talks to the running daemon through it.

One request line, one reply line: ``flush``, ``flush MAP`` or ``flush MAP KEY`` (the key is
the rest of the line) answers ``OK <entries dropped>``; anything else ``ERR <why>``. The
socket is mode 0600 and the daemon also checks the peer's uid (SO_PEERCRED): only root and
the daemon's own user may use it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from mailmapd.server import remove_stale_socket

log = logging.getLogger(__name__)

MAX_LINE = 4096
FlushFunction = Callable[[str | None, str | None], int]


def parse_command(line: str) -> tuple[str | None, str | None]:
    """``flush [MAP [KEY]]`` -> (map, key); ValueError for anything else."""
    words = line.split(" ", 2)
    if words[0] != "flush":
        raise ValueError(f"unknown command {words[0]!r} (known: flush)")
    table = words[1] if len(words) > 1 and words[1] else None
    key = words[2] if len(words) > 2 else None  # noqa: PLR2004 - flush MAP KEY
    return table, key


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    def __init__(self, path: str, flush: FlushFunction) -> None:
        self.path = path
        self._flush = flush
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        _prepare(self.path)
        old = os.umask(0o177)  # the socket is never accessible to others, not even briefly
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path)
        finally:
            os.umask(old)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = _peer_uid(sock) if sock is not None else None
            if uid not in (0, os.getuid()):
                log.warning("control socket: refused a client with uid %s", uid)
                writer.write(b"ERR permission denied\n")
                return
            try:
                raw = await asyncio.wait_for(reader.readline(), 10)
                line = raw[:MAX_LINE].decode("utf-8").rstrip("\r\n")
                table, key = parse_command(line)
            except (ValueError, TimeoutError) as exc:
                writer.write(f"ERR {exc}\n".encode())
                return
            count = self._flush(table, key)
            log.info("control socket: flushed %d cache entries (%s)", count, line)
            writer.write(f"OK {count}\n".encode())
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            _remove(self.path)


def _prepare(path: str) -> None:
    Path(path).parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    remove_stale_socket(path)  # never another running daemon's


def _remove(path: str) -> None:
    Path(path).unlink(missing_ok=True)


def send_command(path: str, line: str, timeout: float = 10.0) -> str:
    """Blocking client for the CLI: one line out, one line back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(line.encode("utf-8") + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace").strip()

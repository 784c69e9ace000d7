"""Loopback ports and bounded waits for the real peers the tests start."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

LOOPBACK = "127.0.0.1"

T = TypeVar("T")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    For peers we cannot hand a listening socket to (mariadbd, Postfix's master).
    Our own servers bind port 0 and read the port back instead.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    diagnostics: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> T:
    """Poll ``probe`` until it returns a value that is not None, for at most ``timeout`` seconds.

    Only for waiting on a real external process (a server starting, a Maildir
    filling up): there is no event to wait on, so we poll, with a bound and a
    failure message that says what we were waiting for and what the peer logged.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            detail = f"\n{diagnostics()}" if diagnostics is not None else ""
            raise TimeoutError(f"gave up after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def port_accepts(port: int, host: str = LOOPBACK) -> bool:
    """Return True if a TCP connect to ``host:port`` succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False

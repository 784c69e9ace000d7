"""Helpers for the real-system test of ``mailmapd install`` (tests/test_install_system.py).

That test changes the machine it runs on, so these helpers record what it looks like before
(:class:`Snapshot`), find the processes the installed services left (:func:`our_processes`),
and run commands with a bound on their time (:func:`run`).
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

COMMAND_TIMEOUT = 120.0

# Where the services the installer configures run from.
POSTFIX_DAEMONS = Path("/usr/lib/postfix/sbin")
SASLAUTHD = Path("/usr/sbin/saslauthd")
SASL_RUN_DIR = "/var/spool/postfix/var/run/saslauthd"
COURIER_PREFIXES = (
    "/usr/lib/courier/",
    "/usr/sbin/courier",
    "/usr/bin/courier",
    "/usr/sbin/couriertcpd",
    "/usr/bin/imapd",
    "/usr/sbin/imapd",
    "/usr/sbin/pop3d",
)
MAILMAPD_CONFIG = "/etc/mailmapd/mailmapd.toml"
# Courier's imapd starts gamin's server (for IDLE) as the mailbox owner; stopping
# courier-imap does not stop it.
GAM_SERVER = "/usr/libexec/gam_server"


@dataclass(frozen=True)
class Entry:
    """One path as it was: its kind, mode, owner and content (sha256 or link target)."""

    kind: str
    mode: int
    uid: int
    gid: int
    content: str


def _entry(path: Path) -> Entry | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return Entry("link", 0, st.st_uid, st.st_gid, str(path.readlink()))
    if stat.S_ISDIR(st.st_mode):
        return Entry("dir", mode, st.st_uid, st.st_gid, "")
    if stat.S_ISREG(st.st_mode):
        return Entry("file", mode, st.st_uid, st.st_gid, hashlib.sha256(path.read_bytes()).hexdigest())
    return Entry("other", mode, st.st_uid, st.st_gid, "")


class Snapshot:
    """Every path under some trees and some single paths, as they are now."""

    def __init__(self, trees: Iterable[str], paths: Iterable[str]) -> None:
        self.entries: dict[str, Entry | None] = {}
        self._trees = tuple(trees)
        self._paths = tuple(paths)
        for path in self._walk():
            self.entries[path] = _entry(Path(path))

    def _walk(self) -> list[str]:
        found: set[str] = set(self._paths)
        for tree in self._trees:
            found.add(tree)
            for directory, dirnames, filenames in os.walk(tree):
                for name in (*dirnames, *filenames):
                    found.add(str(Path(directory) / name))
        return sorted(found)

    def differences(self) -> list[str]:
        """What differs now from when the snapshot was taken, one line per path."""
        out: list[str] = []
        for path in sorted(set(self._walk()) | set(self.entries)):
            before = self.entries.get(path)
            now = _entry(Path(path))
            if before != now:
                out.append(f"{path}: was {before}, now {now}")
        return out


def run(
    argv: Sequence[str],
    *,
    stdin: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command from / with a bound on its time; output captured, status not checked."""
    return subprocess.run(
        list(argv),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
        env=dict(env) if env is not None else None,
    )


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def all_pids() -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}


def _environ(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in _read(f"/proc/{pid}/environ").split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def _mount_namespace(pid: int | str) -> str | None:
    try:
        return str(Path(f"/proc/{pid}/ns/mnt").readlink())
    except OSError:
        return None


def is_gam_server(pid: int) -> bool:
    try:
        return str(Path(f"/proc/{pid}/exe").readlink()) == GAM_SERVER
    except OSError:
        return False


def describe(pid: int) -> str:
    cmdline = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
    return f"{pid}: {cmdline}"


def _real_uid(pid: int) -> int | None:
    for line in _read(f"/proc/{pid}/status").decode(errors="replace").splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def our_processes(ignore: set[int], owner: int | None = None) -> list[int]:
    """Live processes of the system services install configures, not in ``ignore``;
    with ``owner``, also every other process running as that uid (vmail's, which did not
    exist before the test).

    Other test sessions may run private Postfix instances (their own MAIL_CONFIG),
    private saslauthds (their own -m directory) and private authdaemonds (their own
    mount namespace): those are not ours and are not counted.
    """
    own_namespace = _mount_namespace("self")
    found: list[int] = []
    for pid in sorted(all_pids() - ignore - {os.getpid()}):
        try:
            exe = str(Path(f"/proc/{pid}/exe").readlink())
        except OSError:
            continue  # gone, or a kernel thread
        state = _read(f"/proc/{pid}/stat").rsplit(b")", 1)[-1].split()
        if state and state[0] == b"Z":
            continue  # a zombie (this sandbox's init may not reap)
        cmdline = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")
        if exe.startswith(str(POSTFIX_DAEMONS) + "/"):
            if _environ(pid).get("MAIL_CONFIG", "/etc/postfix") == "/etc/postfix":
                found.append(pid)
        elif exe == str(SASLAUTHD):
            if SASL_RUN_DIR in cmdline:
                found.append(pid)
        elif exe.startswith(COURIER_PREFIXES):
            if _mount_namespace(pid) == own_namespace:
                found.append(pid)
        elif MAILMAPD_CONFIG in cmdline or (owner is not None and _real_uid(pid) == owner):
            found.append(pid)
    return found

"""A private Postfix instance for the tests, which can deliver nowhere but its own Maildirs.

Each instance has its own config, queue and data directories under a short directory in
/tmp (unix socket paths must stay under 108 bytes), listens for SMTP on 127.0.0.1 only,
and runs every service unchrooted. Nothing leaves the machine: default_transport and
relay_transport are ``error:``, the smtp, relay and lmtp services are ``discard``, pipe
services are removed, and DNS is never asked. Mail for a virtual mailbox domain lands in
``vmail_dir`` through virtual(8) as uid/gid 5000.

Postfix 3.7 needs no change to /etc/postfix for this: root may use ``postfix -c DIR``
with any directory (alternate_config_directories only binds unprivileged users), and
``postfix start`` creates the queue and data directories itself. The map plugins
(mysql, sqlite) come from meta_directory, which stays /etc/postfix.
"""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import select
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tests.support.ports import LOOPBACK, free_port, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

VMAIL_UID = 5000
VMAIL_GID = 5000
HOSTNAME = "mailmapd-test.localhost"
NOWHERE = "error:test instance delivers nowhere"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0

# Services that could reach another host, and what they become here.
_DISCARDED_SERVICES = frozenset({("smtp", "unix"), ("relay", "unix"), ("lmtp", "unix")})

_POSTLOG_LINE = "postlog   unix-dgram n  -       n       -       1       postlogd"

_PARAMETER = re.compile(r"[a-z][a-z0-9_]*")


class PostfixError(RuntimeError):
    """A Postfix command failed; the message carries its output and the maillog tail."""


def _postfix_defaults() -> dict[str, str]:
    """The compiled-in directories of the installed Postfix (``postconf -d``)."""
    postconf = shutil.which("postconf") or shutil.which("postconf", path="/usr/sbin:/usr/bin")
    if postconf is None:
        raise PostfixError("postconf is not installed: apt-get install postfix (scripts/test does this)")
    names = ["command_directory", "daemon_directory", "shlib_directory", "meta_directory", "mail_version"]
    empty = tempfile.mkdtemp(prefix="pfd", dir="/tmp")
    try:
        # An empty config dir: /etc/postfix/main.cf may not exist ("No configuration" install).
        Path(empty, "main.cf").touch()
        result = subprocess.run(
            [postconf, "-c", empty, "-d", *names], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=True
        )
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    values: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition(" = ")
        values[name.strip()] = value.strip()
    return values


def _check_parameters(settings: Mapping[str, str], where: str) -> None:
    for name, value in settings.items():
        if _PARAMETER.fullmatch(name) is None:
            raise ValueError(f"{where}: {name!r} is not a Postfix parameter name")
        if "\n" in value:
            raise ValueError(f"{where}: the value of {name} spans lines")


def _entries(master_cf: str) -> list[list[str]]:
    """Split master.cf into entries: a service line plus its indented continuation lines."""
    entries: list[list[str]] = []
    for line in master_cf.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and entries:
            entries[-1].append(line)
        else:
            entries.append([line])
    return entries


def render_master_cf(
    template: str,
    *,
    smtp_port: int,
    virtual_overrides: Mapping[str, str] | None = None,
    extra: str = "",
) -> str:
    """Debian's master.cf made safe for a test: see the module docstring."""
    lines = [f"{LOOPBACK}:{smtp_port} inet n - n - - smtpd"]
    has_postlog = False
    for entry in _entries(template):
        fields = entry[0].split()
        name, kind, command = fields[0], fields[1], fields[7]
        if kind == "inet":
            continue  # smtp, submission, smtps...: only our loopback smtpd listens
        if command == "pipe":
            continue  # runs programs as users this machine does not have
        fields[4] = "n"  # chroot
        if (name, kind) in _DISCARDED_SERVICES:
            lines.append(" ".join([*fields[:7], "discard"]))
            continue
        lines.append(" ".join(fields))
        lines.extend(entry[1:])
        if name == "virtual" and virtual_overrides:
            lines.extend(f"  -o {key}={value}" for key, value in virtual_overrides.items())
        has_postlog = has_postlog or name == "postlog"
    if not has_postlog:
        lines.append(_POSTLOG_LINE)
    if extra.strip():
        lines.append(extra.strip("\n"))
    return "\n".join(lines) + "\n"


def _master_template() -> str:
    for candidate in (Path("/usr/share/postfix/master.cf.dist"), Path("/etc/postfix/master.cf")):
        if candidate.is_file():
            return candidate.read_text()
    raise PostfixError("no master.cf template: apt-get install postfix (scripts/test does this)")


def _run_on_tty(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` with stdout and stderr on a pseudo-terminal and return (status, output).

    The ``postfix`` command reports its fatal errors (a bad main.cf, say) on stderr only
    when stderr is a terminal; otherwise they go to a log it could not open yet.
    """
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, start_new_session=True
        )
    finally:
        os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        # Read until the command exits and its output is drained; a daemon it forked may
        # keep the terminal open, so end of file alone is not the signal.
        while True:
            exited = process.poll() is not None
            readable, _, _ = select.select([controller], [], [], 0 if exited else 0.05)
            if readable:
                try:
                    chunk = os.read(controller, 4096)
                except OSError as exc:  # EIO: every writer closed the terminal
                    if exc.errno != errno.EIO:
                        raise
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
                    break
                if chunk:
                    chunks.append(chunk)
                    continue
            if exited:
                break
            if time.monotonic() > deadline:
                raise PostfixError(f"{' '.join(argv)} did not finish within {timeout:g}s")
        status = process.returncode
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()
    return status, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def _write_settled(path: Path, text: str) -> None:
    """Write a file Postfix will read, with its mtime a minute in the past, mode 0644.

    Postfix re-reads a config or map file whose mtime is not older than the moment it
    started reading (it may be mid-edit), pausing 300 ms each time, for up to 2 s.
    """
    path.write_text(text)
    path.chmod(0o644)
    settled = time.time() - 60
    os.utime(path, (settled, settled))


def _live_group_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are alive (zombies left to a non-reaping init excluded)."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in {"Z", "X"}:
            members.append(int(entry.name))
    return members


class PostfixInstance:
    """One private Postfix. The constructor writes its configuration; ``start()`` runs it."""

    def __init__(
        self,
        main_overrides: Mapping[str, str] | None = None,
        virtual_overrides: Mapping[str, str] | None = None,
        extra_master: str = "",
        *,
        base_dir: Path | None = None,
    ) -> None:
        main_overrides = dict(main_overrides or {})
        _check_parameters(main_overrides, "main.cf override")
        _check_parameters(dict(virtual_overrides or {}), "virtual -o override")
        self._defaults = _postfix_defaults()
        self._owns_base_dir = base_dir is None
        self.base_dir = base_dir if base_dir is not None else Path(tempfile.mkdtemp(prefix="pf", dir="/tmp"))
        # Postfix daemons run as the postfix user and must reach their directories.
        self.base_dir.chmod(0o755)
        self.config_dir = self.base_dir / "etc"
        self.queue_dir = self.base_dir / "spool"
        self.data_dir = self.base_dir / "data"
        self.vmail_dir = self.base_dir / "vmail"
        self.maps_dir = self.base_dir / "maps"
        self.maillog_path = self.base_dir / "maillog"
        self.smtp_port = free_port()
        self._master_pid: int | None = None
        for directory in (self.config_dir, self.vmail_dir, self.maps_dir):
            directory.mkdir(mode=0o755, exist_ok=True)
        os.chown(self.vmail_dir, VMAIL_UID, VMAIL_GID)
        # As Debian lays out /var/spool/postfix and /var/lib/postfix; `postfix start` fills the queue in.
        self.queue_dir.mkdir(mode=0o755, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(self.data_dir, user="postfix")
        self.main_cf = {**self._base_main_cf(), **main_overrides}
        _write_settled(self.config_dir / "main.cf", "".join(f"{k} = {v}\n" for k, v in self.main_cf.items()))
        master_cf = render_master_cf(
            _master_template(), smtp_port=self.smtp_port, virtual_overrides=virtual_overrides, extra=extra_master
        )
        _write_settled(self.config_dir / "master.cf", master_cf)

    def _base_main_cf(self) -> dict[str, str]:
        base = str(self.base_dir)
        return {
            "compatibility_level": "3.6",
            "command_directory": self._defaults["command_directory"],
            "daemon_directory": self._defaults["daemon_directory"],
            "shlib_directory": self._defaults["shlib_directory"],
            "meta_directory": self._defaults["meta_directory"],
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": HOSTNAME,
            "mydomain": HOSTNAME,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "default_transport": NOWHERE,
            "relay_transport": NOWHERE,
            "local_transport": "error:no local delivery",
            "alias_maps": "",
            "alias_database": "",
            "disable_dns_lookups": "yes",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "smtpd_peername_lookup": "no",
            "smtpd_banner": "$myhostname ESMTP mailmapd-test",
            "smtpd_error_sleep_time": "0",
            "smtputf8_enable": "yes",
            "biff": "no",
            "append_dot_mydomain": "no",
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": base,
            "virtual_mailbox_base": str(self.vmail_dir),
            "virtual_uid_maps": f"static:{VMAIL_UID}",
            "virtual_gid_maps": f"static:{VMAIL_GID}",
            "virtual_minimum_uid": "100",
        }

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """``postfix start`` (its master waits until it has bound its sockets), then read a banner."""
        status, output = _run_on_tty(self._command("postfix", "start"), START_TIMEOUT)
        if status != 0:
            raise PostfixError(f"postfix -c {self.config_dir} start exited {status}:\n{output}\n{self.maillog_tail()}")
        self._master_pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        wait_until(
            self._greets,
            timeout=START_TIMEOUT,
            what=f"a 220 banner on {LOOPBACK}:{self.smtp_port}",
            diagnostics=self.maillog_tail,
        )

    def stop(self) -> None:
        """``postfix stop``, then wait until no process of this instance is left (SIGKILL as a last resort)."""
        pgid = self._master_pid
        if pgid is None:
            return
        self._master_pid = None
        status, output = _run_on_tty(self._command("postfix", "stop"), STOP_TIMEOUT)
        if status != 0 and "not running" not in output:
            raise PostfixError(f"postfix -c {self.config_dir} stop exited {status}:\n{output}")
        try:
            wait_until(
                lambda: True if not _live_group_members(pgid) else None,
                timeout=STOP_TIMEOUT,
                what=f"the processes of the Postfix instance in {self.base_dir} to exit",
            )
        except TimeoutError:
            os.killpg(pgid, signal.SIGKILL)  # the master's own group: only this instance's processes
            raise

    def close(self) -> None:
        """Stop the instance and remove its directory."""
        try:
            self.stop()
        finally:
            if self._owns_base_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._master_pid is not None

    # -- commands ---------------------------------------------------------------------------

    def postconf(self, *args: str) -> str:
        """``postconf -c DIR ARGS...``; return stdout."""
        result = self._run("postconf", *args)
        if result.returncode != 0:
            raise PostfixError(f"postconf {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result.stdout

    def postmap_query(self, key: str, table: str) -> tuple[int, str, str]:
        """``postmap -c DIR -q KEY TABLE``: (status, stdout, stderr). Status 1 means not found."""
        result = self._run("postmap", "-q", key, table)
        return result.returncode, result.stdout, result.stderr

    def flush(self) -> None:
        """``postqueue -f``: retry every deferred message now."""
        result = self._run("postqueue", "-f")
        if result.returncode != 0:
            raise PostfixError(f"postqueue -f exited {result.returncode}:\n{result.stderr}")

    def queue(self) -> list[dict[str, Any]]:
        """The queue as ``postqueue -j`` reports it: one dict per message."""
        result = self._run("postqueue", "-j")
        if result.returncode != 0:
            raise PostfixError(f"postqueue -j exited {result.returncode}:\n{result.stderr}")
        return [cast("dict[str, Any]", json.loads(line)) for line in result.stdout.splitlines() if line.strip()]

    def queue_ids(self) -> list[str]:
        """Queue ids of every message still queued (deferred, held, active, incoming)."""
        return [str(message["queue_id"]) for message in self.queue()]

    # -- mail -------------------------------------------------------------------------------

    def send(self, sender: str, recipients: Iterable[str], body: str = "Subject: test\n\nhello\n") -> None:
        """One SMTP transaction with smtplib; raises smtplib errors on any rejection."""
        with smtplib.SMTP(
            LOOPBACK, self.smtp_port, local_hostname="client.test.invalid", timeout=COMMAND_TIMEOUT
        ) as smtp:
            smtp.sendmail(sender, list(recipients), body.encode())

    def maildir(self, mailbox: str | Path) -> Path:
        """A Maildir path; relative ones are under ``vmail_dir`` (``example.test/user/``)."""
        path = Path(mailbox)
        return path if path.is_absolute() else self.vmail_dir / path

    def wait_for_maildir(self, mailbox: str | Path, count: int = 1, timeout: float = 15.0) -> list[Path]:
        """Wait until the Maildir's new/ holds at least ``count`` messages; return them, sorted."""
        new = self.maildir(mailbox) / "new"

        def delivered() -> list[Path] | None:
            files = sorted(new.iterdir()) if new.is_dir() else []
            return files if len(files) >= count else None

        return wait_until(
            delivered,
            timeout=timeout,
            what=f"{count} message(s) in {new}",
            diagnostics=lambda: f"queue: {self.queue_ids()}\n{self.maillog_tail()}",
        )

    def write_map_file(self, name: str, text: str) -> Path:
        """Write ``maps/NAME`` (mode 0644, readable by the postfix user, mtime settled); return its path."""
        path = self.maps_dir / name
        _write_settled(path, text)
        return path

    # -- logs -------------------------------------------------------------------------------

    def maillog(self) -> str:
        """Everything this instance logged so far (postlogd writes it asynchronously)."""
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def maillog_tail(self, lines: int = 40) -> str:
        return "maillog, last lines:\n" + "\n".join(self.maillog().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Wait until a maillog line matches the regular expression ``pattern``; return the match."""
        regex = re.compile(pattern, re.MULTILINE)
        return wait_until(
            lambda: regex.search(self.maillog()),
            timeout=timeout,
            what=f"a maillog line matching {pattern!r}",
            diagnostics=self.maillog_tail,
        )

    # -- internals --------------------------------------------------------------------------

    def _command(self, program: str, *args: str) -> list[str]:
        return [str(Path(self._defaults["command_directory"]) / program), "-c", str(self.config_dir), *args]

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._command(program, *args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )

    def _greets(self) -> bool | None:
        try:
            with (
                socket.create_connection((LOOPBACK, self.smtp_port), timeout=5.0) as sock,
                sock.makefile("rb") as reader,
            ):
                banner = reader.readline()
                sock.sendall(b"QUIT\r\n")
        except OSError:
            return None
        return True if banner.startswith(b"220 ") else None

"""systemd socket activation: the listening sockets systemd passes in, as sd_listen_fds(3) does it.

systemd (a ``.socket`` unit) opens the sockets itself and starts the service with them as file
descriptors 3, 4, ... and three environment variables: ``LISTEN_PID`` (the pid they are meant for),
``LISTEN_FDS`` (how many) and ``LISTEN_FDNAMES`` (colon-separated names, from the socket unit's
``FileDescriptorName=``). :func:`inherited_sockets` reads them; it never opens, binds or closes
anything, and it does no I/O beyond getsockopt/getsockname on the inherited descriptors.

How the daemon uses them, one rule per case:

- a ``[[listen]]`` whose address matches an inherited socket uses it instead of binding
  (:func:`match`: same host and port for ``inet:``, same path for ``unix:``);
- an inherited socket that matches no ``[[listen]]`` is an error at start-up: systemd would keep
  accepting connections on it that nobody ever answers;
- without ``LISTEN_FDS`` everything binds as before.

Matching is by address, not by name: systemd 252 (Debian 12) applies one ``FileDescriptorName=``
to every socket of a socket unit, so names cannot tell the sockets of one unit apart. The names
are kept for log lines. Addresses are compared literally (no DNS): a ``[[listen]]`` written
``inet:localhost:7979`` never matches; write ``inet:127.0.0.1:7979``.

An inherited unix socket belongs to the socket unit: its file is systemd's to create, chown,
chmod and remove (``SocketUser=``, ``SocketGroup=``, ``SocketMode=``), not the daemon's.
"""

from __future__ import annotations

import enum
import fcntl
import ipaddress
import os
import posixpath
import socket
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass

from mailmapd.config import ConfigError, InetAddress, parse_address

__all__ = ["LISTEN_FDS_START", "InheritedSocket", "SocketActivationError", "inherited_sockets", "match"]

# sd-daemon.h SD_LISTEN_FDS_START: the first passed descriptor; 0-2 stay stdin/stdout/stderr.
LISTEN_FDS_START = 3
_DEFAULT_NAME = "unknown"  # sd_listen_fds_with_names(3) when LISTEN_FDNAMES is not set
_ENV_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class SocketActivationError(Exception):
    """The passed environment or descriptors cannot be used; the message names the fd and its name."""


@dataclass(frozen=True)
class InheritedSocket:
    """One descriptor passed by systemd.

    ``address`` is in mailmapd's config syntax: ``inet:127.0.0.1:7979``, ``inet:[::1]:7979`` or
    ``unix:/path`` (``unix:@name`` for an abstract socket, which no ``[[listen]]`` can name).
    The descriptor stays open and owned by the caller: wrap it with ``socket.socket(fileno=fd)``.
    """

    fd: int
    name: str
    family: int
    address: str


def inherited_sockets(environ: Mapping[str, str] | None = None, *, unset: bool = True) -> list[InheritedSocket]:
    """The listening sockets systemd passed to this process, in descriptor order; [] when none.

    ``environ`` defaults to ``os.environ``. Returns [] when ``LISTEN_PID`` or ``LISTEN_FDS`` is
    missing, or when ``LISTEN_PID`` is not this process (the variables were meant for a parent).
    Sets FD_CLOEXEC on every passed descriptor so that children do not inherit them. With
    ``unset`` the three variables are removed from ``os.environ`` in every case, as
    sd_listen_fds(3) does with unset_environment, so that children do not see them either.

    Raises SocketActivationError when a variable is malformed, when ``LISTEN_FDNAMES`` does not
    name every descriptor, or when a descriptor is not a listening SOCK_STREAM socket of
    AF_INET, AF_INET6 or AF_UNIX.
    """
    env = os.environ if environ is None else environ
    try:
        fds, names = _passed(env)
    finally:
        if unset:
            _unset(os.environ)
    for fd in fds:  # all of them first, as sd_listen_fds() does
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        except OSError as exc:
            raise SocketActivationError(f"{_which(fd, names)}: not an open descriptor: {exc.strerror}") from exc
    return [_inspect(fd, names[fd - LISTEN_FDS_START], names) for fd in fds]


def match(inherited: Iterable[InheritedSocket], address: str) -> InheritedSocket | None:
    """The inherited socket bound to the configured listen ``address``, if any.

    ``inet:`` addresses match when host and port are equal as IP addresses
    (``inet:[::1]:7979`` matches ``inet:[0:0::1]:7979``); ``unix:`` addresses when the
    normalized paths are equal. ``address`` is a ``[[listen]]`` address; an invalid one raises
    ConfigError, as config loading does.
    """
    want = _key(address)
    for sock in inherited:
        try:
            have = _key(sock.address)
        except ConfigError:  # an abstract or unnamed unix socket: no [[listen]] names it
            continue
        if have == want:
            return sock
    return None


# ------------------------------------------------------------------------- helpers


def _passed(env: Mapping[str, str]) -> tuple[range, list[str]]:
    pid_text = env.get("LISTEN_PID")
    fds_text = env.get("LISTEN_FDS")
    if pid_text is None or fds_text is None:
        return range(0), []
    pid = _parse_count("LISTEN_PID", pid_text)
    if pid != os.getpid():
        return range(0), []
    count = _parse_count("LISTEN_FDS", fds_text)
    fds = range(LISTEN_FDS_START, LISTEN_FDS_START + count)
    names_text = env.get("LISTEN_FDNAMES")
    if names_text is None:
        return fds, [_DEFAULT_NAME] * count
    names = names_text.split(":") if count else []
    if len(names) != count:
        raise SocketActivationError(f"LISTEN_FDNAMES={names_text!r} names {len(names)} descriptors, LISTEN_FDS={count}")
    return fds, names


def _parse_count(var: str, text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise SocketActivationError(f"{var}={text!r}: expected a non-negative integer")
    return int(text)


def _unset(env: MutableMapping[str, str]) -> None:
    for var in _ENV_VARS:
        env.pop(var, None)


def _which(fd: int, names: list[str]) -> str:
    return f"LISTEN_FDS descriptor {fd} ({names[fd - LISTEN_FDS_START]!r})"


def _inspect(fd: int, name: str, names: list[str]) -> InheritedSocket:
    try:
        # socket(fileno=) reads the family and type from the descriptor itself.
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise SocketActivationError(f"{_which(fd, names)}: not a socket: {exc.strerror}") from exc
    try:
        if sock.family not in {socket.AF_INET, socket.AF_INET6, socket.AF_UNIX}:
            raise SocketActivationError(
                f"{_which(fd, names)}: {_enum_name(socket.AddressFamily, sock.family)} socket; "
                "mailmapd serves AF_INET, AF_INET6 and AF_UNIX only"
            )
        sock_type = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        if sock_type != socket.SOCK_STREAM:
            raise SocketActivationError(
                f"{_which(fd, names)}: {_enum_name(socket.SocketKind, sock_type)} socket; mailmapd needs SOCK_STREAM "
                "(ListenStream= in the socket unit, not ListenDatagram= or ListenSequentialPacket=)"
            )
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise SocketActivationError(
                f"{_which(fd, names)}: not listening (Accept=no in the socket unit is required)"
            )
        return InheritedSocket(fd, name, int(sock.family), _render(sock.family, sock.getsockname()))
    finally:
        sock.detach()  # the descriptor stays open: it is the caller's to use


def _enum_name(kind: type[enum.IntEnum], value: int) -> str:
    try:
        return str(kind(value).name)
    except ValueError:
        return str(value)


def _render(family: int, sockname: object) -> str:
    if family == socket.AF_UNIX:
        if isinstance(sockname, bytes):  # abstract namespace: b"\0name"
            return "unix:@" + sockname[1:].decode("utf-8", "backslashreplace")
        return f"unix:{sockname}"
    assert isinstance(sockname, tuple)
    host, port = sockname[0], sockname[1]
    return f"inet:[{host}]:{port}" if family == socket.AF_INET6 else f"inet:{host}:{port}"


def _key(address: str) -> tuple[object, ...]:
    parsed = parse_address(address, "listen.address")
    if isinstance(parsed, InetAddress):
        try:
            host: object = ipaddress.ip_address(parsed.host)
        except ValueError:
            host = parsed.host.lower()  # a host name: equal only to the same name
        return ("inet", host, parsed.port)
    return ("unix", posixpath.normpath(parsed.path))

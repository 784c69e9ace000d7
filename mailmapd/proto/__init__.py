"""Sans-IO codecs for the protocols Postfix speaks to a lookup server.

Nothing here imports asyncio, logging or sockets: bytes in, typed values out, bytes out.
The result types below are the vocabulary every codec and the resolver share.
"""

from __future__ import annotations

from dataclasses import dataclass


class ProtocolError(Exception):
    """A peer sent bytes that do not form a valid request: close that connection."""


@dataclass(frozen=True, slots=True)
class Found:
    """The key has a value; ``value`` is never empty (Postfix treats "" as a config error)."""

    value: str


@dataclass(frozen=True, slots=True)
class NotFound:
    """The key has no value."""


@dataclass(frozen=True, slots=True)
class TempFail:
    """The answer is unknown right now (database down, slow, or broken): Postfix must retry."""

    reason: str


@dataclass(frozen=True, slots=True)
class PermFail:
    """The request can never be answered (a map name that is not configured)."""

    reason: str


Result = Found | NotFound | TempFail | PermFail

NOT_FOUND = NotFound()


def decode_key(raw: bytes) -> str | None:
    """The lookup key as text, or None when it cannot name anything in the database.

    A key that is not valid UTF-8 or holds a NUL is answered "not found" without a query
    (a database would refuse or mangle it, which must not become a temporary failure).
    """
    if 0 in raw:  # a NUL byte: several times faster than `b"\x00" in raw` on CPython 3.11
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None

"""The Sendmail-style socketmap protocol, as Postfix's socketmap_table(5) client speaks it.

A request is one netstring ``<name> SP <key>``; the reply is one netstring ``OK <value>``,
``NOTFOUND `` (with its space), ``TEMP <reason>`` or ``PERM <reason>``
(src/util/dict_sockmap.c, dict_sockmap_lookup).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailmapd.proto import Found, NotFound, ProtocolError, Result, TempFail, decode_key
from mailmapd.proto.netstring import encode

# Request payload limit for the NetstringDecoder. Postfix >= 3.12 sends at most
# socketmap_max_query_size = 10000 bytes of key, "excluding socketmap and netstring framing"
# (proto/postconf.proto); the map name and the separating space come on top, and 100 bytes
# leave room for any sensible map name. Older Postfix has no query limit: a longer key makes
# the server close the connection, which Postfix reports as a temporary lookup error.
MAX_REQUEST_DEFAULT = 10_100

# Reply payload limit, excluding netstring framing: socketmap_max_reply_size, default 100000,
# configurable in Postfix >= 3.10 and hard-coded to 100000 before (src/util/dict_sockmap.c,
# proto/socketmap_table). Postfix fails a longer reply with "input exceeds size limit".
MAX_REPLY = 100_000
_OK = b"OK "
_MAX_VALUE = MAX_REPLY - len(_OK)

_NOTFOUND_REPLY = encode(b"NOTFOUND ")
# Bytes that may appear in a map name: printable ASCII without space.
_TABLE_NAME = re.compile(rb"[\x21-\x7e]+")
# C0 controls, DEL and C1 controls: replaced by spaces in reasons, which end up in Postfix logs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Lookup:
    """One socketmap request: the map name and the raw key (decode it with decode_key)."""

    table: str
    key: bytes


def parse_request(payload: bytes) -> Lookup:
    """Parse a request payload (one netstring's content) into a Lookup.

    The name ends at the first space; the key is everything after it and may be empty or hold
    further spaces (Postfix sends the key raw: ``vstring_sprintf(buf, "%s %s", name, key)``).
    """
    return Lookup(*split_request(payload))


def split_request(payload: bytes) -> tuple[str, bytes]:
    """parse_request as a plain ``(map name, raw key)`` tuple."""
    table, space, key = payload.partition(b" ")
    if not space or _TABLE_NAME.fullmatch(table) is None:
        raise _request_error(table, has_space=bool(space))
    return table.decode("ascii"), key


def decode_request(payload: bytes) -> tuple[str, str | None]:
    """The map name and the key as text, None when the key cannot name anything (as decode_key).

    The server's form, made per request: the payload is decoded once; only a payload that is
    not valid UTF-8 takes split_request's path."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        table, raw_key = split_request(payload)
        return table, decode_key(raw_key)
    table, space, key = text.partition(" ")
    # After the split at the first space, this is _TABLE_NAME's "printable ASCII".
    if not (space and table and table.isascii() and table.isprintable()):
        raise _request_error(table.encode(), has_space=bool(space))
    return table, None if "\x00" in key else key


def _request_error(table: bytes, *, has_space: bool) -> ProtocolError:
    if not has_space:
        return ProtocolError("socketmap request has no space between map name and key")
    return ProtocolError(f"socketmap map name is empty or not printable ASCII: {table[:100]!r}")


def _reply(status: bytes, reason: str) -> bytes:
    text = _CONTROL.sub(" ", reason).encode("utf-8", "replace")
    room = MAX_REPLY - len(status) - 1
    if len(text) > room:
        # A reason may be shortened (never a value); drop a UTF-8 sequence cut in half.
        text = text[:room].decode("utf-8", "ignore").encode("utf-8")
    return encode(status + b" " + text)


def encode_reply(result: Result) -> bytes:
    """The complete netstring that answers a lookup with ``result``.

    A value is never truncated: a Found that does not fit MAX_REPLY, or that Postfix would cut
    short (a NUL ends a C string), becomes TEMP. An empty Found becomes NOTFOUND, since Postfix
    treats an ``OK `` reply with empty data as a configuration error.
    """
    # isinstance rather than match: a class pattern costs about 0.25 us more on CPython 3.11,
    # and every request comes through here.
    if isinstance(result, Found):
        return _found(result.value)
    if isinstance(result, NotFound):
        return _NOTFOUND_REPLY
    if isinstance(result, TempFail):
        return _reply(b"TEMP", result.reason)
    return _reply(b"PERM", result.reason)  # PermFail


def _found(value: str) -> bytes:
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        return _reply(b"TEMP", "value is not encodable as UTF-8")
    return encode_value(data)


def encode_value(value: bytes) -> bytes:
    """The reply for a value already in UTF-8, b"" meaning not found (the cache's form)."""
    if not value:
        return _NOTFOUND_REPLY
    if 0 in value:  # a NUL byte (see decode_key)
        return _reply(b"TEMP", "value contains a NUL byte, which Postfix would truncate")
    if len(value) > _MAX_VALUE:
        return _reply(
            b"TEMP", f"value too long for Postfix: {len(_OK) + len(value)} bytes, socketmap limit {MAX_REPLY}"
        )
    return encode(_OK + value)

"""Postfix's tcp_table(5) protocol: one ``get <key>`` line in, one status line out.

Requests and replies are %XX-quoted and end with a newline (src/util/dict_tcp.c,
src/util/hex_quote.c). Replies are ``200 <quoted value>``, ``500 <text>`` (not found, the
connection stays open) or ``400 <text>`` (retry later; Postfix then disconnects).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailmapd.proto import Found, NotFound, ProtocolError, Result

# Longest line, newline included: DICT_TCP_MAXLEN 4096 "server reply size limit" in
# src/util/dict_tcp.c (read with vstring_get_nonl_bound). Postfix drops a longer reply as
# "text longer than 4096"; requests are held to the same bound.
MAX_LINE = 4096

_NOT_FOUND_REPLY = b"500 not found\n"
_NEWLINE = ord("\n")
_PERCENT = ord("%")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# hex_quote() keeps a byte when ch != '%' && !ISSPACE(ch) && ISPRINT(ch): 0x21..0x7e except '%'.
_NEEDS_QUOTE = re.compile(rb"[^\x21-\x24\x26-\x7e]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Get:
    """One tcp_table request: the key after %XX decoding, as raw bytes."""

    key: bytes


class LineDecoder:
    """Split a byte stream into lines ending in ``\\n``; a ``\\r`` before it is dropped too.

    ``feed`` raises ProtocolError as soon as a line exceeds ``max_line`` bytes (newline
    included), even before its newline arrives; the decoder is then unusable.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must leave room for the newline")
        self._max_line = max_line
        self._buf = bytearray()
        self._pos = 0  # start of the current line
        self._scan = 0  # where the search for the next newline resumes
        self._error: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes of a line whose newline has not arrived yet."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the lines completed by it, without their line ending."""
        if self._error is not None:
            raise ProtocolError(f"line decoder failed earlier: {self._error}")
        last = len(data) - 1
        if not self._buf and last >= 0 and data.find(_NEWLINE) == last and last < self._max_line:
            return [data[:-1].removesuffix(b"\r")]  # the usual case: the read is exactly one line
        self._buf += data
        lines: list[bytes] = []
        try:
            self._split(lines)
        except ProtocolError as exc:
            self._error = exc
            raise
        finally:
            if self._pos:
                del self._buf[: self._pos]
                self._scan -= self._pos
                self._pos = 0
        return lines

    def _split(self, lines: list[bytes]) -> None:
        buf = self._buf
        while True:
            newline = buf.find(_NEWLINE, self._scan)
            if newline < 0:
                self._scan = len(buf)
                if len(buf) - self._pos >= self._max_line:
                    raise ProtocolError(f"line longer than {self._max_line} bytes")
                return
            if newline + 1 - self._pos > self._max_line:
                raise ProtocolError(f"line longer than {self._max_line} bytes")
            line = bytes(buf[self._pos : newline])
            lines.append(line.removesuffix(b"\r"))
            self._pos = self._scan = newline + 1


def hex_unquote(data: bytes) -> bytes:
    """Decode %XX escapes (hex digits of any case); a ``%`` without two hex digits is an error."""
    if _PERCENT not in data:
        return data  # most keys: nothing to decode
    first, *rest = data.split(b"%")
    out = [first]
    for part in rest:
        digits = part[:2]
        if len(digits) != len(b"XX") or not _HEX_DIGITS.issuperset(digits):
            raise ProtocolError(f"bad %XX escape in tcp_table request: %{digits!r}")
        out.append(bytes((int(digits, 16),)))
        out.append(part[2:])
    return b"".join(out)


def parse_request(line: bytes) -> Get:
    """Parse one request line (without its newline) into a Get.

    Postfix always sends ``get <quoted key>`` (dict_tcp_lookup: ``"get %s\\n"``); the word is
    matched case-insensitively. ``put`` is documented in tcp_table(5) but no Postfix client
    implements it, so it is rejected like any other command.
    """
    return Get(request_key(line))


def request_key(line: bytes) -> bytes:
    """parse_request's key alone: the server's form, made per request."""
    command, space, quoted = line.partition(b" ")
    if not space or command.lower() != b"get":
        raise ProtocolError(f"tcp_table request is not 'get <key>': {line[:100]!r}")
    return hex_unquote(quoted)


def hex_quote(data: bytes) -> bytes:
    """Postfix's hex_quote(): every byte but printable ASCII other than ``%`` becomes %XX."""
    return _NEEDS_QUOTE.sub(lambda m: b"%%%02X" % m[0][0], data)


def _error_reply(reason: str) -> bytes:
    text = hex_quote(_CONTROL.sub(" ", reason).encode("utf-8", "replace"))
    room = MAX_LINE - len(b"400 \n")
    if len(text) > room:
        text = text[:room]
        # Do not leave half an escape at the end: that would make the whole reply malformed.
        cut = text.rfind(b"%", len(text) - 2)
        if cut >= 0:
            text = text[:cut]
    return b"400 " + text + b"\n"


def encode_reply(result: Result) -> bytes:
    """The reply line (newline included) that answers a lookup with ``result``.

    A value is never truncated: a Found whose line exceeds MAX_LINE, or that Postfix would cut
    short (a NUL ends a C string; hex_quote "cannot process null characters"), becomes 400.
    An empty Found becomes 500, since ``200 `` with no data is a Postfix configuration error.
    """
    # isinstance rather than match: a class pattern costs about 0.25 us more on CPython 3.11,
    # and every request comes through here.
    if isinstance(result, Found):
        return _found(result.value)
    if isinstance(result, NotFound):
        return _NOT_FOUND_REPLY
    return _error_reply(result.reason)  # TempFail or PermFail


def _found(value: str) -> bytes:
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        return _error_reply("value is not encodable as UTF-8")
    return encode_value(data)


def encode_value(value: bytes) -> bytes:
    """The reply line for a value already in UTF-8, b"" meaning not found (the cache's form)."""
    if not value:
        return _NOT_FOUND_REPLY
    if 0 in value:  # a NUL byte (see decode_key)
        return _error_reply("value contains a NUL byte, which Postfix would truncate")
    line = b"200 " + hex_quote(value) + b"\n"
    if len(line) > MAX_LINE:
        return _error_reply(f"value too long for Postfix: {len(line)} bytes quoted, tcp_table limit {MAX_LINE}")
    return line

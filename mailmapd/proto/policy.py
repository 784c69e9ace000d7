"""Postfix's SMTPD access policy delegation protocol (SMTPD_POLICY_README).

A request is ``name=value`` lines ended by an empty line; the reply is ``action=<action>``
followed by an empty line. Attribute names must not contain ``=``, NUL or newline, values must
not contain NUL or newline (src/util/attr_scan_plain.c).
"""

from __future__ import annotations

import re

from mailmapd.proto import Found, NotFound, PermFail, ProtocolError, Result, TempFail

# Longest attribute line, newline included. attr_scan_plain(3) documents "Each string must be
# no longer than 4*var_line_limit characters", with line_length_limit = 2048 by default
# (proto/postconf.proto): 8192. Real requests carry addresses and host names far below it.
MAX_LINE = 8192

# Attribute lines per request. Postfix 3.12 sends about 30 (SMTPD_POLICY_README); its own
# reader stops at ATTR_HASH_LIMIT 1024 (src/util/attr.h), far more than a policy client needs.
MAX_ATTRIBUTES = 100

# Bytes per request, empty line included: bounds the memory a client can hold per connection
# (MAX_ATTRIBUTES * MAX_LINE alone would allow 800 KiB).
MAX_REQUEST = 64 * 1024

_NEWLINE = ord("\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ACTION_PREFIX = b"action="


class PolicyDecoder:
    """Split a byte stream into policy requests, each a ``dict`` of attribute name to value.

    Names and values are UTF-8 (Postfix sends UTF-8 with smtputf8_enable). A ``\\r`` before a
    newline is dropped. A name sent twice keeps its last value (Postfix never repeats a name).
    ``feed`` raises ProtocolError on a malformed request; the decoder is then unusable.
    """

    def __init__(
        self,
        max_line: int = MAX_LINE,
        max_attributes: int = MAX_ATTRIBUTES,
        max_request: int = MAX_REQUEST,
    ) -> None:
        if max_line < 1:
            raise ValueError("max_line must leave room for the newline")
        self._max_line = max_line
        self._max_attributes = max_attributes
        self._max_request = max_request
        self._buf = bytearray()
        self._pos = 0  # start of the current line
        self._scan = 0  # where the search for the next newline resumes
        self._attrs: dict[str, str] = {}
        self._lines = 0  # attribute lines in the current request
        self._request_bytes = 0  # bytes of the current request's complete lines
        self._error: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes received of a request that is not complete yet."""
        return self._request_bytes + len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[dict[str, str]]:
        """Add ``data``; return the requests completed by it, in order."""
        if self._error is not None:
            raise ProtocolError(f"policy decoder failed earlier: {self._error}")
        self._buf += data
        requests: list[dict[str, str]] = []
        try:
            self._split(requests)
        except ProtocolError as exc:
            self._error = exc
            raise
        finally:
            if self._pos:
                del self._buf[: self._pos]
                self._scan -= self._pos
                self._pos = 0
        return requests

    def _split(self, requests: list[dict[str, str]]) -> None:
        buf = self._buf
        while True:
            newline = buf.find(_NEWLINE, self._scan)
            end = len(buf) if newline < 0 else newline + 1
            size = end - self._pos
            if size > self._max_line or (newline < 0 and size >= self._max_line):
                raise ProtocolError(f"policy request line longer than {self._max_line} bytes")
            if self._request_bytes + size > self._max_request:
                raise ProtocolError(f"policy request longer than {self._max_request} bytes")
            if newline < 0:
                self._scan = end
                return
            line = bytes(buf[self._pos : newline]).removesuffix(b"\r")
            self._pos = self._scan = end
            if line:
                self._add_attribute(line)
                self._request_bytes += size
            elif self._attrs:
                requests.append(self._attrs)
                self._attrs = {}
                self._lines = 0
                self._request_bytes = 0
            else:
                raise ProtocolError("empty policy request")

    def _add_attribute(self, line: bytes) -> None:
        self._lines += 1
        if self._lines > self._max_attributes:
            raise ProtocolError(f"policy request has more than {self._max_attributes} attributes")
        name, equals, value = line.partition(b"=")
        if not equals:
            raise ProtocolError(f"policy attribute without '=': {line[:100]!r}")
        if not name:
            raise ProtocolError(f"policy attribute with an empty name: {line[:100]!r}")
        if b"\x00" in line:
            raise ProtocolError(f"policy attribute contains NUL: {line[:100]!r}")
        try:
            self._attrs[name.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"policy attribute is not UTF-8: {line[:100]!r}") from exc


def encode_action(action: str) -> bytes:
    """The reply ``action=<action>`` plus the empty line that ends it.

    ValueError for an action Postfix would misread: empty or blank (Postfix evaluates an
    empty action as OK, i.e. it permits), containing NUL, CR or LF, not encodable as UTF-8, or
    longer than MAX_LINE on the wire.
    """
    if not action.strip():
        raise ValueError("an empty policy action would permit the request")
    if any(ch in action for ch in "\x00\r\n"):
        raise ValueError(f"policy action contains NUL, CR or LF: {action[:100]!r}")
    line = _ACTION_PREFIX + action.encode("utf-8") + b"\n"
    if len(line) > MAX_LINE:
        raise ValueError(f"policy action line is {len(line)} bytes, over {MAX_LINE}")
    return line + b"\n"


def _defer(reason: str) -> bytes:
    text = " ".join(_CONTROL.sub(" ", reason).split())
    room = MAX_LINE - len(b"action=DEFER_IF_PERMIT \n")
    data = text.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
    return encode_action(f"DEFER_IF_PERMIT {data}".rstrip())


def encode_reply(result: Result) -> bytes:
    """The reply for a lookup result; a failure defers (DEFER_IF_PERMIT), it never rejects.

    Found(value) -> ``action=<value>`` (a value encode_action refuses becomes a deferral),
    NotFound -> ``DUNNO``, TempFail and PermFail -> ``DEFER_IF_PERMIT <reason>``.
    """
    match result:
        case Found(value):
            try:
                return encode_action(value)
            except ValueError:
                return _defer("policy service returned an invalid action")
        case NotFound():
            return encode_action("DUNNO")
        case TempFail(reason) | PermFail(reason):
            return _defer(reason)

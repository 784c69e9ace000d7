"""Netstrings (https://cr.yp.to/proto/netstrings.txt), the framing of the socketmap protocol.

A netstring is ``<decimal length>:<payload>,``. The decoder is incremental: feed it whatever
the socket returned and it hands back every payload that is complete so far.
"""

from __future__ import annotations

from mailmapd.proto import ProtocolError

# Largest payload accepted by default. Postfix's own netstring reader takes a size limit from
# its caller (src/util/netstring.c, netstring_get_length: NETSTRING_ERR_SIZE "input exceeds
# size limit"); 100000 bytes is the socketmap reply limit of src/util/dict_sockmap.c, which
# bounds every frame either side of a socketmap connection sends.
MAX_LEN_DEFAULT = 100_000

_COLON = ord(":")
_COMMA = ord(",")
_ZERO = ord("0")


class NetstringDecoder:
    """Split a byte stream into netstring payloads.

    ``feed`` raises ProtocolError on malformed input; the decoder is then unusable and every
    later ``feed`` raises again (the caller closes the connection). Payloads that were
    complete earlier in the same chunk as the error are not returned.
    """

    def __init__(self, max_len: int = MAX_LEN_DEFAULT) -> None:
        if max_len < 0:
            raise ValueError("max_len must not be negative")
        self._max_len = max_len
        # A length needs at most this many digits; reading stops there, so a client cannot
        # make us buffer an endless run of digits.
        self._max_digits = len(str(max_len))
        self._buf = bytearray()
        self._pos = 0  # start of the current frame in _buf
        self._length: int | None = None  # declared length of the current frame, once known
        self._header = 0  # bytes of "<digits>:" before the current frame's payload
        self._error: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a complete frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the payloads completed by it, in order."""
        if self._error is not None:
            raise ProtocolError(f"netstring decoder failed earlier: {self._error}")
        self._buf += data
        frames: list[bytes] = []
        try:
            while self._next_frame(frames):
                pass
        except ProtocolError as exc:
            self._error = exc
            raise
        finally:
            # One compaction per call keeps the cost linear in the bytes received.
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
        return frames

    def _next_frame(self, frames: list[bytes]) -> bool:
        """Parse one frame at _pos into ``frames``; False when more data is needed."""
        buf = self._buf
        if self._length is None:
            length = self._read_length()
            if length is None:
                return False
            self._length = length
        start = self._pos + self._header
        end = start + self._length
        if len(buf) <= end:
            return False
        if buf[end] != _COMMA:
            raise ProtocolError(f"netstring of length {self._length} does not end with ','")
        frames.append(bytes(buf[start:end]))
        self._pos = end + 1
        self._length = None
        return True

    def _read_length(self) -> int | None:
        """Consume ``<digits>:`` at _pos; None when the prefix is still incomplete."""
        buf = self._buf
        head = bytes(buf[self._pos : self._pos + self._max_digits + 1])
        colon = head.find(_COLON)
        digits = head if colon < 0 else head[:colon]
        if not digits.isdigit() and digits:
            raise ProtocolError(f"netstring length is not a decimal number: {digits!r}")
        if len(digits) > 1 and digits[0] == _ZERO:
            raise ProtocolError(f"netstring length has a leading zero: {digits!r}")
        if len(digits) > self._max_digits:
            raise ProtocolError(f"netstring length has more than {self._max_digits} digits")
        if colon < 0:
            return None
        if not digits:
            raise ProtocolError("netstring length is empty")
        length = int(digits)
        if length > self._max_len:
            raise ProtocolError(f"netstring length {length} exceeds the limit {self._max_len}")
        self._header = colon + 1
        return length


def encode(payload: bytes) -> bytes:
    """Frame ``payload`` as a netstring."""
    return b"%d:%s," % (len(payload), payload)

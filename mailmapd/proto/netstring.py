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
        self._buf = bytearray()  # bytes of a frame not complete yet
        self._length: int | None = None  # declared length of that frame, once its header is read
        self._header = 0  # bytes of "<digits>:" before that frame's payload
        self._error: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the payloads completed by it, in order."""
        if self._error is not None:
            raise ProtocolError(f"netstring decoder failed earlier: {self._error}")
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            # The usual case: the read is exactly one whole netstring. Then its header is the
            # payload's length written canonically, so one comparison with that checks the
            # digits, the leading zero and the length together.
            head, _, rest = data.partition(b":")
            length = len(rest) - 1
            if rest[-1:] == b"," and head == b"%d" % length and length <= self._max_len:
                return [rest[:length]]
            buf = data  # whole requests, or one cut short: parsed without a copy into the buffer
        frames: list[bytes] = []
        try:
            pos = self._split(buf, frames)
        except ProtocolError as exc:
            self._error = exc
            raise
        # Keep what is left; one compaction per call keeps the cost linear in the bytes received.
        if buf is not data:
            del self._buf[:pos]
        elif pos < len(data):
            self._buf += data[pos:]
        return frames

    def _split(self, buf: bytes | bytearray, frames: list[bytes]) -> int:
        """Append the complete payloads in ``buf`` to ``frames``; return where the rest starts."""
        pos = 0
        length = self._length
        while pos < len(buf):
            if length is None:
                length = self._read_length(buf, pos)
                if length is None:
                    break
            start = pos + self._header
            end = start + length
            if len(buf) <= end:
                break
            if buf[end] != _COMMA:
                raise ProtocolError(f"netstring of length {length} does not end with ','")
            frame = buf[start:end]
            frames.append(frame if type(frame) is bytes else bytes(frame))
            pos = end + 1
            length = None
        self._length = length
        return pos

    def _read_length(self, buf: bytes | bytearray, pos: int) -> int | None:
        """Parse ``<digits>:`` at ``pos``, once; None when the header is still incomplete.

        Sets ``_header``. Raises ProtocolError as soon as the bytes cannot become a valid
        header, so that a client cannot make us buffer an endless run of digits.
        """
        colon = buf.find(_COLON, pos, pos + self._max_digits + 1)
        digits = buf[pos : pos + self._max_digits + 1] if colon < 0 else buf[pos:colon]
        if not digits.isdigit() and digits:
            raise ProtocolError(f"netstring length is not a decimal number: {bytes(digits)!r}")
        if len(digits) > 1 and digits[0] == _ZERO:
            raise ProtocolError(f"netstring length has a leading zero: {bytes(digits)!r}")
        if len(digits) > self._max_digits:
            raise ProtocolError(f"netstring length has more than {self._max_digits} digits")
        if colon < 0:
            return None
        if not digits:
            raise ProtocolError("netstring length is empty")
        length = int(digits)
        if length > self._max_len:
            raise ProtocolError(f"netstring length {length} exceeds the limit {self._max_len}")
        self._header = colon + 1 - pos
        return length


def encode(payload: bytes) -> bytes:
    """Frame ``payload`` as a netstring."""
    return b"%d:%s," % (len(payload), payload)

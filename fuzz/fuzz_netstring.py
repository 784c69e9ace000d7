"""Fuzz the netstring decoder: any bytes, whole or in pieces, raise nothing but ProtocolError.

    python fuzz/fuzz_netstring.py -max_total_time=60 -timeout=5 /tmp/work-corpus fuzz/corpus/netstring

Properties, for the default limit and a small one (16, so that short inputs reach it):
- feeding the input whole, byte by byte, or in pieces of 1 + len % 13 bytes gives the same
  payloads and the same verdict (ProtocolError or not);
- each payload is within the limit, and ``pending`` counts exactly the bytes not yet framed;
- encode() of each payload decodes back to it, and so does encode() of the input itself.
"""

from __future__ import annotations

from harness import instrumented, main

with instrumented():
    from mailmapd.proto import ProtocolError
    from mailmapd.proto.netstring import MAX_LEN_DEFAULT, NetstringDecoder, encode

LIMITS = (MAX_LEN_DEFAULT, 16)


def decode(limit: int, pieces: list[bytes]) -> tuple[list[bytes], bool, int]:
    """(payloads, whether ProtocolError was raised, pending bytes)."""
    decoder = NetstringDecoder(limit)
    frames: list[bytes] = []
    try:
        for piece in pieces:
            frames.extend(decoder.feed(piece))
    except ProtocolError:
        return frames, True, -1
    return frames, False, decoder.pending


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_one_input(data: bytes) -> None:
    for limit in LIMITS:
        frames, failed, pending = decode(limit, [data])
        for size in (1, 1 + len(data) % 13):
            other, other_failed, other_pending = decode(limit, pieces(data, size))
            assert other_failed == failed, (limit, size, failed)
            if not failed:
                assert other == frames, (limit, size)
                assert other_pending == pending, (limit, size)
        if not failed:
            assert all(len(f) <= limit for f in frames)
            assert pending == len(data) - sum(len(encode(f)) for f in frames)
        for frame in frames:
            assert decode(limit, [encode(frame)]) == ([frame], False, 0)
        if len(data) <= limit:
            assert decode(limit, [encode(data)]) == ([data], False, 0)


if __name__ == "__main__":
    main(test_one_input, "netstring")

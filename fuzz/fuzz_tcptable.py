"""Fuzz the tcp_table codec: requests raise nothing but ProtocolError, replies are always one line.

    python fuzz/fuzz_tcptable.py -max_total_time=60 -timeout=5 /tmp/work-corpus fuzz/corpus/tcptable

Properties:
- the line decoder gives the same lines and the same verdict whether the input comes whole,
  byte by byte, or in pieces of 1 + len % 13 bytes; no line is longer than the limit or holds a
  newline;
- parse_request() of each line and hex_unquote() of the input raise only ProtocolError;
- hex_unquote(hex_quote(x)) == x, and hex_quote() output is printable ASCII with no space;
- every result encodes to one line within MAX_LINE, ``200``/``500``/``400`` then a space and,
  for 200 and 400, printable ASCII with no space; a ``200`` line carries the value unchanged.
"""

from __future__ import annotations

import contextlib

from harness import instrumented, main

with instrumented():
    from mailmapd.proto import NOT_FOUND, Found, PermFail, ProtocolError, Result, TempFail, tcptable

STATUSES = (b"200", b"500", b"400")


def decode(pieces: list[bytes]) -> tuple[list[bytes], bool]:
    decoder = tcptable.LineDecoder()
    lines: list[bytes] = []
    try:
        for piece in pieces:
            lines.extend(decoder.feed(piece))
    except ProtocolError:
        return lines, True
    return lines, False


def check_reply(result: Result, text: str) -> None:
    reply = tcptable.encode_reply(result)
    assert reply.endswith(b"\n"), reply[:100]
    assert reply.count(b"\n") == 1, reply[:100]
    assert len(reply) <= tcptable.MAX_LINE, len(reply)
    status, space, quoted = reply[:-1].partition(b" ")
    assert status in STATUSES, reply[:100]
    assert space, reply[:100]
    if status == b"500":
        assert reply == b"500 not found\n", reply[:100]
    else:  # a value or a reason, %XX-quoted
        assert all(0x21 <= b <= 0x7E for b in quoted), reply[:100]  # noqa: PLR2004 - printable ASCII
    if status == b"200":
        assert isinstance(result, Found)
        assert tcptable.hex_unquote(quoted).decode("utf-8") == text


def test_one_input(data: bytes) -> None:
    lines, failed = decode([data])
    for size in (1, 1 + len(data) % 13):
        other, other_failed = decode([data[i : i + size] for i in range(0, len(data), size)])
        assert other_failed == failed, size
        if not failed:
            assert other == lines, size
    for line in lines:
        assert len(line) < tcptable.MAX_LINE
        assert b"\n" not in line
        with contextlib.suppress(ProtocolError):
            tcptable.parse_request(line)
    with contextlib.suppress(ProtocolError):
        tcptable.hex_unquote(data)
    quoted = tcptable.hex_quote(data)
    assert all(0x21 <= b <= 0x7E for b in quoted)  # noqa: PLR2004 - printable ASCII
    assert tcptable.hex_unquote(quoted) == data
    text = data.decode("utf-8", "surrogateescape")
    for result in (Found(text), NOT_FOUND, TempFail(text), PermFail(text)):
        check_reply(result, text)


if __name__ == "__main__":
    main(test_one_input, "tcptable")

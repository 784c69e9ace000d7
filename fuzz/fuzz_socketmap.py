"""Fuzz the socketmap codec: requests raise nothing but ProtocolError, replies are always valid.

    python fuzz/fuzz_socketmap.py -max_total_time=60 -timeout=5 /tmp/work-corpus fuzz/corpus/socketmap

Properties:
- the input as a request stream (netstrings at the request limit) and each frame, and the input
  as one request payload, raise only ProtocolError; a parsed map name is printable ASCII with
  no space; decode_key() never raises and gives None or text without NUL; decode_request(), the
  server's one-step parser, gives what parse_request() and decode_key() give, or the same error;
- the input as text (bytes that are not UTF-8 kept as surrogates) in a Found, TempFail or
  PermFail, and NotFound, each encode to exactly one netstring within the reply limit,
  ``OK``/``NOTFOUND``/``TEMP``/``PERM`` then a space; an ``OK`` carries the value unchanged.
"""

from __future__ import annotations

from harness import instrumented, main

with instrumented():
    from mailmapd.proto import NOT_FOUND, Found, PermFail, ProtocolError, Result, TempFail, decode_key, socketmap
    from mailmapd.proto.netstring import NetstringDecoder

STATUSES = (b"OK", b"NOTFOUND", b"TEMP", b"PERM")


def _decoded(payload: bytes) -> tuple[str, str | None] | str:
    """decode_request's answer, or its error's message."""
    try:
        return socketmap.decode_request(payload)
    except ProtocolError as exc:
        return str(exc)


def check_request(payload: bytes) -> None:
    expected: tuple[str, str | None] | str
    try:
        lookup = socketmap.parse_request(payload)
    except ProtocolError as exc:
        expected = str(exc)
    else:
        assert lookup.table, payload
        assert lookup.table.isascii(), payload
        assert lookup.table.isprintable(), payload
        assert " " not in lookup.table, payload
        key = decode_key(lookup.key)
        assert key is None or "\x00" not in key
        expected = (lookup.table, key)
    # The server's one-step parser: the same answer, or the same refusal.
    assert _decoded(payload) == expected, payload


def check_reply(result: Result, text: str) -> None:
    reply = socketmap.encode_reply(result)
    decoder = NetstringDecoder(socketmap.MAX_REPLY)
    frames = decoder.feed(reply)
    assert len(frames) == 1, (result, reply[:100])
    assert decoder.pending == 0
    status, space, value = frames[0].partition(b" ")
    assert status in STATUSES, reply[:100]
    assert space, reply[:100]
    if status == b"OK":
        assert isinstance(result, Found), reply[:100]
        assert value.decode("utf-8") == text


def test_one_input(data: bytes) -> None:
    decoder = NetstringDecoder(socketmap.MAX_REQUEST_DEFAULT)
    try:
        frames = decoder.feed(data)
    except ProtocolError:
        frames = []
    for frame in frames:
        check_request(frame)
    check_request(data)
    text = data.decode("utf-8", "surrogateescape")
    for result in (Found(text), NOT_FOUND, TempFail(text), PermFail(text)):
        check_reply(result, text)


if __name__ == "__main__":
    main(test_one_input, "socketmap")

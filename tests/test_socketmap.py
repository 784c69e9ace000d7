from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmapd.proto import NOT_FOUND, Found, NotFound, PermFail, ProtocolError, Result, TempFail, decode_key
from mailmapd.proto.netstring import NetstringDecoder, encode
from mailmapd.proto.socketmap import (
    MAX_REPLY,
    MAX_REQUEST_DEFAULT,
    Lookup,
    decode_request,
    encode_reply,
    encode_value,
    parse_request,
    split_request,
)
from tests.golden import CHUNK_SIZES, answer, chunked, load

GOLDEN = load("socketmap")
TRAILING = b"30:virtual_alias partial"  # the start of another request: stays pending


def decode_requests(chunks: list[bytes]) -> tuple[list[Lookup], int]:
    decoder = NetstringDecoder(MAX_REQUEST_DEFAULT)
    lookups: list[Lookup] = []
    for chunk in chunks:
        lookups += [parse_request(frame) for frame in decoder.feed(chunk)]
    return lookups, decoder.pending


def tr(data: bytes, expected: list[Lookup]) -> None:
    """Check ``data`` whole, byte by byte, and followed by the start of another request."""
    assert decode_requests([data]) == (expected, 0)
    assert decode_requests(chunked(data, 1)) == (expected, 0)
    assert decode_requests([data + TRAILING]) == (expected, len(TRAILING))


def tr_error(data: bytes, match: str) -> None:
    for chunks in ([data], chunked(data, 1), [data + TRAILING]):
        with pytest.raises(ProtocolError, match=match):
            decode_requests(chunks)


def decode_reply(wire: bytes) -> bytes:
    """The payload of a reply, checked the way Postfix's netstring reader checks it."""
    decoder = NetstringDecoder(MAX_REPLY)
    frames = decoder.feed(wire)
    assert len(frames) == 1
    assert decoder.pending == 0
    return frames[0]


@pytest.mark.parametrize(
    ("payload", "table", "key"),
    [
        pytest.param(b"alias a@example.test", "alias", b"a@example.test", id="simple"),
        pytest.param(b"mymap a b%c", "mymap", b"a b%c", id="spaces-in-key"),
        pytest.param(b"mymap ", "mymap", b"", id="empty-key"),
        pytest.param(b"mymap  lead", "mymap", b" lead", id="key-leading-space"),
        pytest.param(b"mymap trail ", "mymap", b"trail ", id="key-trailing-space"),
        pytest.param(b"m k\x00\xff\n", "m", b"k\x00\xff\n", id="binary-key"),
        pytest.param(b"a-b_c.d:e/f k", "a-b_c.d:e/f", b"k", id="punctuated-name"),
        pytest.param(
            "alias Jürgen@Example.COM".encode(),
            "alias",
            "Jürgen@Example.COM".encode(),
            id="utf8-key",
        ),
    ],
)
def test_parse_request(payload: bytes, table: str, key: bytes) -> None:
    assert parse_request(payload) == Lookup(table, key)
    assert split_request(payload) == (table, key)
    tr(encode(payload), [Lookup(table, key)])


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        pytest.param(b"", "no space", id="empty"),
        pytest.param(b"alias", "no space", id="no-key"),
        pytest.param(b"alias\ta@example.test", "no space", id="tab-separator"),
        pytest.param(b" a@example.test", "map name is empty", id="empty-name"),
        pytest.param(b"ali\x00as key", "not printable", id="nul-in-name"),
        pytest.param(b"ali\tas key", "not printable", id="tab-in-name"),
        pytest.param(b"al\x7fias key", "not printable", id="del-in-name"),
        pytest.param("mäp key".encode(), "not printable", id="utf8-name"),
    ],
)
def test_parse_request_error(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_request(payload)
    tr_error(encode(payload), match)


def test_request_limit() -> None:
    largest = b"m " + b"k" * (MAX_REQUEST_DEFAULT - 2)
    assert decode_requests([encode(largest)]) == ([Lookup("m", largest[2:])], 0)
    tr_error(encode(largest + b"k"), "exceeds the limit 10100")


@pytest.mark.parametrize(
    ("result", "wire"),
    [
        pytest.param(Found("a@example.test"), b"17:OK a@example.test,", id="found"),
        pytest.param(Found("a b, c"), b"9:OK a b, c,", id="found-spaces"),
        pytest.param(Found("jürgen"), "10:OK jürgen,".encode(), id="found-utf8"),
        pytest.param(Found("a\nb"), b"6:OK a\nb,", id="found-newline-kept"),
        pytest.param(NOT_FOUND, b"9:NOTFOUND ,", id="not-found"),
        pytest.param(NotFound(), b"9:NOTFOUND ,", id="not-found-new-instance"),
        pytest.param(Found(""), b"9:NOTFOUND ,", id="empty-found-is-not-found"),
        pytest.param(TempFail("db down"), b"12:TEMP db down,", id="temp"),
        pytest.param(TempFail(""), b"5:TEMP ,", id="temp-no-reason"),
        pytest.param(PermFail("no such map"), b"16:PERM no such map,", id="perm"),
        pytest.param(TempFail("a\r\nb\x00c\td\x7fe\x85f"), b"17:TEMP a  b c d e f,", id="controls"),
        pytest.param(TempFail("caf\udce9"), b"9:TEMP caf?,", id="surrogate-reason"),
    ],
)
def test_encode_reply(result: Result, wire: bytes) -> None:
    assert encode_reply(result) == wire


def test_value_at_reply_limit_is_sent_whole() -> None:
    value = "v" * (MAX_REPLY - len("OK "))
    assert decode_reply(encode_reply(Found(value))) == b"OK " + value.encode()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("v" * (MAX_REPLY - 2), id="one-byte-over"),
        pytest.param("ü" * MAX_REPLY, id="utf8-over"),
        pytest.param("a@example.test," * 10_000, id="long-alias-list"),
    ],
)
def test_value_over_reply_limit_becomes_temp(value: str) -> None:
    payload = decode_reply(encode_reply(Found(value)))
    assert payload.startswith(b"TEMP value too long for Postfix")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        pytest.param("a\x00b", b"TEMP value contains a NUL", id="nul"),
        pytest.param("caf\udce9", b"TEMP value is not encodable", id="surrogate"),
    ],
)
def test_value_postfix_cannot_take_becomes_temp(value: str, match: bytes) -> None:
    assert decode_reply(encode_reply(Found(value))).startswith(match)


def test_long_reason_is_shortened_to_fit() -> None:
    payload = decode_reply(encode_reply(TempFail("é" * MAX_REPLY)))
    assert len(payload) <= MAX_REPLY
    assert payload.startswith("TEMP éé".encode())
    payload.decode("utf-8")  # no UTF-8 sequence cut in half


results = st.one_of(
    st.builds(Found, st.text()),
    st.just(NOT_FOUND),
    st.builds(TempFail, st.text()),
    st.builds(PermFail, st.text()),
)


@given(results)
def test_every_reply_is_one_valid_netstring(result: Result) -> None:
    payload = decode_reply(encode_reply(result))
    status, space, text = payload.partition(b" ")
    assert space
    assert len(payload) <= MAX_REPLY
    assert status in {b"OK", b"NOTFOUND", b"TEMP", b"PERM"}
    assert status != b"OK" or text  # never "OK " with empty data
    if status in {b"TEMP", b"PERM"}:
        assert not any(c < 0x20 or c == 0x7F for c in text)


@given(st.text(min_size=1).filter(lambda v: "\x00" not in v))
def test_found_roundtrip(value: str) -> None:
    assert decode_reply(encode_reply(Found(value))) == b"OK " + value.encode()


names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)


@given(st.lists(st.tuples(names, st.binary())), st.data())
def test_request_roundtrip_any_chunking(requests: list[tuple[str, bytes]], data: st.DataObject) -> None:
    wire = b"".join(encode(table.encode() + b" " + key) for table, key in requests)
    size = data.draw(st.integers(1, max(1, len(wire))))
    expected = [Lookup(table, key) for table, key in requests]
    assert decode_requests(chunked(wire, size)) == (expected, 0)


@pytest.mark.parametrize("size", CHUNK_SIZES)
@pytest.mark.parametrize(
    ("request_", "reply"),
    [pytest.param(req, rep, id=req.decode("ascii", "replace")) for req, rep in GOLDEN],
)
def test_golden(request_: bytes, reply: bytes, size: int) -> None:
    lookups, pending = decode_requests(chunked(request_, size))
    assert pending == 0
    assert b"".join(encode_reply(answer(lookup.key)) for lookup in lookups) == reply


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_golden_pipelined(size: int) -> None:
    lookups, pending = decode_requests(chunked(b"".join(req for req, _ in GOLDEN), size))
    assert pending == 0
    assert len(lookups) == len(GOLDEN)
    assert b"".join(encode_reply(answer(lookup.key)) for lookup in lookups) == b"".join(rep for _, rep in GOLDEN)


# The cache hands the server a value still in UTF-8 (b"" for not found), which it encodes
# directly; encode_reply(Found) goes through the same function, so its tests above cover
# both, and these pin the cached form's own cases.


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        pytest.param(b"a@example.test", b"17:OK a@example.test,", id="found"),
        pytest.param("jürgen".encode(), "10:OK jürgen,".encode(), id="found-utf8"),
        pytest.param(b"", b"9:NOTFOUND ,", id="empty-is-not-found"),
        pytest.param(b"v" * (MAX_REPLY - 3), b"100000:OK " + b"v" * (MAX_REPLY - 3) + b",", id="at-limit"),
    ],
)
def test_encode_value(value: bytes, wire: bytes) -> None:
    assert encode_value(value) == wire


@pytest.mark.parametrize(
    ("value", "match"),
    [
        pytest.param(b"a\x00b", b"TEMP value contains a NUL", id="nul"),
        pytest.param(b"v" * (MAX_REPLY - 2), b"TEMP value too long for Postfix: 100001 bytes", id="one-byte-over"),
    ],
)
def test_encode_value_postfix_cannot_take_becomes_temp(value: bytes, match: bytes) -> None:
    assert decode_reply(encode_value(value)).startswith(match)


def assert_decode_request_agrees(payload: bytes) -> None:
    """decode_request is split_request then decode_key, in one step: same answer, same error."""

    def both(parse: Callable[[bytes], object]) -> object:
        try:
            return parse(payload)
        except ProtocolError as exc:
            return f"ProtocolError: {exc}"

    split = both(split_request)
    expected = (split[0], decode_key(split[1])) if isinstance(split, tuple) else split
    assert both(decode_request) == expected


@given(st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode)))
def test_decode_request_agrees_with_split_request_and_decode_key(payload: bytes) -> None:
    assert_decode_request_agrees(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"m a@b",
        b"m ",
        b"m a b",
        b"m a\x00b",
        b"m\x00 k",
        b"m \xff",
        b"\xff a",
        b"m\x7f a",
        "mäp k".encode(),
        "\x85 k".encode(),
        b" a",
        b"ma",
        b"m\ta b",
    ],
)
def test_decode_request_agrees_at_the_edges(payload: bytes) -> None:
    assert_decode_request_agrees(payload)

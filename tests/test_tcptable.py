from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmapd.proto import NOT_FOUND, Found, NotFound, PermFail, ProtocolError, Result, TempFail
from mailmapd.proto.tcptable import (
    MAX_LINE,
    Get,
    LineDecoder,
    encode_reply,
    encode_value,
    hex_quote,
    hex_unquote,
    parse_request,
    request_key,
)
from tests.golden import CHUNK_SIZES, answer, chunked, load, split_at

GOLDEN = load("tcptable")
TRAILING = b"get partial"  # the start of another request: stays pending


def decode_lines(chunks: list[bytes], max_line: int = MAX_LINE) -> tuple[list[bytes], int]:
    decoder = LineDecoder(max_line)
    lines: list[bytes] = []
    for chunk in chunks:
        lines += decoder.feed(chunk)
    return lines, decoder.pending


def decode_requests(chunks: list[bytes]) -> tuple[list[Get], int]:
    lines, pending = decode_lines(chunks)
    return [parse_request(line) for line in lines], pending


def tr(data: bytes, expected: list[bytes], max_line: int = MAX_LINE) -> None:
    """Check ``data`` whole, byte by byte, and followed by the start of another line."""
    assert decode_lines([data], max_line) == (expected, 0)
    assert decode_lines(chunked(data, 1), max_line) == (expected, 0)
    assert decode_lines([data + TRAILING], max_line) == (expected, len(TRAILING))


def postfix_reply_check(line: bytes) -> tuple[bytes, bytes]:
    """Status and unquoted text, checked as dict_tcp_lookup() checks a reply (else it temp-fails)."""
    assert len(line) <= MAX_LINE  # vstring_get_nonl_bound(..., DICT_TCP_MAXLEN)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert line[:3].isdigit()
    assert line[3:4] in {b" ", b"\t", b"\v", b"\f", b"\r"}  # ISSPACE(start[3])
    return line[:3], hex_unquote(line[4:-1])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", [], id="nothing"),
        pytest.param(b"\n", [b""], id="empty-line"),
        pytest.param(b"get a\n", [b"get a"], id="lf"),
        pytest.param(b"get a\r\n", [b"get a"], id="crlf"),
        pytest.param(b"get a\r\r\n", [b"get a\r"], id="one-cr-stripped"),
        pytest.param(b"a\rb\n", [b"a\rb"], id="inner-cr-kept"),
        pytest.param(b"a\nb\n\nc\n", [b"a", b"b", b"", b"c"], id="several"),
    ],
)
def test_lines(data: bytes, expected: list[bytes]) -> None:
    tr(data, expected)


def test_line_limit_counts_the_newline() -> None:
    tr(b"x" * (MAX_LINE - 1) + b"\n", [b"x" * (MAX_LINE - 1)])
    tr(b"x" * (MAX_LINE - 2) + b"\r\n", [b"x" * (MAX_LINE - 2)])
    assert decode_lines([b"abc\n"], max_line=4) == ([b"abc"], 0)
    assert decode_lines(chunked(b"abc\nxyz", 1), max_line=4) == ([b"abc"], 3)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"x" * MAX_LINE + b"\n", id="newline-over-limit"),
        pytest.param(b"x" * (MAX_LINE - 1) + b"\r\n", id="crlf-over-limit"),
        pytest.param(b"x" * MAX_LINE, id="no-newline-yet"),
        pytest.param(b"get a\n" + b"x" * MAX_LINE, id="second-line"),
    ],
)
def test_line_too_long(data: bytes) -> None:
    for chunks in ([data], chunked(data, 1), chunked(data, 100), [data + b"\n"]):
        with pytest.raises(ProtocolError, match="line longer than 4096"):
            decode_lines(chunks)


def test_line_too_long_fails_before_the_newline() -> None:
    decoder = LineDecoder(8)
    assert decoder.feed(b"1234567") == []
    assert decoder.pending == 7
    with pytest.raises(ProtocolError, match="line longer than 8"):
        decoder.feed(b"8")


def test_unusable_after_error() -> None:
    decoder = LineDecoder(4)
    with pytest.raises(ProtocolError):
        decoder.feed(b"12345\n")
    with pytest.raises(ProtocolError, match="failed earlier"):
        decoder.feed(b"\n")


def test_max_line_must_hold_a_newline() -> None:
    with pytest.raises(ValueError, match="room for the newline"):
        LineDecoder(0)


def test_many_small_lines_in_one_chunk() -> None:
    lines = [b"get %d" % i for i in range(20_000)]
    assert decode_lines([b"\n".join(lines) + b"\n"]) == (lines, 0)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        pytest.param(b"get a@example.test", b"a@example.test", id="simple"),
        pytest.param(b"GET a", b"a", id="upper-case"),
        pytest.param(b"Get a", b"a", id="mixed-case"),
        pytest.param(b"get ", b"", id="empty-key"),
        pytest.param(b"get a%20b%25c", b"a b%c", id="escapes"),
        pytest.param(b"get %4a%4A", b"JJ", id="hex-any-case"),
        pytest.param(b"get %C3%BC", "ü".encode(), id="utf8"),
        pytest.param(b"get %00%0A%FF", b"\x00\n\xff", id="binary"),
        pytest.param(b"get a b", b"a b", id="raw-space-passes"),
        pytest.param(b"get a\tb\x01", b"a\tb\x01", id="raw-control-passes"),
        pytest.param(b"get  a", b" a", id="second-space-is-key"),
    ],
)
def test_parse_request(line: bytes, key: bytes) -> None:
    assert parse_request(line) == Get(key)
    assert request_key(line) == key  # the server's form
    for ending in (b"\n", b"\r\n"):
        data = line + ending
        assert decode_requests([data]) == ([Get(key)], 0)
        assert decode_requests(chunked(data, 1)) == ([Get(key)], 0)
        assert decode_requests([data + TRAILING]) == ([Get(key)], len(TRAILING))


@pytest.mark.parametrize(
    ("line", "match"),
    [
        pytest.param(b"", "not 'get <key>'", id="empty"),
        pytest.param(b"get", "not 'get <key>'", id="no-space"),
        pytest.param(b"get\ta", "not 'get <key>'", id="tab"),
        pytest.param(b" get a", "not 'get <key>'", id="leading-space"),
        pytest.param(b"gets a", "not 'get <key>'", id="longer-word"),
        pytest.param(b"put a b", "not 'get <key>'", id="put"),
        pytest.param(b"a@example.test", "not 'get <key>'", id="bare-key"),
        pytest.param(b"get %", "bad %XX", id="lone-percent"),
        pytest.param(b"get a%4", "bad %XX", id="one-digit"),
        pytest.param(b"get %4g", "bad %XX", id="second-not-hex"),
        pytest.param(b"get %g4", "bad %XX", id="first-not-hex"),
        pytest.param(b"get %+f", "bad %XX", id="plus-sign"),
        pytest.param(b"get % f", "bad %XX", id="space"),
        pytest.param(b"get %%41", "bad %XX", id="double-percent"),
        pytest.param(b"get %41%", "bad %XX", id="trailing-percent"),
    ],
)
def test_parse_request_error(line: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_request(line)
    for chunks in ([line + b"\n"], chunked(line + b"\n", 1), [line + b"\n" + TRAILING]):
        with pytest.raises(ProtocolError, match=match):
            decode_requests(chunks)


@pytest.mark.parametrize(
    ("data", "quoted"),
    [
        pytest.param(b"", b"", id="empty"),
        pytest.param(b"a@example.test", b"a@example.test", id="plain"),
        pytest.param(b"a b%c", b"a%20b%25c", id="space-percent"),
        pytest.param(b"\t\n\v\f\r", b"%09%0A%0B%0C%0D", id="whitespace"),
        pytest.param(b"\x00\x1f\x7f\x80\xff", b"%00%1F%7F%80%FF", id="controls-high"),
        pytest.param("ü".encode(), b"%C3%BC", id="utf8"),
        pytest.param(b'!"#$&+,/:;<=>?@[\\]^_`{|}~', b'!"#$&+,/:;<=>?@[\\]^_`{|}~', id="punctuation"),
    ],
)
def test_hex_quote(data: bytes, quoted: bytes) -> None:
    assert hex_quote(data) == quoted


@pytest.mark.parametrize("byte", range(256))
def test_hex_quote_rule(byte: int) -> None:
    # hex_quote.c: keep ch when ch != '%' && !ISSPACE(ch) && ISPRINT(ch) (ASCII only).
    kept = byte != ord("%") and not chr(byte).isspace() and 0x20 <= byte < 0x7F
    expected = bytes((byte,)) if kept else b"%%%02X" % byte
    assert hex_quote(bytes((byte,))) == expected


@given(st.binary())
def test_quote_roundtrip(data: bytes) -> None:
    quoted = hex_quote(data)
    assert all(0x21 <= c <= 0x7E for c in quoted)
    assert hex_unquote(quoted) == data
    assert parse_request(b"get " + quoted) == Get(data)


@given(st.lists(st.binary(max_size=50)), st.data())
def test_request_roundtrip_any_chunking(keys: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(b"get " + hex_quote(key) + b"\n" for key in keys)
    size = data.draw(st.integers(1, max(1, len(wire))))
    assert decode_requests(chunked(wire, size)) == ([Get(key) for key in keys], 0)


def outcome(chunks: list[bytes], max_line: int) -> tuple[list[bytes], int] | None:
    try:
        return decode_lines(chunks, max_line)
    except ProtocolError:
        return None


@given(st.binary(max_size=200), st.integers(1, 30), st.data())
def test_chunking_never_changes_the_outcome(wire: bytes, max_line: int, data: st.DataObject) -> None:
    chunks = split_at(wire, data.draw(st.lists(st.integers(0, len(wire)))))
    assert outcome(chunks, max_line) == outcome([wire], max_line)


@pytest.mark.parametrize(
    ("result", "wire"),
    [
        pytest.param(Found("a@example.test"), b"200 a@example.test\n", id="found"),
        pytest.param(Found("a b,c%"), b"200 a%20b,c%25\n", id="found-quoted"),
        pytest.param(Found("jürgen"), b"200 j%C3%BCrgen\n", id="found-utf8"),
        pytest.param(Found("a\r\nb"), b"200 a%0D%0Ab\n", id="found-newline"),
        pytest.param(NOT_FOUND, b"500 not found\n", id="not-found"),
        pytest.param(NotFound(), b"500 not found\n", id="not-found-new-instance"),
        pytest.param(Found(""), b"500 not found\n", id="empty-found-is-not-found"),
        pytest.param(TempFail("db down"), b"400 db%20down\n", id="temp"),
        pytest.param(PermFail("no such map"), b"400 no%20such%20map\n", id="perm"),
        pytest.param(TempFail(""), b"400 \n", id="temp-no-reason"),
        pytest.param(TempFail("a\nb\x00c%"), b"400 a%20b%20c%25\n", id="controls"),
    ],
)
def test_encode_reply(result: Result, wire: bytes) -> None:
    assert encode_reply(result) == wire
    postfix_reply_check(wire)


def test_value_at_line_limit_is_sent_whole() -> None:
    value = "v" * (MAX_LINE - len("200 \n"))
    assert encode_reply(Found(value)) == b"200 " + value.encode() + b"\n"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("v" * (MAX_LINE - 4), id="one-byte-over"),
        pytest.param(" " * 1364, id="quoting-makes-it-too-long"),
        pytest.param("a@example.test," * 1000, id="long-alias-list"),
    ],
)
def test_value_over_line_limit_becomes_400(value: str) -> None:
    status, text = postfix_reply_check(encode_reply(Found(value)))
    assert status == b"400"
    assert text.startswith(b"value too long for Postfix")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        pytest.param("a\x00b", b"value contains a NUL", id="nul"),
        pytest.param("caf\udce9", b"value is not encodable", id="surrogate"),
    ],
)
def test_value_postfix_cannot_take_becomes_400(value: str, match: bytes) -> None:
    status, text = postfix_reply_check(encode_reply(Found(value)))
    assert status == b"400"
    assert text.startswith(match)


@pytest.mark.parametrize("reason", ["%" * MAX_LINE, "x%" * MAX_LINE, "xx%" * MAX_LINE, "é" * MAX_LINE])
def test_long_reason_is_cut_between_escapes(reason: str) -> None:
    status, _ = postfix_reply_check(encode_reply(TempFail(reason)))
    assert status == b"400"


results = st.one_of(
    st.builds(Found, st.text()),
    st.just(NOT_FOUND),
    st.builds(TempFail, st.text()),
    st.builds(PermFail, st.text()),
)


@given(results)
def test_every_reply_passes_postfix_checks(result: Result) -> None:
    status, text = postfix_reply_check(encode_reply(result))
    assert status in {b"200", b"400", b"500"}
    if status == b"200":
        assert isinstance(result, Found)
        assert text == result.value.encode()


@pytest.mark.parametrize("size", CHUNK_SIZES)
@pytest.mark.parametrize(
    ("request_", "reply"),
    [pytest.param(req, rep, id=req.decode("ascii", "replace")) for req, rep in GOLDEN],
)
def test_golden(request_: bytes, reply: bytes, size: int) -> None:
    gets, pending = decode_requests(chunked(request_, size))
    assert pending == 0
    assert b"".join(encode_reply(answer(get.key)) for get in gets) == reply


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_golden_pipelined(size: int) -> None:
    gets, pending = decode_requests(chunked(b"".join(req for req, _ in GOLDEN), size))
    assert pending == 0
    assert len(gets) == len(GOLDEN)
    assert b"".join(encode_reply(answer(get.key)) for get in gets) == b"".join(rep for _, rep in GOLDEN)


# The cache hands the server a value still in UTF-8 (b"" for not found), which it encodes
# directly; encode_reply(Found) goes through the same function, so its tests above cover
# both, and these pin the cached form's own cases.


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        pytest.param(b"a@example.test", b"200 a@example.test\n", id="found"),
        pytest.param("jürgen".encode(), b"200 j%C3%BCrgen\n", id="found-utf8-quoted"),
        pytest.param(b"a b%", b"200 a%20b%25\n", id="space-and-percent-quoted"),
        pytest.param(b"", b"500 not found\n", id="empty-is-not-found"),
        pytest.param(b"v" * (MAX_LINE - 5), b"200 " + b"v" * (MAX_LINE - 5) + b"\n", id="at-limit"),
    ],
)
def test_encode_value(value: bytes, wire: bytes) -> None:
    assert encode_value(value) == wire


@pytest.mark.parametrize(
    ("value", "match"),
    [
        pytest.param(b"a\x00b", b"400 value%20contains%20a%20NUL", id="nul"),
        pytest.param(b"v" * (MAX_LINE - 4), b"400 value%20too%20long", id="one-byte-over"),
    ],
)
def test_encode_value_postfix_cannot_take_becomes_400(value: bytes, match: bytes) -> None:
    assert encode_value(value).startswith(match)

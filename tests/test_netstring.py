from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmapd.proto import ProtocolError
from mailmapd.proto.netstring import MAX_LEN_DEFAULT, NetstringDecoder, encode
from tests.golden import split_at

# A valid but incomplete frame: appended to a case, it must stay pending and change nothing.
TRAILING = b"2:x"


def feed_chunks(decoder: NetstringDecoder, chunks: list[bytes]) -> list[bytes]:
    frames: list[bytes] = []
    for chunk in chunks:
        frames += decoder.feed(chunk)
    return frames


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def tr(data: bytes, expected: list[bytes], max_len: int = MAX_LEN_DEFAULT) -> None:
    """Check ``data`` whole, byte by byte, and followed by the start of another frame."""
    decoder = NetstringDecoder(max_len)
    assert decoder.feed(data) == expected
    assert decoder.pending == 0

    decoder = NetstringDecoder(max_len)
    assert feed_chunks(decoder, byte_by_byte(data)) == expected
    assert decoder.pending == 0

    decoder = NetstringDecoder(max_len)
    assert decoder.feed(data + TRAILING) == expected
    assert decoder.pending == len(TRAILING)


def tr_error(data: bytes, match: str, max_len: int = MAX_LEN_DEFAULT) -> None:
    """``data`` must fail whole, byte by byte, and followed by more bytes."""
    with pytest.raises(ProtocolError, match=match):
        NetstringDecoder(max_len).feed(data)
    with pytest.raises(ProtocolError, match=match):
        feed_chunks(NetstringDecoder(max_len), byte_by_byte(data))
    with pytest.raises(ProtocolError, match=match):
        NetstringDecoder(max_len).feed(data + TRAILING)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", [], id="nothing"),
        pytest.param(b"0:,", [b""], id="empty"),
        pytest.param(b"3:abc,", [b"abc"], id="simple"),
        pytest.param(b"3:abc,0:,5:hello,", [b"abc", b"", b"hello"], id="several"),
        pytest.param(b"3:a,b,", [b"a,b"], id="comma-inside"),
        pytest.param(b"2::,,", [b":,"], id="separators-inside"),
        pytest.param(b"4:\x00\n\xff ,", [b"\x00\n\xff "], id="binary"),
        pytest.param(b"10:0123456789,", [b"0123456789"], id="two-digit-length"),
    ],
)
def test_decode(data: bytes, expected: list[bytes]) -> None:
    tr(data, expected)


def test_decode_exactly_max_len() -> None:
    tr(b"5:abcde,", [b"abcde"], max_len=5)
    tr(encode(b"x" * MAX_LEN_DEFAULT), [b"x" * MAX_LEN_DEFAULT])


@pytest.mark.parametrize(
    ("data", "match", "max_len"),
    [
        pytest.param(b"x:abc,", "not a decimal", MAX_LEN_DEFAULT, id="letter"),
        pytest.param(b"1x:a,", "not a decimal", MAX_LEN_DEFAULT, id="letter-after-digit"),
        pytest.param(b"-1:a,", "not a decimal", MAX_LEN_DEFAULT, id="negative"),
        pytest.param(b"+1:a,", "not a decimal", MAX_LEN_DEFAULT, id="plus"),
        pytest.param(b" 1:a,", "not a decimal", MAX_LEN_DEFAULT, id="space"),
        pytest.param(b"1 :a,", "not a decimal", MAX_LEN_DEFAULT, id="space-after"),
        pytest.param(b"1_0:aaaaaaaaaa,", "not a decimal", MAX_LEN_DEFAULT, id="underscore"),
        pytest.param(b"\xd9\xa1:a,", "not a decimal", MAX_LEN_DEFAULT, id="unicode-digit"),
        pytest.param(b":abc,", "empty", MAX_LEN_DEFAULT, id="no-length"),
        pytest.param(b"01:a,", "leading zero", MAX_LEN_DEFAULT, id="leading-zero"),
        pytest.param(b"00:,", "leading zero", MAX_LEN_DEFAULT, id="double-zero"),
        pytest.param(b"1234567", "more than 6 digits", MAX_LEN_DEFAULT, id="too-many-digits"),
        pytest.param(b"100", "more than 2 digits", 99, id="too-many-digits-small-limit"),
        pytest.param(b"100001:", "exceeds the limit 100000", MAX_LEN_DEFAULT, id="over-max-len"),
        pytest.param(b"6:", "exceeds the limit 5", 5, id="over-small-max-len"),
        pytest.param(b"6:abcdef,", "exceeds the limit 5", 5, id="whole-frame-over-max-len"),
        pytest.param(b"3:abcX", "does not end with ','", MAX_LEN_DEFAULT, id="no-comma"),
        pytest.param(b"3:abc;", "does not end with ','", MAX_LEN_DEFAULT, id="wrong-terminator"),
        pytest.param(b"3:abcd,", "does not end with ','", MAX_LEN_DEFAULT, id="payload-too-long"),
        pytest.param(b"3:abc,x", "not a decimal", MAX_LEN_DEFAULT, id="good-then-bad"),
    ],
)
def test_decode_error(data: bytes, match: str, max_len: int) -> None:
    tr_error(data, match, max_len)


def test_length_over_limit_fails_before_payload() -> None:
    # Nothing after the colon has arrived: the limit is enforced on the length alone.
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        NetstringDecoder(10).feed(b"11:")


def test_endless_digits_fail_early() -> None:
    decoder = NetstringDecoder(99)
    assert decoder.feed(b"9") == []
    assert decoder.feed(b"9") == []
    with pytest.raises(ProtocolError, match="more than 2 digits"):
        decoder.feed(b"9")


def test_unusable_after_error() -> None:
    decoder = NetstringDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"x")
    with pytest.raises(ProtocolError, match="failed earlier"):
        decoder.feed(b"3:abc,")


@pytest.mark.parametrize(
    ("data", "pending"),
    [
        pytest.param(b"", 0, id="nothing"),
        pytest.param(b"1", 1, id="digit"),
        pytest.param(b"12:", 3, id="header"),
        pytest.param(b"3:ab", 4, id="partial-payload"),
        pytest.param(b"3:abc", 5, id="missing-comma"),
        pytest.param(b"3:abc,", 0, id="complete"),
        pytest.param(b"3:abc,2:x", 3, id="complete-then-partial"),
    ],
)
def test_pending(data: bytes, pending: int) -> None:
    decoder = NetstringDecoder()
    decoder.feed(data)
    assert decoder.pending == pending
    decoder = NetstringDecoder()
    feed_chunks(decoder, byte_by_byte(data))
    assert decoder.pending == pending


def test_many_small_frames_in_one_chunk() -> None:
    frames = [b"%d" % i for i in range(20_000)]
    assert NetstringDecoder().feed(b"".join(map(encode, frames))) == frames


def test_negative_max_len() -> None:
    with pytest.raises(ValueError, match="negative"):
        NetstringDecoder(-1)


@pytest.mark.parametrize(
    ("payload", "wire"),
    [
        pytest.param(b"", b"0:,", id="empty"),
        pytest.param(b"abc", b"3:abc,", id="simple"),
        pytest.param(b"a,b:c", b"5:a,b:c,", id="separators"),
        pytest.param(b"\x00" * 12, b"12:" + b"\x00" * 12 + b",", id="binary"),
    ],
)
def test_encode(payload: bytes, wire: bytes) -> None:
    assert encode(payload) == wire


@given(st.lists(st.binary(max_size=300)), st.data())
def test_roundtrip_any_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(encode(p) for p in payloads)
    cuts = data.draw(st.lists(st.integers(0, len(wire))))
    decoder = NetstringDecoder(300)
    assert feed_chunks(decoder, split_at(wire, cuts)) == payloads
    assert decoder.pending == 0


def outcome(chunks: list[bytes], max_len: int) -> tuple[list[bytes], int] | None:
    """Frames and pending bytes, or None when the decoder raised ProtocolError."""
    decoder = NetstringDecoder(max_len)
    try:
        frames = feed_chunks(decoder, chunks)
    except ProtocolError:
        return None
    return frames, decoder.pending


# Mostly valid streams with noise mixed in, so both outcomes occur often.
noisy_stream = st.lists(
    st.one_of(
        st.binary(max_size=6),
        st.binary(max_size=30).map(encode),
        st.sampled_from([b"0", b":", b","]),
    ),
    max_size=12,
).map(b"".join)


@given(noisy_stream, st.integers(0, 40), st.data())
def test_chunking_never_changes_the_outcome(wire: bytes, max_len: int, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(wire))))
    assert outcome(split_at(wire, cuts), max_len) == outcome([wire], max_len)


@given(st.binary(max_size=200), st.data())
def test_arbitrary_bytes_raise_only_protocol_error(wire: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(wire))))
    assert outcome(split_at(wire, cuts), 100) == outcome([wire], 100)

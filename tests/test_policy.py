from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmapd.proto import NOT_FOUND, Found, NotFound, PermFail, ProtocolError, Result, TempFail
from mailmapd.proto.policy import (
    MAX_ATTRIBUTES,
    MAX_LINE,
    MAX_REQUEST,
    PolicyDecoder,
    encode_action,
    encode_reply,
)
from tests.golden import CHUNK_SIZES, answer, chunked, load, split_at

GOLDEN = load("policy")
TRAILING = b"request=smtpd_access_policy\nrecipient=a"  # an incomplete request: stays pending

Request = dict[str, str]


def decode(chunks: list[bytes], decoder: PolicyDecoder | None = None) -> tuple[list[Request], int]:
    decoder = decoder or PolicyDecoder()
    requests: list[Request] = []
    for chunk in chunks:
        requests += decoder.feed(chunk)
    return requests, decoder.pending


def tr(data: bytes, expected: list[Request]) -> None:
    """Check ``data`` whole, byte by byte, and followed by the start of another request."""
    assert decode([data]) == (expected, 0)
    assert decode(chunked(data, 1)) == (expected, 0)
    assert decode([data + TRAILING]) == (expected, len(TRAILING))


def tr_error(data: bytes, match: str, **limits: int) -> None:
    for chunks in ([data], chunked(data, 1), [data + TRAILING]):
        with pytest.raises(ProtocolError, match=match):
            decode(chunks, PolicyDecoder(**limits))


def encode_request(attrs: dict[str, str]) -> bytes:
    return b"".join(f"{name}={value}\n".encode() for name, value in attrs.items()) + b"\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", [], id="nothing"),
        pytest.param(b"request=smtpd_access_policy\n\n", [{"request": "smtpd_access_policy"}], id="one"),
        pytest.param(
            b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=a@example.test\n\n",
            [
                {
                    "request": "smtpd_access_policy",
                    "protocol_state": "RCPT",
                    "recipient": "a@example.test",
                }
            ],
            id="several-attributes",
        ),
        pytest.param(b"a=1\n\nb=2\n\n", [{"a": "1"}, {"b": "2"}], id="two-requests"),
        pytest.param(b"a=1\r\nb=2\r\n\r\n", [{"a": "1", "b": "2"}], id="crlf"),
        pytest.param(b"a=\n\n", [{"a": ""}], id="empty-value"),
        pytest.param(b"a=b=c\n\n", [{"a": "b=c"}], id="equals-in-value"),
        pytest.param(b"a= x \n\n", [{"a": " x "}], id="spaces-kept"),
        pytest.param(b"a=1\na=2\n\n", [{"a": "2"}], id="duplicate-last-wins"),
        pytest.param("sender=jürgen@exämple.com\n\n".encode(), [{"sender": "jürgen@exämple.com"}], id="utf8"),
        pytest.param(b"na me=v\tw\n\n", [{"na me": "v\tw"}], id="odd-but-legal"),
    ],
)
def test_decode(data: bytes, expected: list[Request]) -> None:
    tr(data, expected)


def test_limits_are_inclusive() -> None:
    line = b"a=" + b"x" * (MAX_LINE - 3) + b"\n"
    assert len(line) == MAX_LINE
    tr(line + b"\n", [{"a": "x" * (MAX_LINE - 3)}])
    many = {f"n{i}": "v" for i in range(MAX_ATTRIBUTES)}
    tr(encode_request(many), [many])
    big = {f"n{i}": "v" * 1000 for i in range(60)}
    data = encode_request(big)
    assert len(data) <= MAX_REQUEST
    tr(data, [big])


@pytest.mark.parametrize(
    ("data", "match", "limits"),
    [
        pytest.param(b"request\n\n", "without '='", {}, id="no-equals"),
        pytest.param(b"a=1\nrequest\n\n", "without '='", {}, id="no-equals-second"),
        pytest.param(b"=value\n\n", "empty name", {}, id="empty-name"),
        pytest.param(b"\n", "empty policy request", {}, id="empty-request"),
        pytest.param(b"a=1\n\n\n", "empty policy request", {}, id="extra-empty-line"),
        pytest.param(b"a=\x00\n\n", "NUL", {}, id="nul-in-value"),
        pytest.param(b"\x00a=1\n\n", "NUL", {}, id="nul-in-name"),
        pytest.param(b"a=\xff\n\n", "not UTF-8", {}, id="bad-utf8-value"),
        pytest.param(b"\xc3=1\n\n", "not UTF-8", {}, id="bad-utf8-name"),
        pytest.param(b"a=" + b"x" * (MAX_LINE - 2) + b"\n\n", "line longer than 8192", {}, id="line-too-long"),
        pytest.param(b"a=" + b"x" * MAX_LINE, "line longer than 8192", {}, id="line-too-long-no-newline"),
        pytest.param(b"a=1\nb=2\n", "more than 1 attributes", {"max_attributes": 1}, id="too-many-attributes"),
        pytest.param(b"a=1\na=2\n", "more than 1 attributes", {"max_attributes": 1}, id="duplicates-count"),
        pytest.param(b"a=1\nb=2\n", "longer than 7 bytes", {"max_request": 7}, id="request-too-long"),
        pytest.param(b"a=1\nb=2", "longer than 6 bytes", {"max_request": 6}, id="request-too-long-no-newline"),
        pytest.param(b"a=1\nb=2\n\n", "longer than 8 bytes", {"max_request": 8}, id="request-too-long-end"),
    ],
)
def test_decode_error(data: bytes, match: str, limits: dict[str, int]) -> None:
    tr_error(data, match, **limits)


def test_default_attribute_limit() -> None:
    many = {f"n{i}": "v" for i in range(MAX_ATTRIBUTES + 1)}
    tr_error(encode_request(many), "more than 100 attributes")


def test_default_request_limit() -> None:
    big = {f"n{i}": "v" * 1000 for i in range(70)}
    tr_error(encode_request(big), "longer than 65536 bytes")


def test_long_line_fails_before_its_newline() -> None:
    decoder = PolicyDecoder(max_line=8)
    assert decoder.feed(b"a=34567") == []
    with pytest.raises(ProtocolError, match="line longer than 8"):
        decoder.feed(b"8")


def test_long_request_fails_before_its_end() -> None:
    decoder = PolicyDecoder(max_request=10)
    assert decoder.feed(b"a=1\nb=2\nc=") == []
    with pytest.raises(ProtocolError, match="longer than 10 bytes"):
        decoder.feed(b"3")


def test_unusable_after_error() -> None:
    decoder = PolicyDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"junk\n")
    with pytest.raises(ProtocolError, match="failed earlier"):
        decoder.feed(b"a=1\n\n")


def test_max_line_must_hold_a_newline() -> None:
    with pytest.raises(ValueError, match="room for the newline"):
        PolicyDecoder(max_line=0)


@pytest.mark.parametrize(
    ("data", "pending"),
    [
        pytest.param(b"", 0, id="nothing"),
        pytest.param(b"req", 3, id="partial-line"),
        pytest.param(b"a=1\n", 4, id="attribute-without-end"),
        pytest.param(b"a=1\nb=", 6, id="attribute-and-partial"),
        pytest.param(b"a=1\n\n", 0, id="complete"),
        pytest.param(b"a=1\n\nb=2\n", 4, id="complete-then-partial"),
    ],
)
def test_pending(data: bytes, pending: int) -> None:
    assert decode([data])[1] == pending
    assert decode(chunked(data, 1))[1] == pending


def test_many_small_requests_in_one_chunk() -> None:
    requests = [{"recipient": f"u{i}@example.test"} for i in range(10_000)]
    assert decode([b"".join(map(encode_request, requests))]) == (requests, 0)


@pytest.mark.parametrize(
    ("action", "wire"),
    [
        pytest.param("DUNNO", b"action=DUNNO\n\n", id="dunno"),
        pytest.param("552 5.2.2 Mailbox full", b"action=552 5.2.2 Mailbox full\n\n", id="reject-text"),
        pytest.param("PREPEND X-Test: ü", "action=PREPEND X-Test: ü\n\n".encode(), id="utf8"),
    ],
)
def test_encode_action(action: str, wire: bytes) -> None:
    assert encode_action(action) == wire


def test_encode_action_at_line_limit() -> None:
    action = "x" * (MAX_LINE - len("action=\n"))
    assert encode_action(action) == f"action={action}\n\n".encode()


@pytest.mark.parametrize(
    ("action", "match"),
    [
        pytest.param("", "would permit", id="empty"),
        pytest.param(" \t", "would permit", id="blank"),
        pytest.param("REJECT a\nb", "NUL, CR or LF", id="newline"),
        pytest.param("REJECT a\r", "NUL, CR or LF", id="cr"),
        pytest.param("REJECT \x00", "NUL, CR or LF", id="nul"),
        pytest.param("x" * (MAX_LINE - len("action=\n") + 1), "over 8192", id="too-long"),
        pytest.param("REJECT caf\udce9", "surrogate", id="surrogate"),
    ],
)
def test_encode_action_error(action: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_action(action)


@pytest.mark.parametrize(
    ("result", "wire"),
    [
        pytest.param(Found("OK"), b"action=OK\n\n", id="found"),
        pytest.param(Found("452 4.2.2 Mailbox full"), b"action=452 4.2.2 Mailbox full\n\n", id="found-text"),
        pytest.param(NOT_FOUND, b"action=DUNNO\n\n", id="not-found"),
        pytest.param(NotFound(), b"action=DUNNO\n\n", id="not-found-new-instance"),
        pytest.param(TempFail("db down"), b"action=DEFER_IF_PERMIT db down\n\n", id="temp"),
        pytest.param(PermFail("no such map"), b"action=DEFER_IF_PERMIT no such map\n\n", id="perm"),
        pytest.param(TempFail(""), b"action=DEFER_IF_PERMIT\n\n", id="temp-no-reason"),
        pytest.param(TempFail("a\r\nb\x00c"), b"action=DEFER_IF_PERMIT a b c\n\n", id="controls"),
        pytest.param(
            Found(""),
            b"action=DEFER_IF_PERMIT policy service returned an invalid action\n\n",
            id="empty-found-defers-never-permits",
        ),
        pytest.param(
            Found("REJECT a\nb"),
            b"action=DEFER_IF_PERMIT policy service returned an invalid action\n\n",
            id="invalid-found-defers",
        ),
    ],
)
def test_encode_reply(result: Result, wire: bytes) -> None:
    assert encode_reply(result) == wire


def test_long_reason_is_shortened_to_fit() -> None:
    wire = encode_reply(TempFail("é" * MAX_LINE))
    assert len(wire) <= MAX_LINE + 1  # the line, then the empty line
    assert wire.startswith("action=DEFER_IF_PERMIT éé".encode())
    assert wire.endswith(b"\n\n")
    wire.decode("utf-8")


results = st.one_of(
    st.builds(Found, st.text()),
    st.just(NOT_FOUND),
    st.builds(TempFail, st.text()),
    st.builds(PermFail, st.text()),
)


@given(results)
def test_every_reply_is_one_valid_attribute(result: Result) -> None:
    wire = encode_reply(result)
    assert wire.startswith(b"action=")
    assert wire.endswith(b"\n\n")
    line = wire[:-1]
    assert len(line) <= MAX_LINE
    assert line.count(b"\n") == 1
    assert b"\x00" not in wire
    assert b"\r" not in wire
    action = line[len(b"action=") : -1].decode("utf-8")
    assert action.strip()  # an empty action would permit
    if not isinstance(result, Found):
        assert action.split()[0] in {"DUNNO", "DEFER_IF_PERMIT"}


names = st.text(min_size=1).filter(lambda n: not set(n) & {"=", "\n", "\x00"})
values = st.text().filter(lambda v: not set(v) & {"\n", "\x00"} and not v.endswith("\r"))


@given(st.lists(st.dictionaries(names, values, min_size=1, max_size=20)), st.data())
def test_request_roundtrip_any_chunking(requests: list[Request], data: st.DataObject) -> None:
    wire = b"".join(map(encode_request, requests))
    size = data.draw(st.integers(1, max(1, len(wire))))
    assert decode(chunked(wire, size)) == (requests, 0)


def outcome(chunks: list[bytes]) -> tuple[list[Request], int] | None:
    try:
        return decode(chunks, PolicyDecoder(max_line=20, max_attributes=4, max_request=60))
    except ProtocolError:
        return None


noisy_stream = st.lists(
    st.sampled_from([b"a=1\n", b"b=\xc3\xa4\n", b"\n", b"\r\n", b"x", b"=", b"\xff", b"\x00", b"c=" + b"y" * 20]),
    max_size=20,
).map(b"".join)


@given(st.one_of(noisy_stream, st.binary(max_size=100)), st.data())
def test_chunking_never_changes_the_outcome(wire: bytes, data: st.DataObject) -> None:
    chunks = split_at(wire, data.draw(st.lists(st.integers(0, len(wire)))))
    assert outcome(chunks) == outcome([wire])


def recipient_key(request: Request) -> bytes:
    return request.get("recipient", "").encode()


@pytest.mark.parametrize("size", CHUNK_SIZES)
@pytest.mark.parametrize(
    ("request_", "reply"),
    [pytest.param(req, rep, id=f"{i}-{rep.decode('ascii', 'replace')}") for i, (req, rep) in enumerate(GOLDEN)],
)
def test_golden(request_: bytes, reply: bytes, size: int) -> None:
    requests, pending = decode(chunked(request_, size))
    assert pending == 0
    assert b"".join(encode_reply(answer(recipient_key(r))) for r in requests) == reply


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_golden_pipelined(size: int) -> None:
    requests, pending = decode(chunked(b"".join(req for req, _ in GOLDEN), size))
    assert pending == 0
    assert len(requests) == len(GOLDEN)
    assert b"".join(encode_reply(answer(recipient_key(r))) for r in requests) == b"".join(rep for _, rep in GOLDEN)

"""Fuzz the SMTPD policy codec: requests raise nothing but ProtocolError, replies are always valid.

    python fuzz/fuzz_policy.py -max_total_time=60 -timeout=5 /tmp/work-corpus fuzz/corpus/policy

Properties:
- the request decoder gives the same requests and the same verdict whether the input comes
  whole, byte by byte, or in pieces of 1 + len % 13 bytes; no request is empty or has more
  than MAX_ATTRIBUTES attributes; no name is empty or holds ``=``, NUL or a newline, no value
  holds NUL or a newline;
- encode_action() of the input as text raises only ValueError, and what it returns is one
  ``action=`` line and the empty line;
- every result encodes to one ``action=`` line and the empty line; a failure is always a
  DEFER_IF_PERMIT, never a refusal.
"""

from __future__ import annotations

import contextlib

from harness import instrumented, main

with instrumented():
    from mailmapd.proto import NOT_FOUND, Found, PermFail, ProtocolError, Result, TempFail, policy


def decode(pieces: list[bytes]) -> tuple[list[dict[str, str]], bool]:
    decoder = policy.PolicyDecoder()
    requests: list[dict[str, str]] = []
    try:
        for piece in pieces:
            requests.extend(decoder.feed(piece))
    except ProtocolError:
        return requests, True
    return requests, False


def check_action(reply: bytes) -> None:
    assert reply.startswith(b"action="), reply[:100]
    assert reply.endswith(b"\n\n"), reply[:100]
    assert reply.count(b"\n") == 2, reply[:100]  # noqa: PLR2004 - the action line and the empty line
    assert len(reply) - 1 <= policy.MAX_LINE, len(reply)
    assert b"\x00" not in reply
    assert reply[len(b"action=") : -2].strip(), reply[:100]


def check_reply(result: Result) -> None:
    reply = policy.encode_reply(result)
    check_action(reply)
    if isinstance(result, TempFail | PermFail):
        assert reply.startswith(b"action=DEFER_IF_PERMIT"), reply[:100]


def test_one_input(data: bytes) -> None:
    requests, failed = decode([data])
    for size in (1, 1 + len(data) % 13):
        other, other_failed = decode([data[i : i + size] for i in range(0, len(data), size)])
        assert other_failed == failed, size
        if not failed:
            assert other == requests, size
    for request in requests:
        assert 0 < len(request) <= policy.MAX_ATTRIBUTES
        for name, value in request.items():
            assert name
            assert not any(c in name for c in "=\x00\n")
            assert not any(c in value for c in "\x00\n")
    text = data.decode("utf-8", "surrogateescape")
    with contextlib.suppress(ValueError):
        check_action(policy.encode_action(text))
    for result in (Found(text), NOT_FOUND, TempFail(text), PermFail(text)):
        check_reply(result)


if __name__ == "__main__":
    main(test_one_input, "policy")

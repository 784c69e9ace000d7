"""Golden request/reply tables in tests/data/<name>.tsv, shared by codec and end-to-end tests.

Each line is ``request<TAB>reply``: the exact bytes a client sends and the exact bytes the
server answers. Bytes are written with Python-style escapes (``\\n``, ``\\r``, ``\\t``,
``\\\\``, ``\\xHH``); any other character stands for its UTF-8 bytes. Lines starting with
``#`` and blank lines are skipped.

The replies assume the lookup results in ANSWERS, whatever the map name: the key (for the
policy protocol, the ``recipient`` attribute) is looked up there, and a key not listed is
not found.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from mailmapd.proto import NOT_FOUND, Found, PermFail, Result, TempFail

DATA = Path(__file__).parent / "data"

# Read sizes every golden table is crossed with (whole reads down to one byte at a time).
CHUNK_SIZES = [4096, 128, 16, 1]

ANSWERS: dict[bytes, Result] = {
    b"alice@example.test": Found("example.test/alice/"),
    b"list@example.test": Found("alice@example.test,bob@other.test"),
    b"a b%c": Found("value with spaces, and 100% of it"),
    "jürgen@example.test".encode(): Found("jürgen@exämple.test"),
    b"full@example.test": Found("552 5.2.2 Mailbox full"),
    b"tempfail@example.test": TempFail("database unavailable"),
    b"permfail@example.test": PermFail("no such map"),
}

_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)", re.DOTALL)
_SIMPLE = {"n": b"\n", "r": b"\r", "t": b"\t", "\\": b"\\", "0": b"\x00"}


def unescape(text: str) -> bytes:
    """Turn one escaped TSV field into bytes; an unknown escape is a ValueError."""
    out: list[bytes] = []
    last = 0
    for match in _ESCAPE.finditer(text):
        out.append(text[last : match.start()].encode())
        code = match[1]
        if code[0] == "x" and len(code) == 3:
            out.append(bytes((int(code[1:], 16),)))
        elif code in _SIMPLE:
            out.append(_SIMPLE[code])
        else:
            raise ValueError(f"unknown escape \\{code} in {text!r}")
        last = match.end()
    out.append(text[last:].encode())
    return b"".join(out)


def load(name: str) -> list[tuple[bytes, bytes]]:
    """The (request, reply) pairs of tests/data/<name>.tsv."""
    pairs: list[tuple[bytes, bytes]] = []
    path = DATA / f"{name}.tsv"
    for number, line in enumerate(path.read_text("utf-8").split("\n"), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected request<TAB>reply")
        pairs.append((unescape(fields[0]), unescape(fields[1])))
    return pairs


def answer(key: bytes) -> Result:
    """The result the golden replies assume for ``key``."""
    return ANSWERS.get(key, NOT_FOUND)


def chunked(data: bytes, size: int) -> list[bytes]:
    """``data`` cut into pieces of ``size`` bytes, as a socket might deliver it."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates allowed)."""
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]

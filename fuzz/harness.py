"""What the fuzz_*.py harnesses share: run a one-input function under atheris (libFuzzer), or,
where atheris is not installed (it needs a wheel for this Python, or clang), under a pure-Python
loop over random mutations of the seed corpus.

Both take libFuzzer's command line, so one command works either way:

    python fuzz/fuzz_netstring.py -max_total_time=60 -timeout=5 /tmp/work-corpus fuzz/corpus/netstring

libFuzzer writes the inputs it finds interesting into the first corpus directory: give it a
scratch directory first and fuzz/corpus/<codec> after it, so the kept seed corpus stays small.
FUZZ_FALLBACK=1 forces the pure-Python loop even when atheris is installed.

A harness fails (atheris: a crash report and the input in ./crash-*; the loop: the input in
./crash-<sha1> and the traceback) when an input makes the codec raise anything but
ProtocolError, or breaks one of the properties the harness asserts.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

CORPUS = Path(__file__).resolve().parent / "corpus"

# Bytes that mean something to one of the codecs; the fallback loop inserts them often.
TOKENS = (b":", b",", b"0", b"9", b"10100:", b"\n", b"\r\n", b"\n\n", b"=", b"%", b"%2", b"%zz", b" ", b"\x00", b"\xff")


def atheris_module() -> ModuleType | None:
    """atheris, unless FUZZ_FALLBACK is set or it is not installed."""
    if os.environ.get("FUZZ_FALLBACK"):
        return None
    try:
        return importlib.import_module("atheris")
    except ImportError:
        return None


def instrumented() -> contextlib.AbstractContextManager[object]:
    """Import the code under test inside this block: atheris then measures its coverage."""
    atheris = atheris_module()
    return atheris.instrument_imports() if atheris is not None else contextlib.nullcontext()


def main(test_one_input: Callable[[bytes], None], codec: str) -> None:
    atheris = atheris_module()
    if atheris is not None:
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
    else:
        fallback(test_one_input, codec, sys.argv[1:])


def _mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        at = rng.randint(0, len(out))
        if op == 0 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif op == 1:
            out[at:at] = rng.choice(TOKENS)
        elif op == 2:  # noqa: PLR2004 - one branch per mutation
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and out:  # noqa: PLR2004
            del out[at : at + rng.randint(1, 16)]
        elif op == 4 and out:  # noqa: PLR2004
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 64)]
        elif op == 5:  # noqa: PLR2004
            other = rng.choice(seeds)
            out[at:] = other[rng.randint(0, len(other)) :]
        else:
            out[at:at] = str(rng.choice([0, 1, 9, 10, 99, 4096, 8192, 10100, 10101, 65536, 99999])).encode()
    return bytes(out[:16384])


def fallback(test_one_input: Callable[[bytes], None], codec: str, argv: list[str]) -> None:
    """Random mutations of the seeds for -max_total_time seconds (default 60) or -runs inputs."""
    options = dict(a[1:].split("=", 1) for a in argv if a.startswith("-") and "=" in a)
    seconds = float(options.get("max_total_time", 60))
    runs = int(options.get("runs", -1))
    hang = float(options.get("timeout", 5))
    dirs = [Path(a) for a in argv if not a.startswith("-")] or [CORPUS / codec]
    seeds = [p.read_bytes() for d in dirs if d.is_dir() for p in sorted(d.iterdir()) if p.is_file()] or [b""]
    rng = random.Random(int(options.get("seed", 0)) or None)  # noqa: S311 - fuzzing, not cryptography
    started = time.monotonic()
    done = 0
    slowest = 0.0
    while (runs < 0 or done < runs) and time.monotonic() - started < seconds:
        data = rng.choice(seeds) if done < len(seeds) else _mutate(rng, rng.choice(seeds), seeds)
        if rng.random() < 0.05:  # noqa: PLR2004 - now and then, bytes with no structure at all
            data = rng.randbytes(rng.randint(0, 512))
        t0 = time.monotonic()
        try:
            test_one_input(data)
        except BaseException:
            name = Path(f"crash-{hashlib.sha1(data).hexdigest()}")  # noqa: S324 - a file name, not security
            name.write_bytes(data)
            sys.stderr.write(f"fuzz {codec}: input saved in {name}\n")
            raise
        took = time.monotonic() - t0
        slowest = max(slowest, took)
        if took > hang:
            name = Path(f"timeout-{hashlib.sha1(data).hexdigest()}")  # noqa: S324
            name.write_bytes(data)
            raise SystemExit(f"fuzz {codec}: one input took {took:.1f} s (over -timeout={hang:g}); saved in {name}")
        done += 1
    elapsed = time.monotonic() - started
    sys.stderr.write(
        f"fuzz {codec} (pure-Python fallback): {done} inputs in {elapsed:.0f} s, {len(seeds)} seeds, "
        f"slowest input {slowest * 1000:.1f} ms, no failure\n"
    )

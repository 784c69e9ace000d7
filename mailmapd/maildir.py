"""How much mail a mailbox holds: Maildir++ ``maildirsize`` files, Maildir scans, mbox sizes.

Read-only and synchronous (the policy service runs it in a thread). The rules follow the
Courier specification (``maildir/README.maildirquota.html`` in courier-libs) and Dovecot's
``quota-maildir.c``:

* ``maildirsize`` is a header line (the quota definition, ``10000000S,1000C``) followed by
  ``<bytes> <messages>`` lines that add up to the usage. A file of 5120 bytes or more, one
  with a malformed line, or one whose totals are negative is not trusted: the Maildir is
  scanned instead. A last line without its newline is an append in progress and is ignored.
* Totals that say "over quota" are re-checked with a scan when the file has more than one
  delta line or is at least 15 minutes old, because deliveries by writers that do not update
  the file (stock virtual(8), MUAs) and deletions make it drift.
* A scan adds up ``new/`` and ``cur/`` of the Maildir and of every ``.Folder`` except Trash,
  taking a message's size from ``,S=<size>`` in its name when present and from lstat()
  otherwise. It never follows a symlink below the Maildir root, and never writes anything
  (the LDA owns ``maildirsize``).

Nothing here logs: file names in a Maildir are mail metadata.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from dataclasses import dataclass

__all__ = [
    "MAILDIRSIZE_MAX",
    "STALE_SECONDS",
    "MaildirSize",
    "Usage",
    "maildir_usage",
    "parse_maildirsize",
    "scan_maildir",
]

# Courier: "if its size is at least 5120 bytes, recalculate it"; Dovecot reads into a
# 5120-byte buffer and recalculates when it fills.
MAILDIRSIZE_MAX = 5120
# Courier: over-quota totals from a file "at least 15 minutes old" are recalculated;
# Dovecot: MAILDIRSIZE_STALE_SECS (60*15).
STALE_SECONDS = 15 * 60

MAILDIRSIZE = "maildirsize"
TRASH = ".Trash"

# A header token: an integer and one letter. S and C are the defined ones; other letters are
# ignored as Dovecot does. 20 digits hold any uint64 (and keep int() far from its limit).
_HEADER_TOKEN = re.compile(rb"([0-9]{1,20})([A-Za-z])")
# A delta line: two whitespace-separated integers, optionally negative, with Courier's space
# padding (each line 14 bytes) around them. In a bytes pattern \s and \d are ASCII only.
_DELTA_LINE = re.compile(rb"\s*(-?\d{1,19})\s+(-?\d{1,19})\s*")
# ",S=<size>" in a message file name, ended by the name, a comma (",W=...") or the ":2,"
# info (Dovecot's rule; anything else falls back to lstat()).
_SIZE_IN_NAME = re.compile(r",S=([0-9]{1,19})(?=[,:]|\Z)")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW_DIR_FLAGS = _DIR_FLAGS | os.O_NOFOLLOW
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int
    messages: int
    source: str  # "maildirsize", "scan" or "mbox"


@dataclass(frozen=True, slots=True)
class MaildirSize:
    limit_bytes: int | None  # None: no limit (absent, or 0 in the header)
    limit_messages: int | None
    bytes: int
    messages: int
    lines: int  # complete lines, the header included


def parse_maildirsize(data: bytes) -> MaildirSize | None:
    """The contents of a ``maildirsize`` file, or None when they cannot be trusted.

    None means "scan the Maildir instead": the file is empty, 5120 bytes or larger, has no
    complete delta line, has a malformed header or delta line, or adds up to a negative total.
    """
    if not data or len(data) >= MAILDIRSIZE_MAX:
        return None
    end = data.rfind(b"\n")
    if end < 0:
        return None  # not even the header is complete
    lines = data[:end].split(b"\n")  # a last line without "\n" is an append in progress
    limits = _parse_header(lines[0])
    if limits is None:
        return None
    if len(lines) < 2:  # noqa: PLR2004 - Courier: "two or more lines"; Dovecot rebuilds a file without deltas
        return None
    total_bytes = 0
    total_messages = 0
    for line in lines[1:]:
        match = _DELTA_LINE.fullmatch(line)
        if match is None:
            return None
        total_bytes += int(match[1])
        total_messages += int(match[2])
    if total_bytes < 0 or total_messages < 0:
        return None
    return MaildirSize(
        limit_bytes=limits[0],
        limit_messages=limits[1],
        bytes=total_bytes,
        messages=total_messages,
        lines=len(lines),
    )


def _parse_header(line: bytes) -> tuple[int | None, int | None] | None:
    """(byte limit, message limit) from the quota definition; None when it is malformed."""
    limit_bytes: int | None = None
    limit_messages: int | None = None
    for raw in line.split(b","):
        token = raw.strip()
        if not token:
            continue  # an empty header (Courier with no limits) or a stray comma
        match = _HEADER_TOKEN.fullmatch(token)
        if match is None:
            return None
        value = int(match[1]) or None  # 0 means no limit
        if match[2] == b"S":
            limit_bytes = value
        elif match[2] == b"C":
            limit_messages = value
    return limit_bytes, limit_messages


def scan_maildir(path: str | os.PathLike[str]) -> Usage:
    """Add up the messages of a Maildir++: new/ and cur/ of the root and of every folder
    except Trash (``.Trash`` and ``.Trash.*``). tmp/ is not counted. A missing Maildir, a
    missing new/ or cur/, and files that vanish during the scan count as empty.

    Symlinks below the root are never followed (a linked folder, new/ or cur/ is skipped, and
    a linked message counts only when its name carries ``,S=``). Other errors (EACCES, EIO)
    propagate as OSError.
    """
    try:
        root = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return Usage(0, 0, "scan")  # not created yet: virtual(8) makes it on first delivery
    total_bytes = 0
    total_messages = 0
    try:
        folders = [root]
        try:
            with os.scandir(root) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith(".") and _counts_as_folder(name) and entry.is_dir(follow_symlinks=False):
                        folder = _open_dir(name, root)
                        if folder is not None:
                            folders.append(folder)
            for folder in folders:
                for sub in ("new", "cur"):
                    directory = _open_dir(sub, folder)
                    if directory is None:
                        continue
                    try:
                        size, count = _sum_messages(directory)
                    finally:
                        os.close(directory)
                    total_bytes += size
                    total_messages += count
        finally:
            for folder in folders[1:]:
                os.close(folder)
    finally:
        os.close(root)
    return Usage(total_bytes, total_messages, "scan")


def _counts_as_folder(name: str) -> bool:
    # Courier skips ".Trash" (unless built --with-trashquota); its subfolders go with it.
    return name not in {".", "..", TRASH} and not name.startswith(TRASH + ".")


def _open_dir(name: str, parent: int) -> int | None:
    """A directory below ``parent``, opened without following a symlink; None when it is
    missing, not a directory, or a symlink."""
    try:
        return os.open(name, _NOFOLLOW_DIR_FLAGS, dir_fd=parent)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            return None
        raise


def _sum_messages(directory: int) -> tuple[int, int]:
    """(bytes, messages) of the message files in one new/ or cur/ directory."""
    total = 0
    count = 0
    size_in_name = _SIZE_IN_NAME.search
    lstat = os.lstat
    is_regular = stat.S_ISREG
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            match = size_in_name(name)
            if match is not None:
                total += int(match[1])
            else:
                try:
                    st = lstat(name, dir_fd=directory)
                except FileNotFoundError:
                    continue  # removed (expunged, or moved to another folder) during the scan
                if not is_regular(st.st_mode):
                    continue  # a symlink, subdirectory or other non-message
                total += st.st_size
            count += 1
    return total, count


def maildir_usage(path: str, limit_bytes: int | None, *, now: float | None = None) -> Usage:
    """The usage of the mailbox at ``path`` (virtual_mailbox_base + the mailboxes map's value).

    As in Postfix virtual(8), a path ending in "/" is a Maildir and anything else is an mbox
    file. A Maildir's ``maildirsize`` is used when present and trustworthy; otherwise it is
    scanned. ``limit_bytes`` (users.quota; None or <= 0 for no limit) decides only whether
    the file's totals say "over quota", which Courier re-verifies with a scan when the file
    has more than one delta line or its mtime is at least STALE_SECONDS before ``now``
    (default: time.time()). Errors other than a missing mailbox propagate as OSError.

    The path is a str, not a PathLike, because the trailing slash carries the meaning.
    """
    if not path.endswith("/"):
        return _mbox_usage(path)
    found = _read_maildirsize(path)
    if found is not None:
        size, mtime = found
        over = limit_bytes is not None and limit_bytes > 0 and size.bytes > limit_bytes
        if not over:
            return Usage(size.bytes, size.messages, "maildirsize")
        current = time.time() if now is None else now
        if size.lines <= 2 and current - mtime < STALE_SECONDS:  # noqa: PLR2004 - header + one summary line
            return Usage(size.bytes, size.messages, "maildirsize")
    return scan_maildir(path)


def _read_maildirsize(maildir: str) -> tuple[MaildirSize, float] | None:
    """The parsed ``maildirsize`` of a Maildir and its mtime, or None to scan instead.

    A symlink, a non-regular file or an unreadable file is not trusted; the scan then reports
    any real problem with the Maildir.
    """
    try:
        fd = os.open(maildir.rstrip("/") + "/" + MAILDIRSIZE, _FILE_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        chunks: list[bytes] = []
        have = 0
        while have < MAILDIRSIZE_MAX:  # Courier loops: NFS may return short reads
            chunk = os.read(fd, MAILDIRSIZE_MAX - have)
            if not chunk:
                break
            chunks.append(chunk)
            have += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    parsed = parse_maildirsize(b"".join(chunks))
    return None if parsed is None else (parsed, st.st_mtime)


def _mbox_usage(path: str) -> Usage:
    try:
        st = os.stat(path)  # noqa: PTH116 - one stat of a str path; Path adds nothing
    except FileNotFoundError:
        return Usage(0, 0, "scan")  # no mail delivered yet
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "mailbox is not a regular file (a Maildir path ends in /)", path)
    return Usage(st.st_size, 0, "mbox")

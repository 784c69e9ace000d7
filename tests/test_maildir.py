"""Golden tests for mailmapd.maildir: maildirsize files as Courier and Dovecot write them,
corrupt files, Maildir scans, the over-quota staleness rule and mbox mailboxes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailmapd.maildir import (
    MAILDIRSIZE_MAX,
    STALE_SECONDS,
    MaildirSize,
    Usage,
    maildir_usage,
    parse_maildirsize,
    scan_maildir,
)

NOW = 1_700_000_000.0


def courier_line(size: int, count: int) -> bytes:
    """A delta line padded as the specification describes: "each line (including the
    terminating \\n) is 14 bytes in size" for the usual message sizes."""
    return f"{size:>8} {count:>4}\n".encode()


def courier_libs_line(size: int, count: int) -> bytes:
    """A line as today's courier-libs doaddquota() writes it: "%12s " then "%12s\\n"."""
    return f"{size:>12} {count:>12}\n".encode()


# --- parse_maildirsize: the Courier specification's examples ---------------------------------


def test_courier_header_gives_byte_and_message_limits() -> None:
    parsed = parse_maildirsize(b"10000000S,1000C\n" + courier_line(5000, 2))
    assert parsed == MaildirSize(limit_bytes=10_000_000, limit_messages=1000, bytes=5000, messages=2, lines=2)


def test_courier_padded_lines_are_14_bytes_and_parse() -> None:
    lines = [courier_line(1234, 1), courier_line(56789, 1), courier_line(-1234, -1)]
    assert all(len(line) == 14 for line in lines)
    parsed = parse_maildirsize(b"10000000S,1000C\n" + b"".join(lines))
    assert parsed is not None
    assert (parsed.bytes, parsed.messages, parsed.lines) == (56789, 1, 4)


def test_courier_libs_26_byte_lines_parse() -> None:
    data = b"10000000S,1000C\n" + courier_libs_line(250000, 25) + courier_libs_line(-4000, -1)
    assert len(courier_libs_line(250000, 25)) == 26
    parsed = parse_maildirsize(data)
    assert parsed == MaildirSize(limit_bytes=10_000_000, limit_messages=1000, bytes=246000, messages=24, lines=3)


def test_negative_deltas_from_deletions_are_subtracted() -> None:
    data = b"10000000S\n" + b"   30000     3\n" + b"   -1000    -1\n" + b"-2000 -1\n"
    parsed = parse_maildirsize(data)
    assert parsed is not None
    assert (parsed.bytes, parsed.messages) == (27000, 1)


def test_size_only_and_count_only_headers() -> None:
    size_only = parse_maildirsize(b"10000000S\n0 0\n")
    count_only = parse_maildirsize(b"1000C\n0 0\n")
    assert size_only is not None
    assert (size_only.limit_bytes, size_only.limit_messages) == (10_000_000, None)
    assert count_only is not None
    assert (count_only.limit_bytes, count_only.limit_messages) == (None, 1000)


# --- parse_maildirsize: Dovecot-style files ------------------------------------------------------


def test_dovecot_zero_s_header_means_no_limit() -> None:
    parsed = parse_maildirsize(b"0S\n123456 42\n")
    assert parsed == MaildirSize(limit_bytes=None, limit_messages=None, bytes=123456, messages=42, lines=2)


def test_dovecot_summary_line_then_unpadded_deltas() -> None:
    parsed = parse_maildirsize(b"104857600S,5000C\n2048000 120\n4096 1\n-512 -1\n")
    assert parsed == MaildirSize(limit_bytes=104_857_600, limit_messages=5000, bytes=2_051_584, messages=120, lines=4)


def test_zero_c_also_means_no_limit() -> None:
    parsed = parse_maildirsize(b"5000S,0C\n1 1\n")
    assert parsed is not None
    assert (parsed.limit_bytes, parsed.limit_messages) == (5000, None)


def test_unknown_header_tokens_are_ignored_like_dovecot() -> None:
    parsed = parse_maildirsize(b"1000S,7X,20C\n10 1\n")
    assert parsed is not None
    assert (parsed.limit_bytes, parsed.limit_messages) == (1000, 20)


def test_empty_header_means_no_limits() -> None:
    # Courier's doaddquota() writes an empty first line when neither limit is set.
    parsed = parse_maildirsize(b"\n100 1\n")
    assert parsed == MaildirSize(limit_bytes=None, limit_messages=None, bytes=100, messages=1, lines=2)


def test_carriage_returns_and_tabs_are_whitespace() -> None:
    parsed = parse_maildirsize(b"1000S\r\n100\t1\r\n")
    assert parsed is not None
    assert (parsed.limit_bytes, parsed.bytes, parsed.messages) == (1000, 100, 1)


# --- parse_maildirsize: untrustworthy files ------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"10000000S", id="header-without-newline"),
        pytest.param(b"10000000S\n", id="header-only"),
        pytest.param(b"10000000S\n100 1", id="only-delta-is-partial"),
        pytest.param(b"10000000S\n100 1\ngarbage\n", id="garbage-line"),
        pytest.param(b"10000000S\n100 1\n\n", id="empty-line"),
        pytest.param(b"10000000S\n100\n", id="one-number"),
        pytest.param(b"10000000S\n100 1 7\n", id="three-numbers"),
        pytest.param(b"10000000S\n100 1x\n", id="trailing-junk"),
        pytest.param(b"10000000S\n+100 +1\n", id="plus-sign"),
        pytest.param(b"10000000S\n1.5 1\n", id="decimal"),
        pytest.param(b"10000000S\n1_000 1\n", id="underscore-digits"),
        pytest.param(b"10000000S\n100\x001\n", id="nul-byte"),
        pytest.param(b"10000000S\n" + b"9" * 25 + b" 1\n", id="number-too-long"),
        pytest.param(b"garbage\n100 1\n", id="garbage-header"),
        pytest.param(b"100 1\n200 2\n", id="delta-line-as-header"),
        pytest.param(b"-5S\n100 1\n", id="negative-limit"),
        pytest.param(b"10000000\n100 1\n", id="limit-without-letter"),
        pytest.param(b"10000000S\n100 1\n-200 -1\n", id="negative-byte-total"),
        pytest.param(b"10000000S\n100 1\n0 -2\n", id="negative-message-total"),
    ],
)
def test_untrustworthy_files_are_rejected(data: bytes) -> None:
    assert parse_maildirsize(data) is None


def test_intermediate_negative_running_total_is_fine() -> None:
    # Only the totals matter: a deletion may be appended before the delivery it cancels.
    parsed = parse_maildirsize(b"0S\n-100 -1\n100 1\n50 1\n")
    assert parsed is not None
    assert (parsed.bytes, parsed.messages) == (50, 1)


def test_file_of_5120_bytes_is_recalculated() -> None:
    header = b"10000000S,1000C\n"
    lines = courier_line(100, 1) * ((MAILDIRSIZE_MAX - len(header)) // 14 + 1)
    data = (header + lines)[:MAILDIRSIZE_MAX]
    assert len(data) == MAILDIRSIZE_MAX
    assert parse_maildirsize(data) is None
    assert parse_maildirsize(data + b"more") is None


def test_file_just_under_5120_bytes_is_trusted() -> None:
    header = b"0S\n"
    body = b"1 1\n" * ((MAILDIRSIZE_MAX - 1 - len(header)) // 4)
    data = header + body
    assert len(data) < MAILDIRSIZE_MAX
    parsed = parse_maildirsize(data)
    assert parsed is not None
    assert parsed.bytes == parsed.messages == len(body) // 4


def test_partial_last_line_is_ignored() -> None:
    parsed = parse_maildirsize(b"10000000S\n100 1\n20")
    assert parsed == MaildirSize(limit_bytes=10_000_000, limit_messages=None, bytes=100, messages=1, lines=2)


def test_partial_garbage_last_line_is_ignored_too() -> None:
    parsed = parse_maildirsize(b"0S\n100 1\n\x00\x00garb")
    assert parsed is not None
    assert (parsed.bytes, parsed.lines) == (100, 2)


# --- scan_maildir -------------------------------------------------------------------------------


def make_maildir(path: Path) -> Path:
    for sub in ("new", "cur", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def put(directory: Path, name: str, size: int) -> Path:
    file = directory / name
    file.write_bytes(b"x" * size)
    return file


def test_scan_of_missing_maildir_is_empty(tmp_path: Path) -> None:
    assert scan_maildir(tmp_path / "nope") == Usage(0, 0, "scan")


def test_scan_of_maildir_without_new_and_cur_is_empty(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    assert scan_maildir(tmp_path) == Usage(0, 0, "scan")


def test_scan_stats_files_without_size_in_name(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    put(md / "new", "1700000000.M1P1.host", 300)
    put(md / "cur", "1700000001.M2P1.host:2,S", 700)
    assert scan_maildir(md) == Usage(1000, 2, "scan")


def test_scan_takes_size_from_name_without_stat(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    # The real files are shorter than their names say: the name wins, as in Courier.
    put(md / "new", "1700000000.M1P1.host,S=5000", 10)
    put(md / "cur", "1700000001.M2P1.host,S=2500:2,S", 10)
    put(md / "cur", "1700000002.M3P1.host,S=1000,W=1030:2,RS", 10)
    assert scan_maildir(md) == Usage(8500, 3, "scan")


def test_size_in_name_must_end_at_comma_colon_or_end(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    put(md / "cur", "1700000000.M1P1.host,S=12abc:2,", 40)  # not a size: lstat() gives 40
    assert scan_maildir(md) == Usage(40, 1, "scan")


def test_scan_counts_folders_but_not_trash(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    put(md / "cur", "a,S=100", 1)
    for folder, size in ((".Sent", 200), (".Archive.2024", 400), (".Drafts", 800)):
        make_maildir(md / folder)
        put(md / folder / "cur", f"b,S={size}:2,S", 1)
    make_maildir(md / ".Trash")
    put(md / ".Trash" / "cur", "c,S=100000:2,ST", 1)
    make_maildir(md / ".Trash.Old")
    put(md / ".Trash.Old" / "new", "d,S=100000", 1)
    assert scan_maildir(md) == Usage(1500, 4, "scan")


def test_folder_named_like_trash_prefix_is_counted(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    make_maildir(md / ".Trashy")
    put(md / ".Trashy" / "new", "a,S=64", 1)
    assert scan_maildir(md) == Usage(64, 1, "scan")


def test_scan_ignores_tmp(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    put(md / "tmp", "incoming,S=99999", 10)
    put(md / "tmp", "incoming2", 10)
    make_maildir(md / ".Sent")
    put(md / ".Sent" / "tmp", "x,S=5", 5)
    assert scan_maildir(md) == Usage(0, 0, "scan")


def test_scan_ignores_hidden_files_in_new_and_cur(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    put(md / "cur", ".hidden,S=5000", 1)
    put(md / "new", ".nfs000001", 3000)
    put(md / "new", "real", 7)
    assert scan_maildir(md) == Usage(7, 1, "scan")


def test_scan_ignores_root_files_and_non_folder_entries(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    put(md, "maildirsize", 100)
    put(md, "dovecot.index", 100)
    put(md, ".subscriptions", 100)  # a dot file that is not a folder
    (md / "courierimapkeywords").mkdir()
    put(md / "courierimapkeywords", "x", 100)
    assert scan_maildir(md) == Usage(0, 0, "scan")


def test_scan_skips_subdirectories_inside_cur(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    (md / "cur" / "junkdir").mkdir()
    put(md / "cur", "m", 12)
    assert scan_maildir(md) == Usage(12, 1, "scan")


def test_scan_accepts_pathlike_and_str(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    put(md / "new", "m,S=10", 10)
    assert scan_maildir(md) == scan_maildir(str(md)) == scan_maildir(str(md) + "/") == Usage(10, 1, "scan")


def test_dangling_symlink_message_is_skipped(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    put(md / "cur", "real", 50)
    (md / "cur" / "1700000000.M9P9.host").symlink_to(tmp_path / "gone")
    assert scan_maildir(md) == Usage(50, 1, "scan")


def test_symlinked_message_is_not_followed_out_of_the_maildir(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    outside = put(tmp_path, "big-outside-file", 100_000)
    (md / "cur" / "1700000000.M9P9.host").symlink_to(outside)
    assert scan_maildir(md) == Usage(0, 0, "scan")


def test_symlinked_folder_and_cur_are_not_followed(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    elsewhere = make_maildir(tmp_path / "Elsewhere")
    put(elsewhere / "cur", "m,S=1000", 1)
    put(elsewhere / "new", "n,S=2000", 1)
    (md / ".Linked").symlink_to(elsewhere)
    (md / "cur").rmdir()
    (md / "cur").symlink_to(elsewhere / "cur")
    put(md / "new", "own,S=3", 3)
    assert scan_maildir(md) == Usage(3, 1, "scan")


def test_symlinked_maildir_root_is_followed(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "real")
    put(md / "new", "m,S=77", 1)
    (tmp_path / "link").symlink_to(md)
    assert scan_maildir(tmp_path / "link") == Usage(77, 1, "scan")


def test_file_vanishing_between_listing_and_lstat_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md = make_maildir(tmp_path / "Maildir")
    put(md / "cur", "stays", 10)
    put(md / "cur", "expunged", 20)
    real_lstat = os.lstat
    removed: list[str] = []

    def lstat_after_expunge(name: str, *, dir_fd: int | None = None) -> os.stat_result:
        # An IMAP expunge lands after scandir() listed the file and before lstat() reaches it.
        if name == "expunged":
            os.unlink(name, dir_fd=dir_fd)
            removed.append(name)
        return real_lstat(name, dir_fd=dir_fd)

    monkeypatch.setattr(os, "lstat", lstat_after_expunge)
    assert scan_maildir(md) == Usage(10, 1, "scan")
    assert removed == ["expunged"]


def test_file_with_size_in_name_needs_no_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md = make_maildir(tmp_path / "Maildir")
    put(md / "new", "m,S=123", 1)

    real_lstat = os.lstat
    stat_calls: list[str] = []

    def counting_lstat(name: str, *, dir_fd: int | None = None) -> os.stat_result:
        stat_calls.append(name)
        return real_lstat(name, dir_fd=dir_fd)

    monkeypatch.setattr(os, "lstat", counting_lstat)
    assert scan_maildir(md) == Usage(123, 1, "scan")
    assert stat_calls == []


def test_scan_of_a_file_is_an_error(tmp_path: Path) -> None:
    not_a_dir = put(tmp_path, "mbox", 10)
    with pytest.raises(NotADirectoryError):
        scan_maildir(not_a_dir)


# --- maildir_usage: maildirsize versus scan ---------------------------------------------------------


def maildir_with_messages(path: Path, sizes: list[int]) -> str:
    md = make_maildir(path)
    for i, size in enumerate(sizes):
        put(md / "cur", f"17000000{i:02d}.M{i}P1.host,S={size}:2,S", 1)
    return str(md) + "/"


def write_maildirsize(maildir: str, data: bytes, mtime: float) -> None:
    file = Path(maildir) / "maildirsize"
    file.write_bytes(data)
    os.utime(file, (mtime, mtime))


def test_usage_without_maildirsize_scans(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100, 200])
    assert maildir_usage(md, 10_000, now=NOW) == Usage(300, 2, "scan")


def test_usage_uses_trustworthy_maildirsize(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100, 200])
    write_maildirsize(md, b"10000S\n5000 7\n100 1\n", NOW - 3600)
    assert maildir_usage(md, 10_000, now=NOW) == Usage(5100, 8, "maildirsize")


def test_under_quota_totals_are_trusted_however_old_and_long(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [1])
    deltas = b"".join(courier_line(10, 1) for _ in range(50))
    write_maildirsize(md, b"10000S\n" + deltas, NOW - 30 * 24 * 3600)
    assert maildir_usage(md, 10_000, now=NOW) == Usage(500, 50, "maildirsize")


def test_corrupt_maildirsize_scans(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100])
    write_maildirsize(md, b"10000S\n100 1\nnot a number\n", NOW)
    assert maildir_usage(md, 10_000, now=NOW) == Usage(100, 1, "scan")


def test_negative_total_maildirsize_scans(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100])
    write_maildirsize(md, b"10000S\n100 1\n-500 -2\n", NOW)
    assert maildir_usage(md, 10_000, now=NOW) == Usage(100, 1, "scan")


def test_oversized_maildirsize_scans(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100])
    write_maildirsize(md, b"0S\n" + b"1 0\n" * 2000, NOW)
    assert (Path(md) / "maildirsize").stat().st_size >= MAILDIRSIZE_MAX
    assert maildir_usage(md, 10_000, now=NOW) == Usage(100, 1, "scan")


def test_partial_append_in_maildirsize_is_ignored(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100])
    write_maildirsize(md, b"10000S\n4000 4\n99", NOW)
    assert maildir_usage(md, 10_000, now=NOW) == Usage(4000, 4, "maildirsize")


def test_over_quota_multiline_maildirsize_is_rescanned(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100, 200])
    # Fresh, but a summary line plus a delta: more than one delta line.
    write_maildirsize(md, b"1000S\n900 3\n500 1\n", NOW)
    assert maildir_usage(md, 1000, now=NOW) == Usage(300, 2, "scan")


def test_over_quota_single_line_fresh_maildirsize_is_trusted(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100])
    write_maildirsize(md, b"1000S\n5000 9\n", NOW - (STALE_SECONDS - 1))
    assert maildir_usage(md, 1000, now=NOW) == Usage(5000, 9, "maildirsize")


def test_over_quota_single_line_stale_maildirsize_is_rescanned(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100])
    write_maildirsize(md, b"1000S\n5000 9\n", NOW - STALE_SECONDS)  # "at least 15 minutes old"
    assert maildir_usage(md, 1000, now=NOW) == Usage(100, 1, "scan")


def test_over_quota_rescan_may_still_be_over_quota(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [700, 800])
    write_maildirsize(md, b"1000S\n1500 2\n", NOW - 3600)
    assert maildir_usage(md, 1000, now=NOW) == Usage(1500, 2, "scan")


def test_exactly_at_quota_is_not_over(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [1])
    write_maildirsize(md, b"1000S\n1000 1\n0 0\n", NOW - 3600)
    assert maildir_usage(md, 1000, now=NOW) == Usage(1000, 1, "maildirsize")


def test_over_quota_is_judged_by_the_callers_limit_not_the_header(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100])
    # The header says 100 bytes, the database says 1 MB: the totals are under quota.
    write_maildirsize(md, b"100S\n5000 9\n1 1\n", NOW - 3600)
    assert maildir_usage(md, 1_000_000, now=NOW) == Usage(5001, 10, "maildirsize")
    # The header says unlimited, the database says 1000: over quota, stale, rescanned.
    write_maildirsize(md, b"0S\n5000 9\n1 1\n", NOW - 3600)
    assert maildir_usage(md, 1000, now=NOW) == Usage(100, 1, "scan")


@pytest.mark.parametrize("limit", [None, 0, -1])
def test_no_limit_never_distrusts_the_file(tmp_path: Path, limit: int | None) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100])
    write_maildirsize(md, b"0S\n5000000 9\n1 1\n", NOW - 3600)
    assert maildir_usage(md, limit, now=NOW) == Usage(5_000_001, 10, "maildirsize")


def test_now_defaults_to_the_clock(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100])
    (Path(md) / "maildirsize").write_bytes(b"1000S\n5000 9\n")  # mtime: now
    assert maildir_usage(md, 1000) == Usage(5000, 9, "maildirsize")
    old = (Path(md) / "maildirsize").stat().st_mtime - STALE_SECONDS - 60
    os.utime(Path(md) / "maildirsize", (old, old))
    assert maildir_usage(md, 1000) == Usage(100, 1, "scan")


def test_symlinked_maildirsize_is_not_trusted(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100])
    target = tmp_path / "elsewhere"
    target.write_bytes(b"0S\n999999 99\n")
    (Path(md) / "maildirsize").symlink_to(target)
    assert maildir_usage(md, 10_000, now=NOW) == Usage(100, 1, "scan")


def test_maildirsize_that_is_a_fifo_is_not_read(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100])
    os.mkfifo(Path(md) / "maildirsize")  # opening it for reading must not block
    assert maildir_usage(md, 10_000, now=NOW) == Usage(100, 1, "scan")


def test_usage_of_missing_maildir_is_empty(tmp_path: Path) -> None:
    assert maildir_usage(f"{tmp_path}/example.com/nobody/", 1000, now=NOW) == Usage(0, 0, "scan")


# --- maildir_usage: mbox ---------------------------------------------------------------------------


def test_path_without_slash_is_an_mbox_file(tmp_path: Path) -> None:
    mbox = put(tmp_path, "user", 4321)
    assert maildir_usage(str(mbox), 1000, now=NOW) == Usage(4321, 0, "mbox")


def test_missing_mbox_is_empty(tmp_path: Path) -> None:
    assert maildir_usage(str(tmp_path / "not-yet"), 1000, now=NOW) == Usage(0, 0, "scan")


def test_directory_without_slash_is_not_scanned_as_maildir(tmp_path: Path) -> None:
    md = maildir_with_messages(tmp_path / "Maildir", [100])
    with pytest.raises(OSError, match="not a regular file"):
        maildir_usage(md.rstrip("/"), 1000, now=NOW)


def test_mbox_maildirsize_rules_do_not_apply(tmp_path: Path) -> None:
    mbox = put(tmp_path, "user", 10)
    # virtual(8) never reads maildirsize next to an mbox; neither do we.
    put(tmp_path, "maildirsize", 0).write_bytes(b"0S\n99999 9\n")
    assert maildir_usage(str(mbox), 1000, now=NOW) == Usage(10, 0, "mbox")


# --- a larger Maildir ---------------------------------------------------------------------------


def test_scan_of_thousands_of_messages_matches_the_sum(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    make_maildir(md / ".Sent")
    expected = 0
    for i in range(2000):
        size = 1000 + i
        expected += size
        folder = md / ".Sent" if i % 3 == 0 else md
        sub = "new" if i % 2 else "cur"
        if i % 5 == 0:
            put(folder / sub, f"17000{i:05d}.M{i}P1.host", size)  # lstat() path
        else:
            (folder / sub / f"17000{i:05d}.M{i}P1.host,S={size}:2,S").touch()
    assert scan_maildir(md) == Usage(expected, 2000, "scan")
